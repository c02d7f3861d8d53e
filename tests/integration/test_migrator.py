"""The migrator with real worker processes, a real Redis and the simulator: limits, a worker killed
mid-migration, and the failure paths. No job is ever lost or doubled."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from redis import Redis

from pvebalance.demo import stop_processes
from pvebalance.services.collector.collector import Collector
from pvebalance.services.planner.planner import Planner
from pvebalance.shared.config import Settings, load_settings
from pvebalance.shared.jobs import JobState
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import Plan
from pvebalance.shared.proxmox import ProxmoxClient
from pvebalance.simulator.server import Simulator
from tests.helpers import SimFactory, kill_tree, start_workers, write_config

pytestmark = pytest.mark.integration


def wait_until(predicate, timeout: float = 120, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def plan_and_enqueue(sim: Simulator, redis_url: str, tmp_path: Path, **sections: dict) -> tuple[Plan, Settings, Path]:  # type: ignore[type-arg]
    config = write_config(tmp_path / "pvebalance.yaml", sim, redis_url, **sections)
    settings = load_settings(config)
    planner = Planner(Redis.from_url(redis_url), settings)
    plan = planner.handle(Collector(ProxmoxClient(settings.proxmox_api)).snapshot())
    assert plan is not None and plan.migrations
    return plan, settings, config


def all_ended(store: JobStore, plan: Plan) -> bool:
    states = [store.state(f"migrate-{plan.plan_id}-{m.vmid}") for m in plan.migrations]
    return all(s is not None and s.terminal for s in states)


def test_eight_workers_drain_forty_guests_within_the_limits(start_simulator: SimFactory, real_redis: Redis,
                                                            redis_url: str, tmp_path: Path) -> None:
    sim = start_simulator("all-on-one", time_scale=0.02)
    plan, _, config = plan_and_enqueue(
        sim, redis_url, tmp_path,
        proxmox_cluster={"maintenance_nodes": ["pve1"]},
        migrator={"max_parallel_cluster": 2, "max_parallel_per_source": 1, "max_parallel_per_target": 1},
    )
    assert len([m for m in plan.migrations if m.reason.value == "maintenance"]) == 40
    procs = start_workers(config, 8, burst=False, log_dir=tmp_path)
    store = JobStore(real_redis)
    try:
        wait_until(lambda: all_ended(store, plan), 240, "every job to end")
    finally:
        stop_processes(procs)
    stats = sim.cluster.stats
    assert stats.max_concurrent <= 2
    assert max(stats.max_per_source.values()) <= 1
    assert max(stats.max_per_target.values()) <= 1
    assert all(store.state(f"migrate-{plan.plan_id}-{m.vmid}") is JobState.SUCCEEDED for m in plan.migrations)
    assert all(g.node != "pve1" for g in sim.cluster.guests.values()), "pve1 is empty"
    assert all(n == 1 for n in stats.migrate_posts.values())
    assert store.active_jobs() == set()


def test_worker_killed_mid_migration_is_resumed_without_a_second_post(
        start_simulator: SimFactory, real_redis: Redis, redis_url: str, tmp_path: Path) -> None:
    sim = start_simulator("all-on-one", time_scale=0.5)
    plan, _, config = plan_and_enqueue(sim, redis_url, tmp_path, balancing={"max_migrations": 1},
                                       migrator={"slot_ttl": 2})
    move = plan.migrations[0]
    job_id = f"migrate-{plan.plan_id}-{move.vmid}"
    store = JobStore(real_redis)
    first = subprocess.Popen([sys.executable, "-m", "pvebalance", "migrator",
                              "-c", str(config)], start_new_session=True,
                             stdout=(tmp_path / "first.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: store.load(job_id).upid is not None, 60, "the migration to start")
        assert sim.cluster.guests[move.vmid].config.get("lock") == "migrate", "killed in the middle"
        kill_tree(first)
    finally:
        if first.poll() is None:
            kill_tree(first)
    assert store.state(job_id) is JobState.RUNNING
    second = start_workers(config, 1, burst=False, log_dir=tmp_path)
    try:
        wait_until(lambda: store.state(job_id) is JobState.SUCCEEDED, 120, "the resumed job to succeed")
    finally:
        stop_processes(second)
    assert sim.cluster.stats.migrate_posts[move.vmid] == 1
    assert sim.cluster.guests[move.vmid].node == move.target
    assert store.active_jobs() == set()


def test_failures_end_in_the_right_state_with_the_right_reason(start_simulator: SimFactory, real_redis: Redis,
                                                               redis_url: str, tmp_path: Path) -> None:
    sim = start_simulator("all-on-one", time_scale=0.02)
    plan, _, config = plan_and_enqueue(sim, redis_url, tmp_path, balancing={"max_migrations": 4})
    failing, flaky, locked, moved = (m.vmid for m in plan.migrations[:4])
    sim.faults.add({"kind": "task_error", "vmid": failing, "message": "migration aborted"})
    sim.faults.add({"kind": "http", "method": "POST", "path": f"/qemu/{flaky}/migrate$", "status": 500,
                    "message": "got timeout", "count": 2})
    sim.cluster.guests[locked].config["lock"] = "backup"
    threading.Timer(1.5, lambda: sim.cluster.guests[locked].config.pop("lock", None)).start()
    by_hand = next(n for n in ("pve2", "pve3", "pve4") if n != plan.migrations[3].target)
    sim.cluster.guests[moved].entry["node"] = by_hand
    procs = start_workers(config, 2, burst=False, log_dir=tmp_path)
    store = JobStore(real_redis)
    try:
        wait_until(lambda: all_ended(store, plan), 120, "every job to end")
    finally:
        stop_processes(procs)

    def ended(vmid: int) -> tuple[JobState | None, str]:
        record = store.load(f"migrate-{plan.plan_id}-{vmid}").fields
        return JobState(record["state"]), record.get("message", "")

    assert ended(failing) == (JobState.FAILED, "migration aborted")
    assert ended(flaky)[0] is JobState.SUCCEEDED and sim.cluster.stats.migrate_posts[flaky] == 1
    assert ended(locked)[0] is JobState.SUCCEEDED
    state, reason = ended(moved)
    assert state is JobState.SKIPPED and f"moved to {by_hand}" in reason
    assert sim.cluster.stats.migrate_posts[moved] == 0
    assert store.active_jobs() == set()


def test_worker_killed_holding_its_slots_before_the_post_is_taken_over_and_finishes(
        start_simulator: SimFactory, real_redis: Redis, redis_url: str, tmp_path: Path) -> None:
    """It was left 'queued' for good, with no lease and in no queue, which stalled the planner."""
    sim = start_simulator("all-on-one", time_scale=0.05)
    plan, _, config = plan_and_enqueue(sim, redis_url, tmp_path, balancing={"max_migrations": 1})
    move = plan.migrations[0]
    job_id = f"migrate-{plan.plan_id}-{move.vmid}"
    store = JobStore(real_redis)
    sim.cluster.guests[move.vmid].config["lock"] = "backup"  # the run waits in pre-flight, slots taken
    first = subprocess.Popen([sys.executable, "-m", "pvebalance", "migrator", "-c", str(config)],
                             start_new_session=True, stdout=(tmp_path / "first.log").open("wb"),
                             stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: real_redis.zscore("pvebalance:slots:cluster", job_id) is not None, 60,
                   "the run to take its slots")
        kill_tree(first)
    finally:
        if first.poll() is None:
            kill_tree(first)
    assert store.state(job_id) is JobState.QUEUED and sim.cluster.stats.migrate_posts[move.vmid] == 0
    sim.cluster.guests[move.vmid].config.pop("lock")
    second = start_workers(config, 1, burst=False, log_dir=tmp_path)
    try:
        wait_until(lambda: store.state(job_id) is JobState.SUCCEEDED, 150, "the job to be taken over and succeed")
    finally:
        stop_processes(second)
    assert sim.cluster.stats.migrate_posts[move.vmid] == 1
    assert store.active_jobs() == set()
    assert [e.state for _, e in store.events() if e.state.terminal] == [JobState.SUCCEEDED]
