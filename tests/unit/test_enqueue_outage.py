"""Redis away while the planner enqueues a plan: the jobs made before the outage keep their place, the one
being queued when it struck is queued once Redis is back, and the rest of the plan is enqueued then, each
waiting for what it waits for, as an uninterrupted enqueue would have made them; an operator's approval cut
short the same way ends as it would have, not refused as "already approved"."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue
from rq.job import Job as RqJob

from pvebalance.services.planner import planner as planner_module
from pvebalance.services.planner.planner import Planner
from pvebalance.shared import keys
from pvebalance.shared.config import Settings
from pvebalance.shared.jobs import job_ids
from pvebalance.shared.models import GuestType, Migration, MigrationReason, Plan, UsageSummary
from pvebalance.shared.plans import PlanState
from pvebalance.shared.requests import OperatorRequest, RequestAction, RequestState
from pvebalance.shared.words import actions_in_words, plural


def move(vmid: int, source: str, target: str, after: tuple[int, ...] = ()) -> Migration:
    return Migration(vmid=vmid, name=f"vm{vmid}", type=GuestType.QEMU, source=source, target=target,
                     reason=MigrationReason.BALANCE, online=True, after=list(after))


def a_plan() -> Plan:
    """Seven migrations, the later ones waiting for earlier ones (into a node after the moves out of it; a
    guest's second move after its first)."""
    empty = UsageSummary(spread_pp=0, nodes={})
    return Plan(method="memory", mode="used", balanciness=5, before=empty, after=empty, actions=[
        move(100, "pve1", "pve2"), move(101, "pve2", "pve3"), move(102, "pve3", "pve1", after=(1,)),
        move(103, "pve1", "pve4"), move(104, "pve4", "pve2", after=(3,)), move(105, "pve2", "pve1", after=(0, 3)),
        move(100, "pve2", "pve3", after=(0, 4))])


def cut_after(monkeypatch: pytest.MonkeyPatch, calls: int) -> None:
    """Redis goes away while the planner puts its `calls`+1-th job on rq's queue."""
    real = planner_module.enqueue_job
    made: list[str] = []

    def enqueue_job(queue: Queue, settings: Settings, job: Any, after: list[str] | None = None) -> None:
        if len(made) == calls:
            raise RedisConnectionError("Connection refused")
        made.append(job.job_id)
        real(queue, settings, job, after)

    monkeypatch.setattr(planner_module, "enqueue_job", enqueue_job)


def rq_waits(redis: Redis, plan: Plan) -> dict[str, list[str]]:
    """Each of the plan's jobs on rq's queue, with the jobs rq makes it wait for."""
    return {job_id: sorted(str(d) for d in RqJob.fetch(job_id, connection=redis).dependency_ids)
            for job_id in job_ids(plan) if RqJob.exists(job_id, redis)}


def test_a_plan_whose_enqueueing_redis_cut_short_is_enqueued_whole_once_redis_is_back(
        fake_redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    from fakeredis import FakeRedis

    clean = Planner(FakeRedis(), Settings())
    planner = Planner(fake_redis, Settings())
    plan = a_plan()
    clean.enqueue(plan)
    planner.save(plan)
    cut_after(monkeypatch, 3)

    with pytest.raises(RedisConnectionError):
        planner.enqueue(plan)
    ids = job_ids(plan)
    made = [bool(r) for r in planner.jobs.load_many(ids)]
    assert made == [True] * 4 + [False] * (len(ids) - 4), "three queued, the fourth made but not queued"
    assert [RqJob.exists(j, fake_redis) for j in ids[:4]] == [True, True, True, False]

    monkeypatch.undo()
    planner.finish_enqueueing()

    assert rq_waits(fake_redis, plan) == rq_waits(clean.redis, plan), "every job, waiting as it would have"
    assert len(rq_waits(fake_redis, plan)) == len(ids)
    assert Queue(keys.MIGRATION_QUEUE, connection=fake_redis).count == \
        Queue(keys.MIGRATION_QUEUE, connection=clean.redis).count, "none queued twice"
    assert fake_redis.smembers(keys.PLANS_ENQUEUING) == set()


def test_a_plan_no_longer_running_is_not_enqueued_after_the_outage(fake_redis: Redis,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    planner = Planner(fake_redis, Settings())
    plan = a_plan()
    planner.save(plan)
    cut_after(monkeypatch, 2)
    with pytest.raises(RedisConnectionError):
        planner.enqueue(plan)
    monkeypatch.undo()
    planner.plans.set_state(plan.plan_id, PlanState.DONE, "cancelled by alice")

    planner.finish_enqueueing()

    assert sum(bool(r) for r in planner.jobs.load_many(job_ids(plan))) == 3
    assert fake_redis.smembers(keys.PLANS_ENQUEUING) == set()


def test_an_approval_cut_short_by_an_outage_ends_done_with_the_chosen_moves_once_redis_is_back(
        fake_redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    planner = Planner(fake_redis, Settings(balancing={"mode_of_operation": "manual"}))
    plan = a_plan()
    planner.save(plan, PlanState.RECOMMENDED)
    chosen = [100, 101, 102, 104]
    planner.operator.ensure_group()
    request = OperatorRequest(who="alice", action=RequestAction.APPROVE, plan_id=plan.plan_id, vmids=chosen)
    planner.operator.store.submit(request)
    cut_after(monkeypatch, 2)

    with pytest.raises(RedisConnectionError):
        planner.operator.poll()
    status = planner.operator.store.status(request.request_id)
    assert status is not None and status.state is RequestState.PENDING

    monkeypatch.undo()
    planner.finish_enqueueing()
    assert planner.operator.poll() == 1, "the request read before is handed back"

    status = planner.operator.store.status(request.request_id)
    approved = plan.of_guests(chosen)
    assert status is not None and (status.state, status.reason) == (
        RequestState.DONE, f"{actions_in_words(approved.actions)} enqueued")
    plan_status = planner.plans.status(plan.plan_id)
    assert plan_status is not None and (plan_status.state, plan_status.reason, plan_status.vmids) == (
        PlanState.RUNNING, plural(len(approved.actions), "job") + " enqueued", chosen)
    assert all(RqJob.exists(j, fake_redis) for j in job_ids(approved))
    assert not any(planner.jobs.load_many([j for j in job_ids(plan) if j not in job_ids(approved)]))
    assert planner.operator.poll() == 0
