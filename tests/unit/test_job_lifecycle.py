"""A migration job under faults: it ends exactly once, its slots are held while its task runs, and
whatever interrupts a run, the job is taken over and finished. Real proxmoxer over HTTPS against the
simulator; fakeredis for Redis (rq's SimpleWorker runs jobs in this process)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Queue, SimpleWorker

from pvebalance.services.migrator import jobs as migrator_jobs
from pvebalance.services.migrator.preflight import Preflight
from pvebalance.services.migrator.recovery import MAX_TAKEOVERS, Reconciler
from pvebalance.services.migrator.runner import JobRunner
from pvebalance.services.migrator.slots import SlotRequest, Slots, SlotYield
from pvebalance.services.planner.planner import Planner
from pvebalance.shared import keys
from pvebalance.shared.config import Settings
from pvebalance.shared.jobqueue import end_overdue, enqueue_job
from pvebalance.shared.jobs import JobState, MigrationJob
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import ClusterSnapshot, GuestType, NodeState
from pvebalance.shared.proxmox import ProxmoxClient
from pvebalance.simulator.server import Simulator
from tests.helpers import SimFactory, settings_for


def make_job(store: JobStore, vmid: int = 118, source: str = "pve1", target: str = "pve2",
             plan: str = "plan-t") -> MigrationJob:
    job = MigrationJob(job_id=MigrationJob.id_for(plan, vmid), plan_id=plan, vmid=vmid, name=f"vm{vmid}",
                       guest_type=GuestType.QEMU, source=source, target=target, online=True)
    store.create(job)
    return job


def runner_for(sim: Simulator, redis: Redis, tmp_path: Path, **sections: dict[str, Any]) -> JobRunner:
    settings = settings_for(sim, "redis://unused", tmp_path, **sections)
    return JobRunner(ProxmoxClient(settings.proxmox_api), JobStore(redis), Slots(redis, settings.migrator),
                           settings)


def final_events(store: JobStore, job_id: str) -> list[JobState]:
    return [e.state for _, e in store.events() if e.job_id == job_id and e.state.terminal]


# --- the job store: one end per job -----------------------------------------------------------------

def test_a_job_ends_exactly_once_whoever_tries_to_end_it_again(fake_redis: Redis) -> None:
    store = JobStore(fake_redis)
    job = make_job(store)
    assert store.transition(job, JobState.FAILED, "task error")
    assert not store.transition(job, JobState.SUCCEEDED, "a second runner")
    assert not store.transition(job, JobState.RUNNING, "a late update")
    assert store.state(job.job_id) is JobState.FAILED
    assert final_events(store, job.job_id) == [JobState.FAILED]


def test_pinned_slots_outlive_their_expiry_and_are_freed_only_when_the_job_ends(fake_redis: Redis,
                                                                                 tmp_path: Path) -> None:
    settings = Settings(migrator={"max_parallel_cluster": 1, "slot_ttl": 0.2})
    slots, store = Slots(fake_redis, settings.migrator), JobStore(fake_redis)
    job = make_job(store)
    mine = SlotRequest.between(job.job_id, job.source, job.target)
    assert slots.try_acquire(mine)
    assert slots.commit(mine, job) == 1
    time.sleep(0.3)  # past the slot's expiry: a POSTed migration still holds it
    other = SlotRequest.between("migrate-plan-t-999", "pve3", "pve4")
    assert not slots.try_acquire(other)
    store.transition(job, JobState.SUCCEEDED, "landed")
    assert slots.try_acquire(other)


def test_a_job_cancelled_while_it_held_its_slots_does_not_start(fake_redis: Redis) -> None:
    slots, store = Slots(fake_redis, Settings().migrator), JobStore(fake_redis)
    job = make_job(store)
    req = SlotRequest.between(job.job_id, job.source, job.target)
    assert slots.try_acquire(req)
    assert store.cancel(job.job_id) is JobState.CANCELLED
    assert slots.commit(req, job) == -1
    assert store.state(job.job_id) is JobState.CANCELLED


# --- the runner through API faults ------------------------------------------------------------------

@pytest.mark.parametrize("fault", [
    pytest.param({"kind": "http", "status": 401, "message": "Authentication failed!", "count": 3}, id="401"),
    pytest.param({"kind": "malformed", "body": "<html>proxy error</html>", "count": 3}, id="malformed"),
    pytest.param({"kind": "http", "status": 503, "message": "Service Unavailable", "count": 3}, id="503"),
])
def test_a_fault_while_following_the_task_does_not_end_the_job(start_simulator: SimFactory, fake_redis: Redis,
                                                                tmp_path: Path, fault: dict[str, Any]) -> None:
    sim = start_simulator(time_scale=0.3)
    r = runner_for(sim, fake_redis, tmp_path)
    job = make_job(r.store)
    sim.faults.add({**fault, "method": "GET", "path": r"/tasks/.*/status$"})
    assert r.run(job) is JobState.SUCCEEDED
    assert sim.cluster.stats.migrate_posts[118] == 1
    assert sim.cluster.guests[118].node == "pve2"
    assert final_events(r.store, job.job_id) == [JobState.SUCCEEDED]


def test_a_migrate_post_that_times_out_is_found_in_the_task_list_not_sent_again(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path) -> None:
    sim = start_simulator(time_scale=0.3)
    r = runner_for(sim, fake_redis, tmp_path, proxmox_api={"timeout": 1})
    job = make_job(r.store, 100)  # a container would be the same: the point is the second POST
    sim.faults.add({"kind": "delay", "method": "POST", "path": "/migrate$", "seconds": 2, "when": "after"})
    assert r.run(job) is JobState.SUCCEEDED
    assert sim.cluster.stats.migrate_posts[100] == 1
    record = r.store.load(job.job_id).fields
    assert ":qmigrate:100:" in record["upid"]


def test_a_task_error_ends_the_job_once_and_frees_its_slots_only_then(start_simulator: SimFactory,
                                                                        fake_redis: Redis, tmp_path: Path) -> None:
    sim = start_simulator(time_scale=0.3)
    r = runner_for(sim, fake_redis, tmp_path, migrator={"max_parallel_cluster": 1})
    job = make_job(r.store)
    sim.faults.add({"kind": "task_error", "vmid": 118, "message": "migration aborted"})
    assert r.run(job) is JobState.FAILED
    assert r.store.load(job.job_id).message == "migration aborted"
    assert final_events(r.store, job.job_id) == [JobState.FAILED]
    assert fake_redis.zcard(keys.SLOTS_CLUSTER) == 0


# --- rq's outcome settles the job store ---------------------------------------------------------------

def _queue(redis: Redis) -> Queue:
    return Queue(keys.MIGRATION_QUEUE, connection=redis)


def test_an_unexpected_exception_in_a_run_is_taken_over_and_the_job_finishes(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = start_simulator(time_scale=0.05)
    settings = settings_for(sim, "redis://unused", tmp_path)
    migrator_jobs.set_context(settings)
    store = JobStore(fake_redis)
    job = make_job(store)
    enqueue_job(_queue(fake_redis), settings, job)
    real_check = Preflight.clear
    calls = {"n": 0}

    def broken_once(self: Preflight, *args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug in pre-flight")
        return real_check(self, *args)

    monkeypatch.setattr(Preflight, "clear", broken_once)
    SimpleWorker([_queue(fake_redis)], connection=fake_redis).work(burst=True)
    assert store.state(job.job_id) is JobState.QUEUED, "rq failed the run; the job is not lost, not ended"
    assert "RuntimeError: a bug in pre-flight" in store.load(job.job_id).interrupted
    assert Reconciler(fake_redis, settings).run_once() == [job.job_id]
    SimpleWorker([_queue(fake_redis)], connection=fake_redis).work(burst=True)
    assert store.state(job.job_id) is JobState.SUCCEEDED
    assert sim.cluster.stats.migrate_posts[118] == 1
    assert store.active_jobs() == set()


def test_a_job_rq_keeps_failing_is_given_up_after_the_attempt_limit_with_rqs_reason(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = start_simulator()
    settings = settings_for(sim, "redis://unused", tmp_path)
    migrator_jobs.set_context(settings)
    store = JobStore(fake_redis)
    job = make_job(store)
    enqueue_job(_queue(fake_redis), settings, job)

    def always_broken(self: Preflight, *args: Any) -> Any:
        raise RuntimeError("always broken")

    monkeypatch.setattr(Preflight, "clear", always_broken)
    reconciler = Reconciler(fake_redis, settings, interval=0.01)
    for _ in range(MAX_TAKEOVERS + 1):
        SimpleWorker([_queue(fake_redis)], connection=fake_redis).work(burst=True)
        fake_redis.delete(keys.RECONCILER_LOCK)
        reconciler.run_once()
    assert store.state(job.job_id) is JobState.FAILED
    assert store.load(job.job_id).message == f"given up after {MAX_TAKEOVERS + 1} runs: RuntimeError: always broken"
    assert sim.cluster.stats.migrate_posts[118] == 0


def test_a_job_popped_by_a_dequeue_and_dropped_is_failed_by_rq_then_queued_again_once(fake_redis: Redis) -> None:
    """rq's own maintenance finds a run stuck in its dequeue's intermediate list (after a minute); the
    reconciler runs the job again once rq has given the run up, not before."""
    settings = Settings()
    store = JobStore(fake_redis)
    job = make_job(store)
    queue = _queue(fake_redis)
    enqueue_job(queue, settings, job)
    fake_redis.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")  # popped, then its worker died
    reconciler = Reconciler(fake_redis, settings, interval=0.01, lost_after=0)
    assert reconciler.run_once() == [], "rq still holds the run (its intermediate list)"
    maintainer = SimpleWorker([queue], connection=fake_redis)
    maintainer.clean_registries()  # rq notes when it first saw the job there
    fake_redis.set(queue.intermediate_queue.get_first_seen_key(job.job_id), time.time() - 120)  # ... 2 min ago
    maintainer.clean_registries()
    assert job.job_id in queue.failed_job_registry
    for acted in ([job.job_id], []):
        fake_redis.delete(keys.RECONCILER_LOCK)
        assert reconciler.run_once() == acted
    assert [x.decode() for x in fake_redis.lrange(queue.key, 0, -1)] == [job.job_id]
    assert fake_redis.llen(queue.intermediate_queue_key) == 0
    assert store.load(job.job_id).takeovers == 1


def test_a_job_created_but_not_yet_in_rq_is_left_to_the_planner_that_enqueues_it(fake_redis: Redis) -> None:
    """The planner stores a job, then enqueues it: a reconciler passing in between must not queue it too
    (it jumped the queue's order, and the planner's own enqueue put it in the queue a second time)."""
    settings = Settings()
    store = JobStore(fake_redis)
    job = make_job(store)
    reconciler = Reconciler(fake_redis, settings, interval=0.01)
    assert reconciler.run_once() == []
    enqueue_job(_queue(fake_redis), settings, job)
    fake_redis.delete(keys.RECONCILER_LOCK)
    assert reconciler.run_once() == []
    assert [x.decode() for x in fake_redis.lrange(_queue(fake_redis).key, 0, -1)] == [job.job_id]
    assert store.load(job.job_id).takeovers == 0


def test_a_job_stored_long_ago_that_rq_never_had_is_queued_again(fake_redis: Redis) -> None:
    settings = Settings()
    store = JobStore(fake_redis)
    job = make_job(store)
    store.set_fields(job.job_id, created_at=time.time() - 60)  # the planner died before enqueueing it
    assert Reconciler(fake_redis, settings, interval=0.01).run_once() == [job.job_id]
    assert [x.decode() for x in fake_redis.lrange(_queue(fake_redis).key, 0, -1)] == [job.job_id]


# --- the planner never stalls on a job ----------------------------------------------------------------

def _snapshot(maintenance: str | None = None) -> ClusterSnapshot:
    nodes = [NodeState(name=n, maxmem=64 * 2**30, mem=8 * 2**30, maintenance=n == maintenance)
             for n in ("pve1", "pve2", "pve3")]
    return ClusterSnapshot(nodes=nodes, guests=[])


def test_jobs_aimed_at_a_node_that_went_into_maintenance_are_skipped_and_free_the_planner(
        fake_redis: Redis) -> None:
    planner = Planner(fake_redis, Settings())
    store = planner.jobs
    into_pve2, into_pve3 = make_job(store, 118, target="pve2"), make_job(store, 119, target="pve3")
    skipped = planner.skip_jobs_into_unusable_nodes(_snapshot(maintenance="pve2"))
    assert skipped == [into_pve2.job_id]
    assert store.load(into_pve2.job_id).message == "target node pve2 is in maintenance since the plan was made"
    assert store.active_jobs() == {into_pve3.job_id}


def test_a_job_that_never_started_is_ended_at_its_deadline(fake_redis: Redis) -> None:
    settings = Settings(migrator={"slot_wait_timeout": 10, "task_timeout_base": 10})
    store = JobStore(fake_redis)
    job = make_job(store)
    created = store.load(job.job_id).created_at
    assert end_overdue(store, settings, now=created + 60) == []
    assert end_overdue(store, settings, now=created + 81) == [job.job_id]
    assert store.state(job.job_id) is JobState.FAILED
    assert store.load(job.job_id).message.startswith("not started within 81 s")


def test_after_a_plan_whose_moves_failed_the_planner_waits_before_planning_again(fake_redis: Redis) -> None:
    """A refused move was planned again, and failed again, at every snapshot (67 failed jobs in 8 s)."""
    from pvebalance.shared.apidump import load_dump, snapshot_from_api
    from tests.helpers import REPO

    planner = Planner(fake_redis, Settings(planner={"retry_after_failure": 60}, balancing={"enable": False}))
    snapshot = snapshot_from_api(load_dump(REPO / "pvebalance" / "scenarios" / "all-on-one.json")["api"])
    plan = planner.handle(snapshot)
    assert plan is not None and plan.migrations
    assert planner.wait_after_failures() == 0.0
    first = plan.migrations[0]
    job = make_job(planner.jobs, first.vmid, first.source, first.target, plan=plan.plan_id)
    planner.jobs.transition(job, JobState.FAILED, "VM is locked (backup)")
    failed_at = planner.jobs.load(job.job_id).at(JobState.FAILED)
    assert planner.wait_after_failures(now=failed_at + 10) == pytest.approx(50.0)
    assert planner.handle(snapshot.model_copy(update={"snapshot_id": "snap-2"})) is None
    assert planner.wait_after_failures(now=failed_at + 61) == 0.0


def test_pre_flight_refuses_a_target_with_the_engines_own_fit_rule(start_simulator: SimFactory, fake_redis: Redis,
                                                                   tmp_path: Path) -> None:
    """The migrator's room check is the engine's fits(): reservations count too (they did not before)."""
    sim = start_simulator()
    maxmem_gib = sim.cluster.nodes["pve2"].entry["maxmem"] / 2**30
    r = runner_for(sim, fake_redis, tmp_path,
                   balancing={"node_resource_reserve": {"pve2": {"memory": maxmem_gib - 1}}})
    job = make_job(r.store)
    assert r.run(job) is JobState.SKIPPED
    message = r.store.load(job.job_id).message
    assert message.startswith("target node pve2 no longer has room for vm118: pve2 would use")
    assert "max_node_usage 95%" in message
    assert sim.cluster.stats.migrate_posts[118] == 0


def test_a_runner_waiting_for_a_slot_gives_way_only_while_a_live_job_in_flight_waits_in_the_queue(
        fake_redis: Redis) -> None:
    settings = Settings(migrator={"max_parallel_cluster": 1})
    slots, store = Slots(fake_redis, settings.migrator), JobStore(fake_redis)
    resumed, queued, waiter = make_job(store, 118), make_job(store, 119), make_job(store, 120)
    enqueue_job(_queue(fake_redis), settings, queued)
    assert not slots.resumed_job_waits(), "a job that has not started needs no worker before the waiters"
    # `resumed` started (its slot pinned), then its worker died; rq's run of it is queued again at the front
    req = SlotRequest.between(resumed.job_id, resumed.source, resumed.target)
    assert slots.try_acquire(req) and slots.commit(req, resumed) == 1
    enqueue_job(_queue(fake_redis), settings, resumed, at_front=True)
    mine = SlotRequest.between(waiter.job_id, waiter.source, waiter.target)
    with pytest.raises(SlotYield):
        slots.wait(mine)
    store.transition(resumed, JobState.FAILED, "given up")  # ended while still in the queue
    assert not slots.resumed_job_waits()
    slots.wait(mine)  # its slot is free again: taken at once
