"""Jobs waiting for slots take them in queue order (the plan's creation time, then the action's index), as
the plan's expected time assumes: a freed slot goes to the first waiting job that can take all its
scopes; a later job whose scopes have room starts while an earlier one waits on a full scope; a dead
waiter stops holding others back after its place lapses; and the limits hold whoever asks at once.
fakeredis (its Lua), a fake clock where expiry matters."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import pytest
from redis import Redis

from pvebalance.engine import Policy, plan_balance
from pvebalance.services.migrator.slots import WAITER_TTL, SlotCancelled, SlotRequest, Slots
from pvebalance.shared import keys
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.config import MigratorSettings, load_settings
from pvebalance.shared.jobs import DiskMoveJob, JobState, MigrationJob, job_ids, jobs_of
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import GuestType
from tests.helpers import REPO

PLAN_MADE = 1_765_000_000.25  # a plan's creation time (epoch seconds)


def slots(redis: Redis, cluster: int = 2, source: int = 1, target: int = 1, **kw: object) -> Slots:
    settings = MigratorSettings(max_parallel_cluster=cluster, max_parallel_per_source=source,
                                max_parallel_per_target=target, slot_ttl=30, slot_wait_timeout=20)
    return Slots(redis, settings, **kw)  # type: ignore[arg-type]


def move(name: str, source: str, target: str, index: int, made: float = PLAN_MADE) -> SlotRequest:
    return SlotRequest.between(name, source, target, place=(made, index))


def waiting(redis: Redis) -> set[str]:
    return {k.decode() for k in redis.hkeys(keys.SLOTS_WAITING)}


# --- a freed slot goes to the first in line ----------------------------------------------------------------

def test_a_freed_slot_goes_to_the_first_waiting_job_in_queue_order(fake_redis: Redis) -> None:
    s = slots(fake_redis, cluster=1, source=3, target=3)
    running = move("running", "pve1", "pve2", 0)
    assert s.try_acquire(running)
    # they come to wait in another order than the queue's
    arrivals = [move("third", "pve1", "pve3", 3), move("first", "pve1", "pve4", 1), move("second", "pve1", "pve5", 2)]
    for req in arrivals:
        assert not s.try_acquire(req, keep_place=True)
    granted, holder = [], running
    while len(granted) < 3:
        s.release(holder)
        takers = [req for req in arrivals if req.holder not in granted and s.try_acquire(req, keep_place=True)]
        assert len(takers) == 1, "one slot, one taker"
        holder = takers[0]
        granted.append(holder.holder)
    assert granted == ["first", "second", "third"]
    assert waiting(fake_redis) == set(), "a job that took its slots is out of the line"


def test_a_job_of_an_older_plan_goes_before_every_job_of_a_newer_one(fake_redis: Redis) -> None:
    s = slots(fake_redis, cluster=1, source=3, target=3)
    assert s.try_acquire(move("running", "pve1", "pve2", 0))
    newer, older = move("newer", "pve1", "pve3", 0, PLAN_MADE + 60), move("older", "pve1", "pve4", 17)
    for req in (newer, older):
        assert not s.try_acquire(req, keep_place=True)
    s.release(move("running", "pve1", "pve2", 0))
    assert not s.try_acquire(newer, keep_place=True)
    assert s.try_acquire(older, keep_place=True)


def test_waiting_jobs_in_threads_take_a_freed_slot_in_queue_order(fake_redis: Redis) -> None:
    """Through `wait` itself: the end of the running job wakes one waiter (keys.SLOTS_WAKE), which wakes the
    others; each taker gives its slot back in turn (`release`, which wakes every waiter)."""
    s, store = slots(fake_redis, cluster=1, source=4, target=4), JobStore(fake_redis)
    running = MigrationJob(job_id="migrate-plan-q-100", plan_id="plan-q", vmid=100, name="vm100",
                           guest_type=GuestType.QEMU, source="pve1", target="pve2", online=True)
    assert store.create(running)
    assert s.try_acquire(SlotRequest.of(running)) and s.commit(SlotRequest.of(running), running) == 1
    order: list[str] = []
    lock = threading.Lock()

    def wait_then_give_back(req: SlotRequest) -> None:
        s.wait(req)
        with lock:
            order.append(req.holder)
        s.release(req)

    reqs = [move(f"job-{i}", "pve1", f"pve{3 + i}", i) for i in (3, 1, 2, 0)]  # they start in another order
    threads = [threading.Thread(target=wait_then_give_back, args=(r,)) for r in reqs]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while waiting(fake_redis) != {r.holder for r in reqs}:
        assert time.monotonic() < deadline, "every waiter takes its place in line"
        time.sleep(0.01)
    store.transition(running, JobState.SUCCEEDED, "landed")
    for t in threads:
        t.join(20)
    assert order == ["job-0", "job-1", "job-2", "job-3"]


# --- no head-of-line blocking: who holds back whom -------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    cluster: int
    target: int
    ahead: tuple[str, str]  # the waiting job ahead in the queue: source, target
    later: tuple[str, str]  # the job asking now
    started: bool  # whether the later job starts

CASES = [
    # pve2 is busy (one migration into it at most): the job ahead cannot start, the later one can
    Case("ahead-blocked-on-a-full-target", cluster=3, target=1, ahead=("pve1", "pve2"), later=("pve3", "pve4"),
         started=True),
    # the job ahead could start and takes the last cluster slot first
    Case("ahead-could-start-on-the-last-cluster-slot", cluster=2, target=1, ahead=("pve1", "pve5"),
         later=("pve3", "pve4"), started=False),
    # room for both: the later one does not wait for the one ahead to take its slot
    Case("room-for-both", cluster=3, target=1, ahead=("pve1", "pve5"), later=("pve3", "pve4"), started=True),
    # the job ahead could start into the target the later one needs
    Case("ahead-could-start-on-the-same-target", cluster=3, target=1, ahead=("pve1", "pve5"),
         later=("pve3", "pve5"), started=False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_later_job_starts_unless_a_job_ahead_of_it_could_take_the_same_room_now(fake_redis: Redis,
                                                                                   case: Case) -> None:
    s = slots(fake_redis, cluster=case.cluster, source=1, target=case.target)
    assert s.try_acquire(move("running", "pve8", "pve2", 0)), "one migration runs, into pve2"
    blocker = move("blocker", case.ahead[0], "pve9", 0)
    assert s.try_acquire(blocker), "another runs out of the source of the job ahead"
    ahead = move("ahead", *case.ahead, 1)
    assert not s.try_acquire(ahead, keep_place=True), "the job ahead waits in line"
    s.release(blocker)  # its source is free now; the job ahead has not looked again yet
    assert s.try_acquire(move("later", *case.later, 2)) is case.started
    assert waiting(fake_redis) == {"ahead"}
    assert fake_redis.zscore(keys.SLOTS_CLUSTER, "ahead") is None, "a place in line holds no slot"


def test_a_cancelled_waiter_stops_holding_back_the_jobs_behind_it_at_once(fake_redis: Redis) -> None:
    s, store = slots(fake_redis, cluster=1, source=3, target=3), JobStore(fake_redis)
    ahead = MigrationJob(job_id="migrate-plan-c-101", plan_id="plan-c", vmid=101, name="vm101",
                         guest_type=GuestType.QEMU, source="pve1", target="pve3", online=True, place=(PLAN_MADE, 0))
    assert store.create(ahead)
    assert s.try_acquire(move("running", "pve1", "pve2", 0, PLAN_MADE - 1))
    assert not s.try_acquire(SlotRequest.of(ahead), keep_place=True)
    s.release(move("running", "pve1", "pve2", 0, PLAN_MADE - 1))
    later = move("later", "pve1", "pve4", 1)
    assert not s.try_acquire(later), "the job ahead could take the slot"
    assert store.cancel(ahead.job_id) is JobState.CANCELLED
    assert s.try_acquire(later)


# --- a dead waiter, a waiter that gives up ----------------------------------------------------------------

def test_a_dead_waiter_stops_holding_back_the_jobs_behind_it_once_its_place_lapses(fake_redis: Redis) -> None:
    now = [PLAN_MADE + 100]
    s = slots(fake_redis, cluster=1, source=3, target=3, clock=lambda: now[0])
    assert s.try_acquire(move("running", "pve1", "pve2", 0))
    assert not s.try_acquire(move("dead", "pve1", "pve3", 1), keep_place=True)  # then its worker dies
    s.release(move("running", "pve1", "pve2", 0))
    later = move("later", "pve1", "pve4", 2)
    now[0] += WAITER_TTL - 1
    assert not s.try_acquire(later, keep_place=True), "within its place's life the dead job is first"
    now[0] += 2
    assert s.try_acquire(later, keep_place=True)
    assert waiting(fake_redis) == set()


def test_a_waiter_that_stops_waiting_leaves_the_line(fake_redis: Redis) -> None:
    s = slots(fake_redis, cluster=1, source=3, target=3)
    assert s.try_acquire(move("running", "pve1", "pve2", 0))
    with pytest.raises(SlotCancelled):
        s.wait(move("cancelled", "pve1", "pve3", 1), cancelled=lambda: True)
    assert waiting(fake_redis) == set()
    s.release(move("running", "pve1", "pve2", 0))
    assert s.try_acquire(move("later", "pve1", "pve4", 2))


# --- waking: every waiter, not one arbitrary one ----------------------------------------------------------

def test_a_release_wakes_every_waiting_job_and_a_woken_waiter_passes_a_jobs_end_on(fake_redis: Redis) -> None:
    s = slots(fake_redis, cluster=1, source=3, target=3)
    assert s.try_acquire(move("running", "pve1", "pve2", 0))
    names = ["a", "b", "c"]
    for i, name in enumerate(names):
        assert not s.try_acquire(move(name, "pve1", f"pve{3 + i}", 1 + i), keep_place=True)
    s.release(move("running", "pve1", "pve2", 0))
    assert all(fake_redis.llen(keys.slot_waiter(n)) == 1 for n in names)
    for n in names:
        fake_redis.delete(keys.slot_waiter(n))
    # a job's end pushes the shared list once; the waiter that pops it wakes the others
    fake_redis.lpush(keys.SLOTS_WAKE, "1")
    assert not s.try_acquire(move("c", "pve1", "pve5", 3), keep_place=True, relay=True)
    assert fake_redis.llen(keys.SLOTS_WAKE) == 0
    assert [fake_redis.llen(keys.slot_waiter(n)) for n in names] == [1, 1, 0]


# --- the limits, whoever asks at once ---------------------------------------------------------------------

def test_the_limits_hold_under_concurrent_waiters(fake_redis: Redis) -> None:
    limits = {"cluster": 3, "source": 2, "target": 1}
    s = slots(fake_redis, cluster=limits["cluster"], source=limits["source"], target=limits["target"])
    routes = [(f"pve{1 + i % 3}", f"pve{4 + i % 4}") for i in range(16)]
    holding: Counter[str] = Counter()
    most: Counter[str] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(i: int, source: str, target: str) -> None:
        req = move(f"job-{i}", source, target, i)
        try:
            s.wait(req)
            with lock:
                for scope in req.scopes:
                    holding[scope] += 1
                    most[scope] = max(most[scope], holding[scope])
            time.sleep(0.01)
            with lock:
                for scope in req.scopes:
                    holding[scope] -= 1
            s.release(req)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, *r)) for i, r in enumerate(routes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert most[keys.SLOTS_CLUSTER] <= limits["cluster"]
    assert all(n <= limits["source"] for scope, n in most.items() if scope.startswith(keys.slots_source("")))
    assert all(n <= limits["target"] for scope, n in most.items() if scope.startswith(keys.slots_target("")))
    assert most[keys.SLOTS_CLUSTER] > 1, "they did run side by side"
    assert fake_redis.zcard(keys.SLOTS_CLUSTER) == 0 and waiting(fake_redis) == set()


# --- the place: from the plan, for every kind of job ------------------------------------------------------

def test_each_job_carries_its_plans_creation_time_and_its_actions_index() -> None:
    snapshot = snapshot_from_api(load_dump(REPO / "pvebalance" / "scenarios" / "all-on-one.json")["api"])
    plan = plan_balance(snapshot, Policy())
    jobs = jobs_of(plan, load_settings())
    assert [j.job_id for j in jobs] == job_ids(plan)
    assert [j.place for j in jobs] == [(plan.created_at.timestamp(), i) for i in range(len(jobs))]
    assert [SlotRequest.of(j).place for j in jobs] == [j.place for j in jobs]


def test_disk_moves_take_a_freed_storage_slot_in_queue_order(fake_redis: Redis) -> None:
    s = Slots(fake_redis, MigratorSettings(max_parallel_cluster=4), per_storage=1)

    def disk_move(vmid: int, source: str, target: str, index: int) -> SlotRequest:
        return SlotRequest.of(DiskMoveJob(job_id=DiskMoveJob.id_for("plan-d", vmid, "scsi0"), plan_id="plan-d",
                                          vmid=vmid, name=f"vm{vmid}", guest_type=GuestType.QEMU, source=source,
                                          target=target, node="pve1", disk="scsi0", place=(PLAN_MADE, index)))

    running = disk_move(100, "ceph", "nfs", 0)
    assert s.try_acquire(running)
    second, first = disk_move(102, "ceph", "lvm", 2), disk_move(101, "ceph", "zfs", 1)
    for req in (second, first):
        assert not s.try_acquire(req, keep_place=True), "ceph takes part in one move at a time"
    other_storages = disk_move(103, "zfs2", "lvm2", 3)
    assert s.try_acquire(other_storages), "a move between other storages starts beside them"
    s.release(running)
    assert not s.try_acquire(second, keep_place=True)
    assert s.try_acquire(first, keep_place=True)
