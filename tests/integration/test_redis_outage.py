"""Redis down for a minute while migrations run: every service waits and carries on, no job is lost
or doubled, and the limits hold. Real redis-server (append-only file), real service processes started
with the CLI, the simulator over HTTPS."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis

from pvebalance.demo import stop_processes
from pvebalance.shared.jobs import JobState
from pvebalance.shared.jobstore import JobStore
from tests.helpers import OwnRedis, SimFactory, write_config

pytestmark = pytest.mark.integration

OUTAGE_S = 60


def service(name: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pvebalance", name, "-c", str(config)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def test_services_ride_out_redis_down_for_a_minute_mid_migration(start_simulator: SimFactory,
                                                                  tmp_path: Path) -> None:
    server = OwnRedis(tmp_path, appendonly=True)
    server.start()
    sim = start_simulator("all-on-one", time_scale=1.0)
    config = write_config(tmp_path / "pvebalance.yaml", sim, server.url,
                          balancing={"max_migrations": 4}, collector={"interval": 1},
                          planner={"max_snapshot_age": 300},
                          migrator={"slot_ttl": 90, "poll_interval": 0.2, "max_parallel_cluster": 2,
                                    "max_parallel_per_source": 1, "max_parallel_per_target": 1})
    names = ["collector", "planner", "migrator", "migrator"]
    procs = [service(n, config, tmp_path / f"{n}-{i}.log") for i, n in enumerate(names)]
    store = JobStore(Redis.from_url(server.url))
    try:
        deadline = time.monotonic() + 60
        while not any(store.state(j) is JobState.RUNNING for j in store.active_jobs()):
            assert time.monotonic() < deadline, "no migration started"
            time.sleep(0.1)
        server.stop()
        time.sleep(OUTAGE_S)
        assert [p.poll() for p in procs] == [None] * len(procs), "a service exited while Redis was away"
        server.start()
        plan_jobs: set[str] = set()
        deadline = time.monotonic() + 120
        while True:
            events = [e for _, e in store.events()]
            plan_jobs = {e.job_id for e in events}
            if plan_jobs and all(store.state(j) is not None and store.state(j).terminal  # type: ignore[union-attr]
                                 for j in plan_jobs) and not store.active_jobs() \
                    and len(store.events()) == len(events):  # no job ended between the two reads
                break
            assert time.monotonic() < deadline, f"jobs still active: {store.active_jobs()}"
            time.sleep(0.2)
        assert [p.poll() for p in procs] == [None] * len(procs), "every service still runs"
    finally:
        stop_processes(procs)
        server.stop()
    finals = [e for e in events if e.state.terminal]
    assert sorted(e.job_id for e in finals) == sorted(plan_jobs), "each job ended exactly once"
    assert {e.state for e in finals} == {JobState.SUCCEEDED}
    stats = sim.cluster.stats
    assert all(n == 1 for n in stats.migrate_posts.values()), "no migration POSTed twice"
    assert stats.max_concurrent <= 2
    assert max(stats.max_per_source.values()) <= 1 and max(stats.max_per_target.values()) <= 1
    for i, name in enumerate(names):
        text = (tmp_path / f"{name}-{i}.log").read_text()
        assert "Traceback" not in text, f"{name}-{i} logged a traceback"
