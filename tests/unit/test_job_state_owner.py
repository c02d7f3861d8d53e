"""The job store is the one writer of a job's state: every accepted change writes exactly one event and
a refused one nothing; the start commit pins the slots, marks the job running and writes its event in one
step or does nothing; the record reads leniently; a job rq lost is run again once, however many
reconcilers saw it lost."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
from redis import Redis
from rq import Queue

from pvebalance.services.migrator.recovery import Reconciler
from pvebalance.services.migrator.slots import SlotRequest, Slots
from pvebalance.shared import keys
from pvebalance.shared.config import Settings
from pvebalance.shared.jobrecord import LIVE, STARTABLE, TERMINAL, JobRecord
from pvebalance.shared.jobs import JobState, MigrationJob
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import GuestType

INF = float("inf")


def make_job(store: JobStore, vmid: int = 118) -> MigrationJob:
    job = MigrationJob(job_id=MigrationJob.id_for("plan-o", vmid), plan_id="plan-o", vmid=vmid, name=f"vm{vmid}",
                       guest_type=GuestType.QEMU, source="pve1", target="pve2", online=True)
    assert store.create(job)
    return job


def events_of(store: JobStore, job_id: str) -> list[JobState]:
    return [e.state for _, e in store.events() if e.job_id == job_id]


def slot_scores(redis: Redis, job: MigrationJob) -> list[float | None]:
    return [redis.zscore(scope, job.job_id) for scope in keys.slot_scopes(job.source, job.target)]


# --- the start commit ----------------------------------------------------------------------------------

def test_the_start_commit_pins_the_slots_marks_the_job_running_and_writes_its_one_event(fake_redis: Redis) -> None:
    store = JobStore(fake_redis)
    slots = Slots(fake_redis, Settings().migrator, store)
    job = make_job(store)
    req = SlotRequest.between(job.job_id, job.source, job.target)
    assert slots.try_acquire(req)
    before = time.time()
    assert slots.commit(req, job) == 1
    record = store.load(job.job_id)
    assert record.state is JobState.RUNNING and record.in_flight
    assert record.posted_at is not None and record.posted_at >= before
    assert slot_scores(fake_redis, job) == [INF, INF, INF]
    assert events_of(store, job.job_id) == [JobState.QUEUED, JobState.RUNNING]
    assert store.active_jobs() == {job.job_id}


def _lapse_one_slot(redis: Redis, store: JobStore, job: MigrationJob) -> None:
    redis.zadd(keys.slots_target(job.target), {job.job_id: time.time() - 1})


def _lose_one_slot(redis: Redis, store: JobStore, job: MigrationJob) -> None:
    redis.zrem(keys.slots_source(job.source), job.job_id)


def _cancel(redis: Redis, store: JobStore, job: MigrationJob) -> None:
    store.cancel(job.job_id)


def _end(redis: Redis, store: JobStore, job: MigrationJob) -> None:
    store.transition(job, JobState.SKIPPED, "skipped by the planner")


@pytest.mark.parametrize(("meanwhile", "answer"), [
    pytest.param(_lapse_one_slot, 0, id="a slot lapsed"),
    pytest.param(_lose_one_slot, 0, id="a slot was taken away"),
    pytest.param(_cancel, -1, id="cancelled"),
    pytest.param(_end, -1, id="ended"),
])
def test_a_refused_start_commit_changes_nothing(fake_redis: Redis, answer: int,
                                               meanwhile: Callable[[Redis, JobStore, MigrationJob], None]) -> None:
    store = JobStore(fake_redis)
    slots = Slots(fake_redis, Settings().migrator, store)
    job = make_job(store)
    req = SlotRequest.between(job.job_id, job.source, job.target)
    assert slots.try_acquire(req)
    meanwhile(fake_redis, store, job)
    hash_before, scores_before = store.load(job.job_id).fields, slot_scores(fake_redis, job)
    events_before = events_of(store, job.job_id)
    assert slots.commit(req, job) == answer
    assert store.load(job.job_id).fields == hash_before
    assert slot_scores(fake_redis, job) == scores_before and INF not in scores_before
    assert events_of(store, job.job_id) == events_before
    assert JobState.RUNNING not in events_before


def test_a_job_already_running_is_not_started_twice(fake_redis: Redis) -> None:
    store = JobStore(fake_redis)
    slots = Slots(fake_redis, Settings().migrator, store)
    job = make_job(store)
    req = SlotRequest.between(job.job_id, job.source, job.target)
    assert slots.try_acquire(req) and slots.commit(req, job) == 1
    assert slots.commit(req, job) == -1
    assert events_of(store, job.job_id) == [JobState.QUEUED, JobState.RUNNING]


def test_the_upid_is_stored_on_the_running_job_without_a_state_change(fake_redis: Redis) -> None:
    store = JobStore(fake_redis)
    job = make_job(store)
    assert not store.record_upid(job, "UPID:pve1:1:"), "a job that has not started has no task"
    assert store.start(job) == 0, "no slots taken"
    fake_redis.zadd(keys.SLOTS_CLUSTER, {job.job_id: time.time() + 60})
    fake_redis.zadd(keys.slots_source(job.source), {job.job_id: time.time() + 60})
    fake_redis.zadd(keys.slots_target(job.target), {job.job_id: time.time() + 60})
    assert store.start(job) == 1
    assert store.record_upid(job, "UPID:pve1:1:")
    record = store.load(job.job_id)
    assert (record.state, record.upid) == (JobState.RUNNING, "UPID:pve1:1:")
    assert events_of(store, job.job_id) == [JobState.QUEUED, JobState.RUNNING]


# --- one event per accepted change, none per refused one ---------------------------------------------------

def test_every_accepted_state_change_writes_exactly_one_event_and_a_refused_one_nothing(fake_redis: Redis) -> None:
    """A seeded walk of every writer's call on a few jobs: after each, the stream grew by one event exactly
    when the call reported a change, and the job's newest event is its stored state."""
    rng = random.Random(21)
    store = JobStore(fake_redis)
    jobs = [make_job(store, vmid) for vmid in (100, 101, 102)]
    for job in jobs:  # slots for the start commits, held long enough for the walk
        for scope in keys.slot_scopes(job.source, job.target):
            fake_redis.zadd(scope, {job.job_id: time.time() + 3600})
    changes, vmids = 0, iter(range(200, 10_000))
    for _ in range(300):
        job = rng.choice(jobs)
        before = store.load(job.job_id).fields
        n_events = len(store.events(count=10_000))
        call = rng.choice(["transition", "start", "cancel", "upid"])
        if call == "transition":
            state = rng.choice(list(JobState))
            only_from = tuple(rng.sample(list(JobState), rng.randint(0, 3)))
            changed = store.transition(job, state, "walk", only_from=only_from)
        elif call == "start":
            changed = store.start(job) == 1
        elif call == "cancel":
            changed = store.cancel(job.job_id) is JobState.CANCELLED and before.get("state") != "cancelled"
        else:
            store.record_upid(job, f"UPID:pve1:{rng.randint(1, 9)}:")
            changed = False  # not a change of state
        after = store.load(job.job_id)
        assert len(store.events(count=10_000)) == n_events + (1 if changed else 0), call
        if call != "upid" and not changed:
            assert after.fields == before, f"a refused {call} wrote to the job"
        if changed:
            changes += 1
            assert events_of(store, job.job_id)[-1] is after.state
        if after.terminal:  # start again with a fresh job, so the walk keeps changing states
            jobs[jobs.index(job)] = fresh = make_job(store, next(vmids))
            for scope in keys.slot_scopes(fresh.source, fresh.target):
                fake_redis.zadd(scope, {fresh.job_id: time.time() + 3600})
    assert changes > 50, "the walk changed states often enough to mean something"


# --- the states, once --------------------------------------------------------------------------------------

def test_every_state_is_live_or_terminal_and_a_job_starts_only_from_live_states() -> None:
    assert set(JobState) == LIVE | TERMINAL and not LIVE & TERMINAL
    assert {JobState.SUCCEEDED, JobState.FAILED, JobState.SKIPPED, JobState.CANCELLED} == TERMINAL
    assert set(STARTABLE) < LIVE and JobState.RUNNING not in STARTABLE


# --- reading a record --------------------------------------------------------------------------------------

PREVIOUS_VERSION = {  # a running job's hash as the version before this one wrote it
    "state": "running", "message": "task UPID:pve1:1:", "created_at": "1764900000.5", "keep_s": "604800",
    "at_queued": "1764900000.5", "at_running": "1764900003.25", "posted_at": "1764900003.0",
    "upid": "UPID:pve1:1:", "known_tasks": "UPID:pve1:0:", "takeovers": "1",
    "payload": MigrationJob(job_id="migrate-p-100", plan_id="p", vmid=100, name="vm100", guest_type=GuestType.QEMU,
                            source="pve1", target="pve2", online=True).model_dump_json(),
}


@pytest.mark.parametrize(("fields", "read"), [
    pytest.param(PREVIOUS_VERSION, {"state": JobState.RUNNING, "live": True, "in_flight": True, "vmid": 100,
                                    "posted_at": 1764900003.0, "updated_at": 1764900003.25, "takeovers": 1,
                                    "known_tasks": {"UPID:pve1:0:"}}, id="the previous version's record"),
    pytest.param({"state": "paused-by-a-newer-version", "payload": '{"schema_version": 99}', "created_at": "soon"},
                 {"state": None, "live": False, "in_flight": False, "vmid": None, "posted_at": None,
                  "updated_at": None, "takeovers": 0, "known_tasks": None}, id="a newer version's record"),
    pytest.param({}, {"state": None, "live": False, "in_flight": False, "vmid": None, "posted_at": None,
                      "updated_at": None, "takeovers": 0, "known_tasks": None}, id="no record"),
])
def test_a_record_reads_what_it_knows_and_none_for_what_it_does_not(fake_redis: Redis, fields: dict[str, str],
                                                                    read: dict[str, object]) -> None:
    if fields:
        fake_redis.hset(keys.job("migrate-p-100"), mapping=fields)
    record = JobStore(fake_redis).load("migrate-p-100")
    assert bool(record) == bool(fields)
    assert {"state": record.state, "live": record.live, "in_flight": record.in_flight,
            "vmid": record.job.vmid if record.job else None, "posted_at": record.posted_at,
            "updated_at": record.updated_at, "takeovers": record.takeovers, "known_tasks": record.known_tasks} == read


# --- running again what rq lost ------------------------------------------------------------------------------

def test_a_lost_job_seen_by_two_reconcilers_is_run_again_once(fake_redis: Redis) -> None:
    settings = Settings()
    store = JobStore(fake_redis)
    job = make_job(store)
    store.set_fields(job.job_id, created_at=time.time() - 60)  # rq never had it (the planner died)
    seen = store.load(job.job_id)
    first, second = Reconciler(fake_redis, settings), Reconciler(fake_redis, settings)
    assert first._run_again(seen) and not second._run_again(seen)
    queue = Queue(keys.MIGRATION_QUEUE, connection=fake_redis)
    assert [x.decode() for x in fake_redis.lrange(queue.key, 0, -1)] == [job.job_id]
    assert store.load(job.job_id).takeovers == 1


def test_a_handed_over_job_is_run_again_without_spending_a_takeover(fake_redis: Redis) -> None:
    settings = Settings()
    store = JobStore(fake_redis)
    job = make_job(store)
    store.set_fields(job.job_id, created_at=time.time() - 60, handed_over=1, interrupted="the worker was stopped")
    assert Reconciler(fake_redis, settings).run_once() == [job.job_id]
    record = store.load(job.job_id)
    assert (record.takeovers, record.handed_over, record.interrupted) == (0, False, "")


def test_a_job_rq_holds_or_a_runner_leases_is_left_alone(fake_redis: Redis) -> None:
    settings = Settings()
    store = JobStore(fake_redis)
    leased, deferred = make_job(store, 100), make_job(store, 101)
    for job in (leased, deferred):
        store.set_fields(job.job_id, created_at=time.time() - 60)
    fake_redis.set(keys.lease(leased.job_id), "a runner")
    queue = Queue(keys.MIGRATION_QUEUE, connection=fake_redis)
    fake_redis.zadd(queue.deferred_job_registry.key, {deferred.job_id: time.time()})
    assert Reconciler(fake_redis, settings).run_once() == []
    assert all(r.takeovers == 0 for r in store.load_many([leased.job_id, deferred.job_id]))


def test_a_leftover_in_the_active_set_is_dropped_and_a_live_job_never(fake_redis: Redis) -> None:
    store = JobStore(fake_redis)
    job = make_job(store)
    fake_redis.sadd(keys.ACTIVE_JOBS, "migrate-gone-1")
    assert not store.forget_ended(job.job_id)
    assert store.forget_ended("migrate-gone-1")
    assert store.active_jobs() == {job.job_id}


def test_a_record_is_false_only_when_the_job_is_not_stored() -> None:
    assert not JobRecord("x") and JobRecord("x", {"state": "queued"})
