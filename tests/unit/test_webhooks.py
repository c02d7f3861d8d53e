"""Webhooks posted to a local receiver: which events, retries, once only, never in a service's way."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import httpx
import pytest

from pvebalance.services.api.context import ApiContext
from pvebalance.services.api.webhooks import Notifier, Sender
from pvebalance.shared.config import Webhook, load_settings
from pvebalance.shared.jobs import DiskMoveJob, JobState, MigrationJob
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.plans import PlanState, PlanStatus, PlanStore
from pvebalance.shared.requests import OperatorRequest, RequestAction, RequestState, RequestStore
from tests.api_helpers import all_on_one, make_storage_world, make_world, settings_with_tokens
from tests.receiver import Receiver


def wait_until(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def running() -> Iterator[Callable[..., tuple[Notifier, fakeredis.FakeRedis]]]:
    stop = threading.Event()

    def start(url: str, events: list[str] | None = None, **hook: Any) -> tuple[Notifier, fakeredis.FakeRedis]:
        redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        webhook: dict[str, Any] = {"url": url, **hook}
        if events is not None:
            webhook["events"] = events
        settings = settings_with_tokens(notifications={"webhooks": [webhook]})
        notifier = Notifier(ApiContext.connect(settings, redis=redis, async_redis=fakeredis.FakeAsyncRedis()),
                            backoff=0.01)
        notifier.step()  # the first look starts the cursor at now
        for sender in notifier.senders:
            threading.Thread(target=sender.run, args=(stop,), daemon=True).start()
        return notifier, redis

    yield start
    stop.set()


def fail_a_job(redis: fakeredis.FakeRedis, vmid: int = 101) -> str:
    job = MigrationJob(job_id=f"migrate-plan-x-{vmid}", plan_id="plan-x", vmid=vmid, name="web", guest_type="qemu",
                       source="pve1", target="pve2", online=True)
    store = JobStore(redis)
    store.create(job)
    store.transition(job, JobState.FAILED, "migration problems: can't migrate VM", duration_s=2.0)
    return job.job_id


def test_each_event_kind_is_posted_once_with_its_data(running: Callable[..., Any]) -> None:
    with Receiver() as receiver:
        notifier, redis = running(receiver.url)
        job_id = fail_a_job(redis)
        world = make_world(redis, PlanState.RUNNING)  # a plan with moves
        requests = RequestStore(redis)
        refused = requests.submit(OperatorRequest(action=RequestAction.DRAIN, node="pve1")).request.request_id
        requests.settle(refused, RequestState.REFUSED, "the other nodes cannot take every guest of pve1")
        drained = requests.submit(OperatorRequest(action=RequestAction.DRAIN, node="pve2")).request.request_id
        requests.settle(drained, RequestState.DONE, "pve2 is empty")
        undrained = requests.submit(OperatorRequest(action=RequestAction.UNDRAIN, node="pve2")).request.request_id
        requests.settle(undrained, RequestState.DONE, "pve2 may take guests again")  # not an event kind

        notifier.step()
        notifier.step()  # nothing new: nothing posted again
        wait_until(lambda: len(receiver.received) >= 4)
        time.sleep(0.2)

    by_event = {r["event"]: r["data"] for r in receiver.received}
    assert sorted(receiver.events()) == ["drain_done", "migration_failed", "plan_made", "request_refused"]
    assert (by_event["migration_failed"]["job_id"], by_event["migration_failed"]["message"]) == (
        job_id, "migration problems: can't migrate VM")
    assert by_event["plan_made"]["plan_id"] == world.plan.plan_id
    assert by_event["plan_made"]["migrations"] == len(world.plan.migrations)
    assert by_event["request_refused"]["request"]["request_id"] == refused
    assert by_event["request_refused"]["reason"] == "the other nodes cannot take every guest of pve1"
    assert by_event["drain_done"]["request"]["request_id"] == drained


def test_what_happened_before_the_first_notifier_started_is_not_news() -> None:
    redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    fail_a_job(redis)
    requests = RequestStore(redis)
    old = requests.submit(OperatorRequest(action=RequestAction.PAUSE)).request.request_id
    requests.settle(old, RequestState.REFUSED, "already paused")
    with Receiver() as receiver:
        settings = settings_with_tokens(notifications={"webhooks": [{"url": receiver.url}]})
        notifier = Notifier(ApiContext.connect(settings, redis=redis, async_redis=fakeredis.FakeAsyncRedis()))
        notifier.step()
        assert [s.queue.qsize() for s in notifier.senders] == [0]


def test_a_second_notifier_sends_nothing_while_the_first_holds_the_lock(running: Callable[..., Any]) -> None:
    with Receiver() as receiver:
        first, redis = running(receiver.url)
        settings = settings_with_tokens(notifications={"webhooks": [{"url": receiver.url}]})
        second = Notifier(ApiContext.connect(settings, redis=redis, async_redis=fakeredis.FakeAsyncRedis()))
        fail_a_job(redis)
        second.step()
        assert second.senders[0].queue.qsize() == 0
        first.step()
        wait_until(lambda: len(receiver.received) == 1)


def test_webhooks_get_only_the_events_they_ask_for(running: Callable[..., Any]) -> None:
    with Receiver() as receiver:
        notifier, redis = running(receiver.url, events=["request_refused"])
        fail_a_job(redis)
        notifier.step()
        assert notifier.senders[0].queue.qsize() == 0 and receiver.received == []


def test_a_5xx_or_429_is_retried_until_delivered_once(running: Callable[..., Any]) -> None:
    with Receiver(answers=[500, 503, 429]) as receiver:
        notifier, redis = running(receiver.url)
        fail_a_job(redis)
        notifier.step()
        wait_until(lambda: notifier.senders[0].sent == 1)  # counted once the receiver's answer is back
        assert (receiver.attempts, len(receiver.received)) == (4, 1)


def test_a_webhook_that_never_answers_is_given_up_after_its_attempts() -> None:
    with Receiver(answers=[500] * 10) as receiver:
        sender = Sender(Webhook(url=receiver.url, attempts=3), httpx.Client(), backoff=0.01)
        sender.post({"event": "migration_failed", "at": "now", "data": {}})
        assert (receiver.attempts, sender.sent, sender.given_up) == (3, 0, 1)


def test_a_4xx_is_not_retried() -> None:
    with Receiver(answers=[404, 404]) as receiver:
        sender = Sender(Webhook(url=receiver.url, attempts=5), httpx.Client(), backoff=0.01)
        sender.post({"event": "migration_failed", "at": "now", "data": {}})
        assert (receiver.attempts, sender.given_up) == (1, 1)


def test_the_notifier_only_queues_posting_happens_in_the_senders_own_thread() -> None:
    """A webhook that hangs cannot hold up the notifier (nor anything else): `step` only queues."""
    redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    unreachable = "http://127.0.0.1:9/never"  # the discard port: nothing listens
    settings = settings_with_tokens(notifications={"webhooks": [{"url": unreachable, "attempts": 20}]})
    notifier = Notifier(ApiContext.connect(settings, redis=redis, async_redis=fakeredis.FakeAsyncRedis()))
    notifier.step()
    for vmid in range(101, 111):
        fail_a_job(redis, vmid)
    notifier.step()
    assert notifier.senders[0].queue.qsize() == 10 and notifier.senders[0].sent == 0


def test_a_balanced_plan_is_not_news_but_an_infeasible_one_is(running: Callable[..., Any]) -> None:
    with Receiver() as receiver:
        notifier, redis = running(receiver.url)
        snapshot = all_on_one()
        from pvebalance.engine import Policy, plan_balance

        plan = plan_balance(snapshot, Policy(max_migrations=1, exact_seconds=0))
        plans = PlanStore(redis)
        balanced = plan.model_copy(update={"plan_id": "plan-balanced", "actions": [], "outcome": "balanced"})
        infeasible = plan.model_copy(update={"plan_id": "plan-infeasible", "actions": [], "outcome": "infeasible",
                                             "outcome_reason": "no safe move helps"})
        for p in (balanced, infeasible):
            plans.save(p, PlanStatus(plan_id=p.plan_id, state=PlanState.DONE))
        notifier.step()
        wait_until(lambda: len(receiver.received) == 1)
        time.sleep(0.1)
    assert [(r["data"]["plan_id"], r["data"]["outcome_reason"]) for r in receiver.received] == [
        ("plan-infeasible", "no safe move helps")]


def test_a_plan_of_disk_moves_only_is_news_and_a_failed_disk_move_says_its_kind(
        running: Callable[..., Any]) -> None:
    with Receiver() as receiver:
        notifier, redis = running(receiver.url)
        world = make_storage_world(redis, PlanState.RUNNING)
        plans = PlanStore(redis)
        disks_only = world.plan.model_copy(update={"plan_id": "plan-disks", "actions": world.plan.disk_moves})
        plans.save(disks_only, PlanStatus(plan_id="plan-disks", state=PlanState.RECOMMENDED))
        job = DiskMoveJob.of("plan-disks", world.plan.disk_moves[1], 1, load_settings(None))
        JobStore(redis).create(job)
        JobStore(redis).transition(job, JobState.FAILED, "storage migration failed", duration_s=9.0)
        notifier.step()
        wait_until(lambda: len(receiver.received) >= 3)
        time.sleep(0.1)
    made = {r["data"]["plan_id"]: r["data"] for r in receiver.received if r["event"] == "plan_made"}
    assert (made["plan-disks"]["migrations"], made["plan-disks"]["disk_moves"]) == (0, 9)
    assert (made[world.plan.plan_id]["migrations"], made[world.plan.plan_id]["disk_moves"]) == (1, 9)
    [failed] = [r["data"] for r in receiver.received if r["event"] == "migration_failed"]
    assert (failed["job_id"], failed["action"], failed["source"], failed["target"]) == (
        job.job_id, "move-disk", job.source, job.target)


@pytest.mark.parametrize(("hook", "message"), [
    ({"url": "ftp://example.org/x"}, "String should match pattern"),
    ({"url": "http://127.0.0.1/x", "events": ["plan_eaten"]}, "notifications.webhooks.0.events.0"),
])
def test_bad_webhook_config_is_refused_by_name(hook: dict[str, Any], message: str) -> None:
    from pvebalance.shared.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        settings_with_tokens(notifications={"webhooks": [hook]})
