"""The fault suite, one run with a fixed seed: a rebalance of all-on-one and a drain of pve1 by the
real services (a collector, a planner, four migrator workers, each its own process) against the
simulator and a redis-server with its append-only file, while workers, work-horses, the planner,
the collector and Redis are killed, Redis is down for 60 s, and the API fails in every way the
simulator offers. Afterwards no migration is lost or doubled, no limit was exceeded, every service
lived. Each fault is printed with its time (shown on failure; `-s` shows it live); see
tests/faultsuite/ and `./dev.sh soak --seeds N` for more seeds.

The disk-move run is test_faults_disk.py (a file of its own: each long run on its own test worker)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from redis import Redis

from pvebalance.demo import stop_processes
from pvebalance.services.collector.collector import Collector
from pvebalance.services.migrator.runner import JobRunner
from pvebalance.services.migrator.slots import Slots
from pvebalance.services.planner.planner import Planner
from pvebalance.shared.config import load_settings
from pvebalance.shared.jobs import JobState, MigrationJob
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import GuestType
from pvebalance.shared.proxmox import ProxmoxClient
from tests.faultsuite import FIGURES, RunConfig, run_one
from tests.faultsuite.harness import children
from tests.helpers import SimFactory, start_workers, write_config

pytestmark = pytest.mark.integration

CI_SEED = 20240611


@pytest.mark.timeout(480)
def test_no_migration_lost_or_doubled_under_faults(tmp_path: Path) -> None:
    # ~24 faults (every kind once), the 60 s Redis outage early in the drain; the phases are capped
    # so that the whole test stays well under 8 minutes on two cores.
    cfg = RunConfig(seed=CI_SEED, faults=24, gap=(1.0, 3.5), outage=True, time_scale=0.15,
                    rebalance_timeout=150.0, fault_phase_max=240.0, settle_timeout=120.0)
    result = run_one(cfg, tmp_path, say=lambda line: print(line, flush=True))
    print(result.summary())
    details = "\n".join(result.problems[:40])
    assert result.jobs >= 35, f"too few migrations to mean anything: {result.summary()}"
    assert sum(result.faults.values()) >= 15, f"too few faults were injected: {result.summary()}"
    assert {f: result.figures[f] for f in FIGURES} == dict.fromkeys(FIGURES, 0), (
        f"{result.summary()}\n{details}\nlogs and state: {tmp_path}")


def test_a_lost_migrate_answer_is_not_matched_to_an_earlier_jobs_task(start_simulator: SimFactory, real_redis: Redis,
                                                                      redis_url: str, tmp_path: Path) -> None:
    """The fault suite's finding, on its own: job 1's task fails; job 2 (same guest, moments later)
    POSTs, Proxmox starts its task, but the answer comes after the client's timeout. Job 2 must
    follow its own task, not job 1's: else it ends failed with job 1's error while its migration
    still runs (its slots and the guest's claim freed under a running migration)."""
    sim = start_simulator("all-on-one", time_scale=1.5)  # a migration takes >= 3 s: longer than the timeout
    settings = load_settings(write_config(tmp_path / "pvebalance.yaml", sim, redis_url,
                                          proxmox_api={"timeout": 2}, migrator={"poll_interval": 0.1}))
    store = JobStore(real_redis)
    guest = sim.cluster.guests[100]

    def run(plan_id: str) -> tuple[JobState, dict[str, str]]:
        job = MigrationJob(job_id=MigrationJob.id_for(plan_id, 100), plan_id=plan_id, vmid=100, name="vm100",
                           guest_type=GuestType.QEMU, source="pve1", target="pve2", online=True,
                           mem_bytes=int(guest.entry["mem"]))
        store.create(job)
        runner = JobRunner(ProxmoxClient(settings.proxmox_api), store, Slots(real_redis, settings.migrator),
                                 settings)
        return runner.run(job), dict(store.load(job.job_id).fields)

    sim.faults.add({"kind": "task_error", "vmid": 100, "message": "migration aborted (job 1)"})
    first, first_record = run("plan-one")
    assert first is JobState.FAILED and guest.node == "pve1"
    sim.faults.add({"kind": "delay", "method": "POST", "path": "/migrate$", "seconds": 3, "when": "after",
                    "count": 1})
    second, record = run("plan-two")
    assert record.get("upid") != first_record["upid"], (
        f"job 2 ended {second.value} '{record.get('message')}' following job 1's task {first_record['upid']}")
    own = [r["upid"] for r in sim.cluster.stats.migrate_requests if r.get("upid")][-1]
    assert (second, record.get("upid")) == (JobState.SUCCEEDED, own)
    assert guest.node == "pve2"


def test_a_resumed_job_is_not_starved_by_workers_waiting_for_its_slots(start_simulator: SimFactory,
                                                                       real_redis: Redis, redis_url: str,
                                                                       tmp_path: Path) -> None:
    """The fault suite's finding, on its own: two workers, one migration slot. Job A is in flight;
    its work-horse is killed. Its worker takes the next job (which waits for A's slot), as does the
    other worker, so when A is queued again to be resumed, no worker is free: nothing moves until
    the waiting jobs give up (here after 30 s)."""
    sim = start_simulator("all-on-one", time_scale=1.0)  # a migration takes >= 2.8 s
    config = write_config(tmp_path / "pvebalance.yaml", sim, redis_url, balancing={"max_migrations": 3},
                          migrator={"max_parallel_cluster": 1, "max_parallel_per_source": 1,
                                    "max_parallel_per_target": 1, "slot_ttl": 5, "slot_wait_timeout": 30,
                                    "poll_interval": 0.1})
    settings = load_settings(config)
    plan = Planner(real_redis, settings).handle(Collector(ProxmoxClient(settings.proxmox_api)).snapshot())
    assert plan is not None and len(plan.migrations) == 3
    ids = [MigrationJob.id_for(plan.plan_id, m.vmid) for m in plan.migrations]
    store = JobStore(real_redis)
    workers = start_workers(config, 2, burst=False, log_dir=tmp_path)
    try:
        deadline = time.monotonic() + 30
        in_flight: list[str] = []
        while not in_flight and time.monotonic() < deadline:
            in_flight = [j for j in ids if store.load(j).upid]
            time.sleep(0.05)
        assert in_flight, "no migration started"
        name = (real_redis.hget(f"rq:job:{in_flight[0]}", "worker_name") or b"").decode()
        horses = [h for w in workers if f"-{w.pid}-" in name for h in children(w.pid)]
        assert len(horses) == 1, f"the work-horse of {in_flight[0]} ({name}): {horses}"
        os.kill(horses[0], signal.SIGKILL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all((store.state(j) or JobState.QUEUED).terminal for j in ids):
            time.sleep(0.2)
    finally:
        stop_processes(workers)
    ended = {j: (store.state(j), store.load(j).message) for j in ids}
    assert all(state is JobState.SUCCEEDED for state, _ in ended.values()), ended
