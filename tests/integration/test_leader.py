"""Two collectors and two planners at once, as real processes on a real Redis and the simulator:
one leads each service, nothing is doubled, and the follower takes over after a SIGKILL within the
lock's expiry."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from pvebalance.shared import keys
from pvebalance.shared.heartbeat import alive
from pvebalance.shared.models import ClusterSnapshot, Plan
from tests.helpers import SimFactory, kill_tree, write_config

pytestmark = pytest.mark.integration

INTERVAL = 1.0  # collector.interval
LOCK_TTL = 3.0  # leader.lock_ttl
POLL = 0.3  # Leader.poll for that ttl: how often the follower tries and the leader renews


@pytest.fixture
def services(start_simulator: SimFactory, real_redis: Redis, redis_url: str,
             tmp_path: Path) -> Iterator[dict[str, list[subprocess.Popen[bytes]]]]:
    sim = start_simulator("homelab")
    # dry-run: plans are stored, never enqueued, so no job holds the planner back; the planner makes
    # a plan only when the cluster changed, so each snapshot is made to differ from the one before
    # (pve3 in and out of maintenance).
    config = write_config(tmp_path / "pvebalance.yaml", sim, redis_url, collector={"interval": INTERVAL},
                          leader={"lock_ttl": LOCK_TTL}, balancing={"mode_of_operation": "dry-run"})
    env = {**{k: v for k, v in os.environ.items() if k != "REDIS_URL"}, "PVEBALANCE_REDIS__URL": redis_url}
    procs: dict[str, list[subprocess.Popen[bytes]]] = {}
    for service in ("collector", "planner"):
        procs[service] = [
            subprocess.Popen([sys.executable, "-m", "pvebalance", service, "-c", str(config)], env=env,
                             stdout=(tmp_path / f"{service}-{i}.log").open("wb"), stderr=subprocess.STDOUT)
            for i in range(2)
        ]
    stop = threading.Event()

    def toggle_after_each_snapshot() -> None:
        seen, maintenance = 0, False
        while not stop.wait(0.02):
            count = real_redis.xlen(keys.SNAPSHOT_STREAM)
            if count > seen:
                seen, maintenance = count, not maintenance
                sim.control("POST", "/_sim/nodes/pve3/maintenance", {"enable": maintenance})

    toggler = threading.Thread(target=toggle_after_each_snapshot, daemon=True)
    toggler.start()
    yield procs
    stop.set()
    toggler.join()
    for p in procs["collector"] + procs["planner"]:
        kill_tree(p)


def holder_pid(redis: Redis, service: str) -> int | None:
    raw = redis.get(keys.leader(service))
    return int(raw.decode().rsplit("-", 2)[-2]) if raw else None  # INSTANCE: host-pid-suffix


def snapshot_times(redis: Redis) -> list[float]:
    """When each snapshot in the stream was published (the entry id's milliseconds)."""
    return [int(entry_id.decode().split("-")[0]) / 1000 for entry_id, _ in redis.xrange(keys.SNAPSHOT_STREAM)]


def plans(redis: Redis) -> list[Plan]:
    return [Plan.model_validate_json(redis.get(keys.plan(pid.decode())))
            for pid in redis.zrange(keys.PLAN_INDEX, 0, -1)]


def wait_for(condition, timeout: float, step: float = 0.05) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(step)
    return time.monotonic() - started


def planned_by(log: Path) -> set[str]:
    """The plans a planner process made, from its log."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return {e["plan_id"] for e in lines if e.get("event") in ("plan recommended", "plan made")}


def assert_one_snapshot_per_interval_and_one_plan_per_snapshot(redis: Redis) -> None:
    times = snapshot_times(redis)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and min(gaps) >= 0.5 * INTERVAL, f"two snapshots {min(gaps):.2f} s apart: two collectors published"
    made = plans(redis)
    per_snapshot = [p.snapshot_id for p in made]
    assert len(per_snapshot) == len(set(per_snapshot)), "a snapshot was planned twice"
    published = {ClusterSnapshot.model_validate_json(f[b"snapshot"]).snapshot_id
                 for _, f in redis.xrange(keys.SNAPSHOT_STREAM)}
    assert set(per_snapshot) <= published
    # every snapshot differs from the one before, so each gets its plan; the planner skips only
    # snapshots that were already superseded when it read them (around a takeover)
    assert len(made) >= len(times) - 6, f"{len(made)} plans for {len(times)} snapshots"


@pytest.mark.parametrize("service", ["collector", "planner"])
def test_one_leader_per_service_and_the_follower_takes_over_within_the_lock_expiry(
        services: dict[str, list[subprocess.Popen[bytes]]], real_redis: Redis, service: str,
        tmp_path: Path) -> None:
    wait_for(lambda: len(snapshot_times(real_redis)) >= 5 and len(plans(real_redis)) >= 4, timeout=60)
    assert_one_snapshot_per_interval_and_one_plan_per_snapshot(real_redis)
    logs = {p.pid: tmp_path / f"planner-{i}.log" for i, p in enumerate(services["planner"])}
    planner_leader = holder_pid(real_redis, "planner")
    assert planned_by(logs[planner_leader]) >= {p.plan_id for p in plans(real_redis)}  # the leader made them all
    for name in ("collector", "planner"):  # the follower is alive too: its health check passes
        assert len(alive(real_redis, name)) == 2
        assert holder_pid(real_redis, name) in [p.pid for p in services[name]]

    leader_pid = holder_pid(real_redis, service)
    [leader] = [p for p in services[service] if p.pid == leader_pid]
    [follower] = [p for p in services[service] if p is not leader]
    remaining = real_redis.pttl(keys.leader(service)) / 1000  # the lock's life left (a renewal may add to it)
    kill_tree(leader)  # SIGKILL: no release, the lock has to expire
    killed = time.monotonic()
    wait_for(lambda: holder_pid(real_redis, service) == follower.pid, timeout=LOCK_TTL + 10, step=0.02)
    takeover = time.monotonic() - killed
    # Not before the lock expired...
    assert takeover >= remaining - 0.1, f"taken over after {takeover:.2f} s, the lock had {remaining:.2f} s left"
    # ...and within its expiry, plus at most one poll of the follower and some scheduling slack.
    assert takeover <= LOCK_TTL + POLL + 1.0, f"took {takeover:.2f} s"
    print(f"{service}: follower leads {takeover:.2f} s after the SIGKILL (lock ttl {LOCK_TTL} s)")

    snapshots, made = len(snapshot_times(real_redis)), len(plans(real_redis))
    wait_for(lambda: len(snapshot_times(real_redis)) >= snapshots + 3 and len(plans(real_redis)) >= made + 3,
             timeout=30)
    assert_one_snapshot_per_interval_and_one_plan_per_snapshot(real_redis)
    # each plan was made by exactly one planner process: the leader of its time
    made_by = [planned_by(log) for log in logs.values()]
    assert not (made_by[0] & made_by[1])
    assert made_by[0] | made_by[1] == {p.plan_id for p in plans(real_redis)}
    print(f"{service}: {len(plans(real_redis))} plans for {len(snapshot_times(real_redis))} snapshots")
    if service == "planner":
        assert planned_by(logs[follower.pid]) and all(
            p.plan_id in planned_by(logs[follower.pid]) for p in plans(real_redis)[made:])
