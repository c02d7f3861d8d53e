"""Redis going away: a queued migration survives a Redis restart (with its append-only file), and
a worker that lost Redis reconnects and carries on."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from redis import Redis

from pvebalance.services.collector.collector import Collector
from pvebalance.services.migrator.worker import STOPPED_WHILE_AWAY
from pvebalance.services.planner.planner import Planner
from pvebalance.shared.config import load_settings
from pvebalance.shared.jobs import JobState
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.proxmox import ProxmoxClient
from tests.helpers import OwnRedis, SimFactory, start_workers, write_config

pytestmark = pytest.mark.integration


def test_a_queued_job_survives_a_redis_restart_and_workers_reconnect(start_simulator: SimFactory,
                                                                     tmp_path: Path) -> None:
    server = OwnRedis(tmp_path, appendonly=True)
    server.start()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        sim = start_simulator("all-on-one", time_scale=0.02)
        config = write_config(tmp_path / "pvebalance.yaml", sim, server.url, balancing={"max_migrations": 1})
        settings = load_settings(config)
        planner = Planner(Redis.from_url(server.url), settings)
        store = JobStore(Redis.from_url(server.url))

        def plan_one() -> tuple[int, str]:
            plan = planner.handle(Collector(ProxmoxClient(settings.proxmox_api)).snapshot())
            assert plan is not None and len(plan.migrations) == 1
            return plan.migrations[0].vmid, f"migrate-{plan.plan_id}-{plan.migrations[0].vmid}"

        def wait_succeeded(job_id: str) -> None:
            deadline = time.monotonic() + 60
            while store.state(job_id) is not JobState.SUCCEEDED and time.monotonic() < deadline:
                time.sleep(0.1)
            assert store.state(job_id) is JobState.SUCCEEDED

        # A worker loses Redis while it waits for work, and carries on once Redis is back.
        workers = start_workers(config, 1, burst=False, log_dir=tmp_path)
        time.sleep(1.5)
        server.stop()
        time.sleep(1.0)
        server.start()
        first_vmid, first = plan_one()
        wait_succeeded(first)
        for w in workers:
            w.terminate()
            w.wait(10)

        # A job queued with no worker running survives Redis restarting, and then runs. The planner
        # plans only on figures read planner.settle_seconds after the last migration ended.
        time.sleep(settings.planner.settle_seconds)
        second_vmid, second = plan_one()
        assert store.state(second) is JobState.QUEUED
        server.stop()
        server.start()
        assert store.state(second) is JobState.QUEUED, "the queued job is still there"
        workers = start_workers(config, 1, burst=False, log_dir=tmp_path)
        wait_succeeded(second)
        assert sim.cluster.stats.migrate_posts[first_vmid] == 1
        assert sim.cluster.stats.migrate_posts[second_vmid] == 1
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
        server.stop()
        for w in workers:  # none left behind: a stop must hold while Redis is away (the test below)
            try:
                w.wait(15)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()


@pytest.mark.parametrize("first", ["redis stops", "the stop"])
def test_a_worker_told_to_stop_while_redis_is_away_exits_at_once(start_simulator: SimFactory, tmp_path: Path,
                                                                 first: str) -> None:
    """SIGTERM to an idle worker whose Redis is away, or goes away as the worker says goodbye (the race
    that left a test's worker retrying Redis for 9 minutes): it exits, rc 0, without waiting for Redis."""
    server = OwnRedis(tmp_path)
    server.start()
    sim = start_simulator("homelab", time_scale=0.02)
    config = write_config(tmp_path / "pvebalance.yaml", sim, server.url)
    [worker] = start_workers(config, 1, burst=False, log_dir=tmp_path)
    log = tmp_path / "worker-0.log"
    try:
        deadline = time.monotonic() + 30
        while "Listening on" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "Listening on" in log.read_text(), log.read_text()
        if first == "redis stops":
            server.stop()
            time.sleep(1.0)  # its dequeue has failed: rq retries Redis
            worker.terminate()
        else:
            worker.terminate()
            server.stop()
        assert worker.wait(15) == 0, log.read_text()
        said = log.read_text()
        assert "stop requested" in said and "the worker exits" in said, said
        if first == "redis stops":  # rq's goodbye met the outage: the exit says so, in one line
            assert said.count(STOPPED_WHILE_AWAY) == 1 and "Traceback" not in said, said
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        server.stop()
