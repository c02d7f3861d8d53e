"""The collector takes a snapshot when something happened (services/collector/triggers.py), not only every
collector.interval: once the figures have settled after a plan's last migration ended (the first snapshot the
planner may plan on), and at once when an operator request arrives."""

from __future__ import annotations

import threading
import time

from redis import Redis

from pvebalance.services.collector.collector import Collector
from pvebalance.services.collector.triggers import INTERVAL, MIGRATIONS_ENDED, OPERATOR_REQUEST, Triggers
from pvebalance.services.planner.planner import Planner
from pvebalance.shared import keys, snapshots
from pvebalance.shared.config import Settings
from pvebalance.shared.jobs import JobState, MigrationJob
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import ClusterSnapshot, GuestType
from pvebalance.shared.proxmox import ProxmoxClient
from pvebalance.shared.requests import OperatorRequest, RequestAction, RequestStore
from tests.helpers import SimFactory, api_settings

SETTLE = 0.3


def job(vmid: int) -> MigrationJob:
    return MigrationJob(job_id=f"plan-1:{vmid}", plan_id="plan-1", vmid=vmid, name=f"vm{vmid}",
                        guest_type=GuestType.QEMU, source="pve1", target="pve2", online=True)


def running(store: JobStore, *vmids: int) -> list[MigrationJob]:
    jobs = [job(v) for v in vmids]
    for j in jobs:
        store.create(j)
        store.transition(j, JobState.RUNNING)
    return jobs


def test_a_job_ending_while_others_run_wants_no_snapshot(fake_redis: Redis) -> None:
    store = JobStore(fake_redis)
    a, _ = running(store, 101, 102)
    triggers = Triggers(fake_redis, SETTLE)
    store.transition(a, JobState.SUCCEEDED)
    assert triggers.wait(0.2, threading.Event()) == INTERVAL


def test_the_last_migration_ending_brings_the_first_snapshot_the_planner_may_plan_on(fake_redis: Redis) -> None:
    store = JobStore(fake_redis)
    a, b = running(store, 101, 102)
    triggers = Triggers(fake_redis, SETTLE)
    store.transition(a, JobState.SUCCEEDED)
    store.transition(b, JobState.FAILED, "migration aborted")  # a failed move ends the plan too
    assert triggers.wait(30, threading.Event()) == MIGRATIONS_ENDED
    snap = ClusterSnapshot(nodes=[], guests=[])  # stamped now, as the collector stamps its snapshot
    planner = Planner(fake_redis, Settings(planner={"settle_seconds": SETTLE}))
    assert planner.unsettled(snap) is None, "the planner takes it"
    assert snap.taken_at.timestamp() - store.last_change_at() < SETTLE + 1.0  # well before an interval


def test_a_job_ending_later_moves_the_snapshot_on(fake_redis: Redis) -> None:
    """The reconciler may end a lost job after the others: the snapshot waits for its end to settle."""
    store = JobStore(fake_redis)
    [a] = running(store, 101)
    now = [1000.0]
    triggers = Triggers(fake_redis, SETTLE, clock=lambda: now[0])
    store.transition(a, JobState.SUCCEEDED)
    triggers.read()
    first = triggers.settled_at
    assert first is not None and first >= store.last_change_at() + SETTLE  # type: ignore[operator]
    time.sleep(0.01)
    store.transition(job(102), JobState.FAILED, "lost")  # an event of a job that never ran
    triggers.read()
    assert triggers.settled_at is not None and triggers.settled_at > first


def test_an_operator_request_brings_a_snapshot_at_once(fake_redis: Redis) -> None:
    triggers = Triggers(fake_redis, SETTLE)
    stop = threading.Event()
    threading.Timer(0.1, lambda: RequestStore(fake_redis).submit(
        OperatorRequest(action=RequestAction.DRAIN, node="pve2", who="test"))).start()
    started = time.monotonic()
    assert triggers.wait(30, stop) == OPERATOR_REQUEST
    assert time.monotonic() - started < 5  # not the interval's 30 s


def test_the_collector_publishes_when_the_last_migration_ended(start_simulator: SimFactory, fake_redis: Redis) -> None:
    """The run loop, against the simulator: a snapshot at start, then none for the interval (60 s) unless a
    plan's last migration ends; then one, taken once the figures settled."""
    sim = start_simulator()
    collector = Collector(ProxmoxClient(api_settings(sim)), fake_redis)
    stop = threading.Event()
    thread = threading.Thread(target=collector.run, args=(60.0, stop, SETTLE), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not fake_redis.xlen(keys.SNAPSHOT_STREAM) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake_redis.xlen(keys.SNAPSHOT_STREAM) == 1
        store = JobStore(fake_redis)
        [a] = running(store, 118)
        store.transition(a, JobState.SUCCEEDED)
        while fake_redis.xlen(keys.SNAPSHOT_STREAM) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        [(_, fields)] = fake_redis.xrevrange(keys.SNAPSHOT_STREAM, count=1)
        snap = snapshots.from_entry(fields)
        assert snap is not None
        assert fake_redis.xlen(keys.SNAPSHOT_STREAM) == 2
        assert snap.taken_at.timestamp() - store.last_change_at() >= SETTLE  # type: ignore[operator]
    finally:
        stop.set()
        thread.join(5)
