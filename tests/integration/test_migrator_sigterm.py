"""SIGTERM to a migrator worker (systemd's stop, KillMode=mixed): it says what it waits for, hands its
running job over at the next safe point instead of following the migration to its end, and exits;
another worker resumes the job. Nothing lost (the job succeeds), nothing doubled (one POST), no
takeover spent. Real worker processes, a real Redis, the simulator."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from redis import Redis

from pvebalance.demo import stop_processes
from pvebalance.shared.jobs import JobState
from pvebalance.shared.jobstore import JobStore
from tests.helpers import SimFactory, kill_tree, start_workers
from tests.integration.test_migrator import plan_and_enqueue, wait_until

pytestmark = pytest.mark.integration

SYSTEMD_STOP_TIMEOUT = 90  # TimeoutStopSec in deploy/systemd/pvebalance-migrator@.service


def log_events(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def test_sigterm_hands_both_a_running_and_a_waiting_job_over_and_another_worker_resumes_them(
        start_simulator: SimFactory, real_redis: Redis, redis_url: str, tmp_path: Path) -> None:
    # a migration of tens of seconds: longer than a worker's stop takes
    sim = start_simulator("all-on-one", time_scale=2)
    plan, _, config = plan_and_enqueue(sim, redis_url, tmp_path, balancing={"max_migrations": 2},
                                       migrator={"max_parallel_cluster": 1})
    store = JobStore(real_redis)
    moves = {f"migrate-{plan.plan_id}-{m.vmid}": m for m in plan.migrations}
    first = start_workers(config, 2, burst=False, log_dir=tmp_path)
    second: list[subprocess.Popen[bytes]] = []
    try:
        wait_until(lambda: sorted(str(store.load(j).fields.get("state")) for j in moves) == ["running", "waiting"], 60,
                   "one job migrating, the other waiting for the one cluster slot")
        running = next(j for j in moves if store.load(j).fields.get("state") == "running")
        waiting = next(j for j in moves if j != running)
        # a job is running from just before its POST; its task's UPID is stored once the POST answers
        wait_until(lambda: bool(store.load(running).upid), 30, "the running job's task id stored")
        upid = store.load(running).upid
        by_job = {_runs(real_redis, p.pid): p for p in first}
        for proc in first:  # to the main processes only, as systemd's KillMode=mixed does
            proc.send_signal(signal.SIGTERM)
        for proc in first:
            proc.wait(SYSTEMD_STOP_TIMEOUT)
        assert sim.cluster.guests[moves[running].vmid].config.get("lock") == "migrate", \
            "the workers stopped while the migration ran on in Proxmox: they did not wait for its end"
        assert store.load(running).fields["state"] == "running"
        assert store.load(waiting).fields.get("state") == "waiting" and not store.load(waiting).upid, \
            "handed over before its POST"
        (tmp_path / "second").mkdir()
        second = start_workers(config, 1, burst=False, log_dir=tmp_path / "second")
        wait_until(lambda: all(store.state(j) is JobState.SUCCEEDED for j in moves), 300, "both jobs to succeed")
    finally:
        for proc in first:
            if proc.poll() is None:
                kill_tree(proc)
        stop_processes(second)
    for job_id, expected_state, waits_for in (
            (running, "running", f"its migration task {upid} (it goes on in Proxmox)"),
            (waiting, "waiting", "a migration slot or the pre-flight")):
        log = tmp_path / f"worker-{first.index(by_job[job_id])}.log"
        events = log_events(log)
        said = next(e for e in events if str(e.get("event", "")).startswith("stop requested: handing the running"))
        move = moves[job_id]
        assert (said["job_id"], said["vmid"], said["move"], said["state"], said["waits_for"]) == (
            job_id, move.vmid, f"{move.source} -> {move.target}", expected_state, waits_for)
        assert any(e.get("event") == "job handed over at a safe point; another worker resumes it" for e in events)
    for job_id, move in moves.items():
        assert sim.cluster.stats.migrate_posts[move.vmid] == 1, "the running one followed, never POSTed twice"
        assert sim.cluster.guests[move.vmid].node == move.target
        record = store.load(job_id).fields
        assert "takeovers" not in record and "handed_over" not in record, "a hand-over is not a takeover"
    assert [e.state for _, e in store.events() if e.job_id == running] == [
        JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]
    assert store.active_jobs() == set()


def _runs(redis: Redis, pid: int) -> str | None:
    """The job id the rq worker of this process runs now."""
    from rq import Worker

    for worker in Worker.all(connection=redis):
        if worker.pid == pid:
            return worker.get_current_job_id()
    return None
