"""Migrations in flight hold memory on both their nodes: the job store lists them, and the migrator's
pre-flight counts those coming onto its target (the engine's side: tests/unit/test_schedule.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis import Redis

from pvebalance.services.migrator.runner import MigrationRunner
from pvebalance.services.migrator.slots import Slots
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import GuestType, InFlightMigration, JobState, MigrationJob
from pvebalance.shared.proxmox import ProxmoxClient
from tests.helpers import SimFactory, settings_for

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
    runner = MigrationRunner(ProxmoxClient(settings.proxmox_api), store, Slots(fake_redis, settings.migrator), settings)
    make_job(store, 121, mem_bytes=vm121, posted=posted)
    job = make_job(store, 118, mem_bytes=vm118)
    assert runner.run(job) is outcome
    if outcome is JobState.SKIPPED:
        message = store.load(job.job_id)["message"]
        assert message.startswith("target node pve2 no longer has room for vm118: pve2 would use")
        assert sim.cluster.stats.migrate_posts[118] == 0
    else:
        assert sim.cluster.guests[118].node == "pve2"
