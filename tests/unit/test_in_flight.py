"""Migrations in flight hold memory on both their nodes: the job store lists them, and the migrator's
pre-flight counts those coming onto its target (the engine's side: tests/unit/test_schedule.py)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest
from redis import Redis

from pvebalance.engine import Policy
from pvebalance.engine.placement import PlacementRequest, place
from pvebalance.services.collector.collector import Collector
from pvebalance.services.migrator.runner import JobRunner
from pvebalance.services.migrator.slots import Slots
from pvebalance.services.planner.planner import Planner
from pvebalance.shared import keys
from pvebalance.shared.config import Settings
from pvebalance.shared.jobs import JobState, MigrationJob
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import ClusterSnapshot, GuestState, GuestType, InFlightMigration, NodeState, utcnow
from pvebalance.shared.policy_now import snapshot_now
from pvebalance.shared.proxmox import ProxmoxClient
from tests.helpers import SimFactory, api_settings, settings_for

GIB = 2**30


def make_job(store: JobStore, vmid: int, source: str = "pve1", target: str = "pve2", mem_bytes: int = 0,
             posted: bool = False) -> MigrationJob:
    job = MigrationJob(job_id=MigrationJob.id_for("plan-t", vmid), plan_id="plan-t", vmid=vmid, name=f"vm{vmid}",
                       guest_type=GuestType.QEMU, source=source, target=target, online=True, mem_bytes=mem_bytes)
    store.create(job)
    if posted:
        store.set_fields(job.job_id, posted_at=time.time())
    return job


def test_the_job_store_lists_the_migrations_posted_and_not_ended(fake_redis: Redis) -> None:
    store = JobStore(fake_redis)
    running = make_job(store, 101, mem_bytes=4 * GIB, posted=True)
    make_job(store, 102, posted=False)  # queued: holds nothing yet
    ended = make_job(store, 103, posted=True)
    store.transition(ended, JobState.SUCCEEDED, "landed")
    mine = make_job(store, 104, posted=True)
    assert store.in_flight_migrations(but=mine.job_id) == [
        InFlightMigration(job_id=running.job_id, vmid=101, source="pve1", target="pve2", mem_bytes=4 * GIB)]


@pytest.mark.parametrize(("posted", "outcome"), [(True, JobState.SKIPPED), (False, JobState.SUCCEEDED)],
                         ids=["another migration onto the target in flight", "another one only queued"])
def test_pre_flight_counts_the_memory_a_migration_in_flight_holds_on_the_target(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path, posted: bool, outcome: JobState) -> None:
    """pve2 has room for vm118, not for vm118 and vm121 (being migrated onto it, not listed there yet)."""
    sim = start_simulator()
    node = sim.cluster.nodes["pve2"].entry
    vm118, vm121 = sim.cluster.guests[118].entry["mem"], sim.cluster.guests[121].entry["mem"]
    usable = (node["mem"] + vm118 + vm121 / 2) / 0.95  # max_node_usage 95 %
    settings = settings_for(sim, "redis://unused", tmp_path,
                            balancing={"node_resource_reserve": {"pve2": {"memory": (node["maxmem"] - usable) / GIB}}})
    store = JobStore(fake_redis)
    runner = JobRunner(ProxmoxClient(settings.proxmox_api), store, Slots(fake_redis, settings.migrator), settings)
    make_job(store, 121, mem_bytes=vm121, posted=posted)
    job = make_job(store, 118, mem_bytes=vm118)
    assert runner.run(job) is outcome
    if outcome is JobState.SKIPPED:
        message = store.load(job.job_id).message
        assert message.startswith("target node pve2 no longer has room for vm118: pve2 would use")
        assert sim.cluster.stats.migrate_posts[118] == 0
    else:
        assert sim.cluster.guests[118].node == "pve2"


def busy_cluster() -> ClusterSnapshot:
    """pve1 to drain (vm101, 20 GiB); pve2 looks emptier than pve3, but vm102 (30 GiB, listed on pve3 and
    locked, as PVE shows a guest being migrated) is on its way from pve3 to pve2."""
    nodes = [NodeState(name=n, maxmem=100 * GIB, mem=u * GIB, maxcpu=16) for n, u in
             (("pve1", 30), ("pve2", 60), ("pve3", 70))]
    guests = [GuestState(vmid=101, name="vm101", type=GuestType.QEMU, node="pve1", mem=20 * GIB, maxmem=20 * GIB),
              GuestState(vmid=102, name="vm102", type=GuestType.QEMU, node="pve3", mem=30 * GIB, maxmem=30 * GIB,
                         lock="migrate")]
    return ClusterSnapshot(nodes=nodes, guests=guests)


@pytest.mark.parametrize(("posted", "target"), [(True, "pve3"), (False, "pve2")],
                         ids=["vm102's migration in flight", "vm102's job only queued"])
def test_an_operators_drain_is_planned_around_the_memory_migrations_in_flight_hold(
        fake_redis: Redis, posted: bool, target: str) -> None:
    """The planner reads the latest snapshot for an operator's request with its migrations in flight."""
    planner = Planner(fake_redis, Settings())
    fake_redis.set(keys.SNAPSHOT_LATEST, busy_cluster().model_dump_json())
    make_job(planner.jobs, 102, source="pve3", target="pve2", mem_bytes=30 * GIB, posted=posted)
    snapshot = snapshot_now(fake_redis)
    assert snapshot is not None and len(snapshot.in_flight) == posted
    plan = planner.drain_plan(snapshot, {"pve1"}, include_stopped=set())
    assert [(m.vmid, m.target) for m in plan.migrations] == [(101, target)]


def test_placement_counts_a_migration_in_flight_on_its_target() -> None:
    flight = InFlightMigration(job_id="j", vmid=102, source="pve3", target="pve2", mem_bytes=30 * GIB)
    busy = busy_cluster().model_copy(update={"in_flight": [flight]})
    policy = Policy(maintenance_nodes=frozenset({"pve1"}))
    assert place(busy_cluster(), policy, PlacementRequest(memory=20 * GIB)).best == "pve2"
    answer = place(busy, policy, PlacementRequest(memory=20 * GIB))
    assert answer.best == "pve3"
    assert answer.refused["pve2"] == "pve2 would use 110.0%, above max_node_usage 95%"


def test_the_planner_plans_only_on_a_snapshot_taken_after_the_last_migration_ended(fake_redis: Redis) -> None:
    """A snapshot read while vm102's migration ran shows it on its source; a plan on it could move it back,
    or put an anti-affinity partner beside it. The planner waits for the next one. (Here without the wait
    for the node figures to settle, which tests/unit/test_planner_settle.py looks at.)"""
    planner = Planner(fake_redis, Settings(planner={"settle_seconds": 0}))
    read_before = busy_cluster().model_copy(update={"taken_at": utcnow()})
    time.sleep(0.01)  # the event stream's times are in milliseconds
    job = make_job(planner.jobs, 102, source="pve3", target="pve2", posted=True)
    planner.jobs.transition(job, JobState.SUCCEEDED, "landed")
    assert planner.handle(read_before) is None
    time.sleep(0.01)
    assert planner.handle(busy_cluster().model_copy(update={"taken_at": utcnow()})) is not None


def test_a_snapshot_is_taken_when_the_collectors_reads_begin(start_simulator: SimFactory) -> None:
    sim = start_simulator(latency_ms=20)
    collector = Collector(ProxmoxClient(api_settings(sim)))
    calls: list[datetime] = []
    read = collector.client.get
    collector.client.get = lambda path, **params: calls.append(utcnow()) or read(path, **params)  # type: ignore[method-assign]
    snapshot = collector.snapshot()
    assert snapshot.taken_at <= min(calls)
    assert (max(calls) - snapshot.taken_at).total_seconds() >= 0.02, "the reads took a while"
