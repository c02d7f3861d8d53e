"""The pipeline for real: a redis-server, rq workers in their own processes, proxmoxer over HTTPS
against the simulator."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.registry import FailedJobRegistry

from pvebalance.engine import Policy, plan_balance
from pvebalance.services.collector.collector import Collector
from pvebalance.services.planner.planner import Planner
from pvebalance.shared import keys
from pvebalance.shared.jobs import JobState
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import Plan
from pvebalance.shared.proxmox import ProxmoxClient
from tests.helpers import SimFactory, api_settings, start_workers, write_config

pytestmark = pytest.mark.integration


def one_move_plan(sim, redis_url: str, tmp_path: Path) -> tuple[Plan, Planner, Path]:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path / "pvebalance.yaml", sim, redis_url)
    from pvebalance.shared.config import load_settings

    settings = load_settings(config)
    snap = Collector(ProxmoxClient(settings.proxmox_api)).snapshot()
    plan = plan_balance(snap, Policy(max_migrations=1))
    planner = Planner(Redis.from_url(redis_url), settings)
    planner.save(plan)
    return plan, planner, config


def run_workers(config: Path, count: int, tmp_path: Path) -> None:
    procs = start_workers(config, count, burst=True, log_dir=tmp_path)
    for p in procs:
        assert p.wait(120) == 0, (tmp_path / "worker-0.log").read_text()[-3000:]


def test_migration_job_goes_from_queued_to_succeeded(start_simulator: SimFactory, real_redis: Redis,
                                                     redis_url: str, tmp_path: Path) -> None:
    sim = start_simulator(time_scale=0.05)
    plan, planner, config = one_move_plan(sim, redis_url, tmp_path)
    move = plan.migrations[0]
    [job_id] = planner.enqueue(plan)
    store = JobStore(real_redis)
    assert store.state(job_id) is JobState.QUEUED
    assert Queue(keys.MIGRATION_QUEUE, connection=real_redis).count == 1

    run_workers(config, 1, tmp_path)

    assert store.state(job_id) is JobState.SUCCEEDED
    states = [e.state for _, e in store.events() if e.job_id == job_id]
    assert states == [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]
    client = ProxmoxClient(api_settings(sim))
    entry = next(r for r in client.get("/cluster/resources", type="vm") if r["vmid"] == move.vmid)
    assert entry["node"] == move.target
    assert sim.cluster.stats.migrate_posts[move.vmid] == 1
    assert store.active_jobs() == set()


def test_failed_migration_ends_failed_with_proxmox_error_text(start_simulator: SimFactory, real_redis: Redis,
                                                             redis_url: str, tmp_path: Path) -> None:
    sim = start_simulator(time_scale=0.05)
    plan, planner, config = one_move_plan(sim, redis_url, tmp_path)
    move = plan.migrations[0]
    sim.faults.add({"kind": "task_error", "vmid": move.vmid,
                    "message": "migration problems: can't migrate VM - check log"})
    [job_id] = planner.enqueue(plan)

    run_workers(config, 1, tmp_path)

    store = JobStore(real_redis)
    assert store.state(job_id) is JobState.FAILED
    assert store.load(job_id).message == "migration problems: can't migrate VM - check log"
    last = [e for _, e in store.events() if e.job_id == job_id][-1]
    assert last.state is JobState.FAILED and last.message.startswith("migration problems")
    assert job_id in FailedJobRegistry(keys.MIGRATION_QUEUE, connection=real_redis).get_job_ids()
    assert sim.cluster.guests[move.vmid].node == move.source
    assert store.active_jobs() == set()
    assert real_redis.get(keys.guest_job(move.vmid)) is None, "the guest is free for a later plan"


def test_demo_balances_all_on_one_through_the_whole_pipeline(real_redis: Redis, redis_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pvebalance", "demo", "--redis-url", redis_url, "--timeout", "240"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "not balanced" not in out.stdout
    assert "balanced" in [line.strip() for line in out.stdout.splitlines()]
    # 45.7 pp as recorded; the simulated hosts' own memory use swings a little (pvebalance/simulator/realism.py)
    spread = re.search(r"spread (\d+\.\d) ->", out.stdout)
    assert spread and abs(float(spread.group(1)) - 45.7) <= 0.3, out.stdout[-500:]
