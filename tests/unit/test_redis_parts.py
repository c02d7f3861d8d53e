"""Job store, slots and planner on fakeredis."""

from __future__ import annotations

import time
from datetime import timedelta

from redis import Redis
from rq import Queue

from pvebalance.engine import Policy, plan_balance
from pvebalance.services.migrator.slots import SlotRequest, Slots
from pvebalance.services.planner.planner import Planner
from pvebalance.shared import keys
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.config import MigratorSettings, load_settings
from pvebalance.shared.jobs import JobState, MigrationJob
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import GuestType, utcnow
from tests.helpers import REPO


def job(vmid: int = 100, plan: str = "plan-a", source: str = "pve1", target: str = "pve2") -> MigrationJob:
    return MigrationJob(job_id=MigrationJob.id_for(plan, vmid), plan_id=plan, vmid=vmid, name=f"vm{vmid}",
                        guest_type=GuestType.QEMU, source=source, target=target, online=True)


def test_job_ids_are_deterministic_per_plan_and_guest() -> None:
    assert MigrationJob.id_for("plan-a", 100) == MigrationJob.id_for("plan-a", 100)
    assert MigrationJob.id_for("plan-a", 100) != MigrationJob.id_for("plan-b", 100)


def test_every_transition_goes_to_the_job_and_the_stream(fake_redis: Redis) -> None:
    store = JobStore(fake_redis)
    j = job()
    assert store.create(j)
    assert not store.create(j), "a second create of the same job id is refused"
    store.transition(j, JobState.RUNNING, upid="UPID:pve1:00000001:00000002:00000003:qmigrate:100:root@pam:")
    store.transition(j, JobState.FAILED, "migration aborted", duration_s=1.5)
    record = store.load(j.job_id).fields
    assert record["state"] == "failed" and record["message"] == "migration aborted"
    assert record["upid"].startswith("UPID:pve1")
    assert {"at_queued", "at_running", "at_failed"} <= set(record)
    states = [e.state for _, e in store.events()]
    assert states == [JobState.QUEUED, JobState.RUNNING, JobState.FAILED]
    assert store.active_jobs() == set()


def test_a_guest_is_claimed_by_one_job_until_it_ends(fake_redis: Redis) -> None:
    store = JobStore(fake_redis)
    first, second = job(plan="plan-a"), job(plan="plan-b")
    assert store.claim_guest(100, first.job_id) is None
    assert store.claim_guest(100, second.job_id) == first.job_id
    store.create(first)
    store.transition(first, JobState.SUCCEEDED)
    assert store.claim_guest(100, second.job_id) is None


def slots(redis: Redis, **kw: int) -> Slots:
    return Slots(redis, MigratorSettings(slot_ttl=30, slot_wait_timeout=1, **kw))


def test_slots_enforce_cluster_source_and_target_limits(fake_redis: Redis) -> None:
    s = slots(fake_redis, max_parallel_cluster=2, max_parallel_per_source=1, max_parallel_per_target=1)
    assert s.try_acquire(SlotRequest.between("a", "pve1", "pve2"))
    assert not s.try_acquire(SlotRequest.between("b", "pve1", "pve3")), "source pve1 is busy"
    assert not s.try_acquire(SlotRequest.between("c", "pve3", "pve2")), "target pve2 is busy"
    assert s.try_acquire(SlotRequest.between("d", "pve3", "pve4"))
    assert not s.try_acquire(SlotRequest.between("e", "pve5", "pve6")), "two cluster-wide"
    # a refused request took nothing anywhere
    assert fake_redis.zcard(keys.slots_source("pve5")) == 0
    s.release(SlotRequest.between("a", "pve1", "pve2"))
    assert s.try_acquire(SlotRequest.between("e", "pve5", "pve6"))


def test_slots_of_a_dead_holder_expire(fake_redis: Redis) -> None:
    s = Slots(fake_redis, MigratorSettings(slot_ttl=0.2, max_parallel_cluster=1))
    assert s.try_acquire(SlotRequest.between("dead", "pve1", "pve2"))
    assert not s.try_acquire(SlotRequest.between("next", "pve3", "pve4"))
    time.sleep(0.3)
    assert s.try_acquire(SlotRequest.between("next", "pve3", "pve4"))


def test_slots_are_released_when_the_body_raises(fake_redis: Redis) -> None:
    s = slots(fake_redis)
    req = SlotRequest.between("a", "pve1", "pve2")
    assert s.try_acquire(req)
    try:
        with s.held(req):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert fake_redis.zcard(keys.SLOTS_CLUSTER) == 0


def all_on_one():  # type: ignore[no-untyped-def]
    return snapshot_from_api(load_dump(REPO / "pvebalance" / "scenarios" / "all-on-one.json")["api"])


def test_planner_enqueues_one_job_per_move_and_never_twice(fake_redis: Redis) -> None:
    planner = Planner(fake_redis, load_settings())
    plan = planner.handle(all_on_one())
    assert plan is not None and plan.migrations
    queue = Queue(keys.MIGRATION_QUEUE, connection=fake_redis)
    total = queue.count + len(queue.deferred_job_registry.get_job_ids())
    assert total == len(plan.migrations)
    assert planner.enqueue(plan) == [], "the same plan enqueued again adds no job"
    # while its jobs are active the planner does not plan again
    assert planner.handle(all_on_one()) is None
    # a different plan over the same guests gets no job for a guest already claimed
    other = plan_balance(all_on_one(), Policy())
    assert planner.enqueue(other) == []


def test_planner_refuses_a_stale_snapshot(fake_redis: Redis) -> None:
    snap = all_on_one().model_copy(update={"taken_at": utcnow() - timedelta(hours=1)})
    assert Planner(fake_redis, load_settings()).handle(snap) is None
    assert fake_redis.get(keys.PLAN_LATEST) is None


def test_cancel_only_before_the_migration_starts(fake_redis: Redis) -> None:
    store = JobStore(fake_redis)
    queued, running = job(vmid=100), job(vmid=101)
    store.create(queued)
    store.create(running)
    store.transition(running, JobState.RUNNING)
    assert store.cancel(queued.job_id) is JobState.CANCELLED
    assert store.cancel(running.job_id) is JobState.RUNNING
    assert store.cancel("migrate-nope-1") is None
    assert store.active_jobs() == {running.job_id}
    assert fake_redis.get(keys.guest_job(100)) is None, "a cancelled job frees its guest"


def test_a_cancelled_job_is_not_run(fake_redis: Redis, start_simulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pvebalance.services.migrator.runner import JobRunner
    from pvebalance.shared.proxmox import ProxmoxClient
    from tests.helpers import settings_for

    sim = start_simulator()
    settings = settings_for(sim, "redis://unused", tmp_path)
    store = JobStore(fake_redis)
    j = job(vmid=118)
    store.create(j)
    store.cancel(j.job_id)
    runner = JobRunner(ProxmoxClient(settings.proxmox_api), store, Slots(fake_redis, settings.migrator), settings)
    assert runner.run(j) is JobState.CANCELLED
    assert sim.cluster.stats.migrate_posts[118] == 0


def test_planner_recreates_its_consumer_group_when_redis_lost_it(fake_redis: Redis) -> None:
    import threading

    planner = Planner(fake_redis, load_settings())
    stop = threading.Event()
    runner = threading.Thread(target=planner.run, args=(stop,), daemon=True)
    runner.start()
    time.sleep(0.5)
    fake_redis.flushall()  # Redis restarted without its data, under the running planner
    fake_redis.xadd(keys.SNAPSHOT_STREAM, {"snapshot": all_on_one().model_dump_json()})
    deadline = time.monotonic() + 10
    while fake_redis.get(keys.PLAN_LATEST) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    runner.join(5)
    assert fake_redis.get(keys.PLAN_LATEST) is not None, "the planner found its stream again and planned"


def test_planner_whose_consumer_group_is_refused_logs_once_and_plans_once_it_can(
        fake_redis: Redis, capsys) -> None:  # type: ignore[no-untyped-def]
    import json
    import threading

    from pvebalance.shared.logging import configure_logging

    configure_logging("INFO", "json")
    fake_redis.set(keys.SNAPSHOT_STREAM, "not a stream")  # XGROUP CREATE answers WRONGTYPE
    planner = Planner(fake_redis, load_settings())
    stop = threading.Event()
    runner = threading.Thread(target=planner.run, args=(stop,), daemon=True)
    runner.start()
    time.sleep(1.0)
    assert runner.is_alive(), "the planner keeps running"
    fake_redis.delete(keys.SNAPSHOT_STREAM)
    deadline = time.monotonic() + 10
    while not fake_redis.exists(keys.SNAPSHOT_STREAM) and time.monotonic() < deadline:
        time.sleep(0.05)
    fake_redis.xadd(keys.SNAPSHOT_STREAM, {"snapshot": all_on_one().model_dump_json()})
    while fake_redis.get(keys.PLAN_LATEST) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    runner.join(5)
    assert fake_redis.get(keys.PLAN_LATEST) is not None
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    refused = [e for e in lines if "consumer group cannot be created" in e["event"]]
    assert len(refused) == 1 and "WRONGTYPE" in refused[0]["error"]
    assert not any("Traceback" in str(e) for e in lines)


def test_a_service_stopped_while_waiting_for_redis_at_start_up_returns_quietly() -> None:
    """It re-raised the last connection error (a traceback on SIGTERM) instead of ending."""
    import threading

    from pvebalance.shared.logging import get_logger
    from pvebalance.shared.redisconn import connect_waiting

    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    assert connect_waiting("redis://127.0.0.1:1/0", get_logger("test"), stop) is None


def test_a_parked_guest_gets_a_second_job_that_runs_after_its_first(fake_redis: Redis) -> None:
    from rq.job import Job

    from pvebalance.shared.models import Migration, MigrationReason, Plan, UsageSummary

    def move(vmid: int, source: str, target: str) -> Migration:
        return Migration(vmid=vmid, name=f"vm{vmid}", type=GuestType.QEMU, source=source, target=target,
                         reason=MigrationReason.PIN, online=True)

    empty = UsageSummary(spread_pp=0, nodes={})
    plan = Plan(plan_id="plan-swap", method="memory", mode="used", balanciness=5, before=empty, after=empty,
                migrations=[move(101, "pve2", "pve3"), move(100, "pve1", "pve2"), move(101, "pve3", "pve1")])
    planner = Planner(fake_redis, load_settings())

    enqueued = planner.enqueue(plan)

    assert enqueued == ["migrate-plan-swap-101", "migrate-plan-swap-100", "migrate-plan-swap-101-2"]
    second = Job.fetch("migrate-plan-swap-101-2", connection=fake_redis)
    assert set(second.dependency_ids) == {"migrate-plan-swap-101", "migrate-plan-swap-100"}  # its own, and pve1 freed
    assert fake_redis.get(keys.guest_job(101)) == b"migrate-plan-swap-101", "the first move holds the guest"
