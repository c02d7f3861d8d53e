"""Draining a node of 40 guests with 1, 2 and 4 parallel slots, against the ideal and the lower bound.

The simulator serves all-on-one with pve1 in maintenance; real rq worker processes (slots + 2 of
them) carry the 40 moves out. Ideal = the sum of the simulated migration durations (as the
simulator timed its own tasks) divided by the number of slots: what a perfect scheduler with no
polling or bookkeeping delay would take.

Makespan: from the first migration task's start to the last one's end, as the simulator timed them
(planning and start-up left out). Lower bound = max(total duration / slots, longest migration): no
order of these migrations on that many slots ends sooner. Beside it, the same durations run in the
queue's order with no delay between tasks ("queue order"), and in vmid order, as plain capped
parallelism would take them ("vmid order"): what the order alone is worth, apart from the overhead.

Each drain runs twice: with the simulator's API latency (10 ms a request, 3 pveproxy workers per node,
as in the demo and the tests) and without any. The durations are the simulator's own (time scale 1,
4.9 s a migration on average); at a smaller time scale the same per-migration overhead (task
polling, the pre-flight's reads, the POST: about 0.1-0.2 s) weighs proportionally more.
"""

from __future__ import annotations

import heapq
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from redis import Redis
from rq import Queue, Worker

from pvebalance.demo import clear_pvebalance_keys, stop_processes
from pvebalance.embedded_redis import local_redis
from pvebalance.services.collector.collector import Collector
from pvebalance.services.planner.planner import Planner
from pvebalance.shared import keys
from pvebalance.shared.apidump import load_dump
from pvebalance.shared.config import load_settings
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import JobState, job_ids
from pvebalance.shared.proxmox import ProxmoxClient
from pvebalance.shared.redisconn import answers, connect
from pvebalance.simulator.server import Simulator

COLUMNS = [("latency_ms", "API latency ms"), ("slots", "slots"),
           ("guests", "guests"), ("succeeded", "jobs succeeded"), ("max_posts", "POSTs per guest"),
           ("seconds", "drain s"), ("ideal", "ideal s"), ("over_ideal_pct", "+% over ideal"),
           ("max_concurrent", "max at once"), ("makespan", "makespan s"), ("lower_bound", "lower bound s"),
           ("over_bound_pct", "+% over bound"), ("queue_order", "queue order s"), ("vmid_order", "vmid order s")]
TIME_SCALE = 1.0  # the simulator's own durations (4.9 s on average here); lower is quicker and harsher
LATENCIES = (10.0, 0.0)  # the simulator's default (pveproxy's 3 workers per node), then none (unlimited)


def drain(slots: int, redis_url: str, workdir: Path, time_scale: float = TIME_SCALE,
          latency_ms: float = LATENCIES[0]) -> dict[str, Any]:
    # without latency, no pveproxy worker limit either: an instant API
    api: dict[str, Any] = {"latency_ms": latency_ms} if latency_ms else {"latency_ms": 0.0, "jitter": 0.0, "workers": 0}
    sim = Simulator(load_dump("all-on-one"), time_scale=time_scale, **api)
    sim.start(0, certdir=workdir / "certs")
    ident, secret = next(iter(sim.tokens.items()))
    user, token = ident.split("!")
    config = workdir / f"drain-{slots}.yaml"
    config.write_text(yaml.safe_dump({
        "proxmox_api": {"hosts": [f"127.0.0.1:{sim.port}"], "user": user, "token_id": token,
                        "token_secret": secret, "ca_file": str(sim.cafile)},
        "proxmox_cluster": {"maintenance_nodes": ["pve1"]},
        "redis": {"url": redis_url},
        "migrator": {"max_parallel_cluster": slots, "max_parallel_per_source": slots,
                     "max_parallel_per_target": slots, "poll_interval": 0.1},
        "logging": {"format": "json", "level": "WARNING"},
    }))
    settings = load_settings(config)
    redis = connect(redis_url)
    clear_pvebalance_keys(redis)
    workers = [subprocess.Popen([sys.executable, "-m", "pvebalance", "migrator", "-c", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(slots + 2)]
    try:
        workers_up(redis, len(workers))  # the clock starts with the first task, not the workers' start-up
        started = time.monotonic()
        plan = Planner(redis, settings).handle(Collector(ProxmoxClient(settings.proxmox_api)).snapshot())
        assert plan is not None
        store = JobStore(redis)
        ids = job_ids(plan)
        while not all((s := store.state(i)) is not None and s.terminal for i in ids):
            time.sleep(0.05)
        seconds = time.monotonic() - started
        succeeded = sum(1 for i in ids if store.state(i) is JobState.SUCCEEDED)
    finally:
        stop_processes(workers)  # terminate, then kill: a worker whose Redis is gone waits for it for ever
        sim.stop()
    done = [m for m in sim.cluster.stats.migrations if m["ok"]]
    ideal = sum(m["end"] - m["start"] for m in done) / slots
    posts = sim.cluster.stats.migrate_posts
    took = {m["vmid"]: m["end"] - m["start"] for m in done}
    makespan = max(m["end"] for m in done) - min(m["start"] for m in done)
    bound = lower_bound(list(took.values()), slots)
    queue = [took[m.vmid] for m in plan.migrations if m.vmid in took]
    return {"latency_ms": latency_ms, "slots": slots, "guests": len(done), "succeeded": f"{succeeded}/{len(ids)}",
            "max_posts": max(posts.values(), default=0), "seconds": round(seconds, 1), "ideal": round(ideal, 1),
            "over_ideal_pct": round(100 * (seconds - ideal) / ideal, 1),
            "max_concurrent": sim.cluster.stats.max_concurrent, "makespan": round(makespan, 2),
            "lower_bound": round(bound, 2), "over_bound_pct": round(100 * (makespan - bound) / bound, 1),
            "queue_order": round(list_makespan(queue, slots), 2),
            "vmid_order": round(list_makespan([took[v] for v in sorted(took)], slots), 2)}


def workers_up(redis: Redis, count: int, timeout: float = 120.0) -> None:
    """Wait until `count` workers listen on the migration queue (each takes ~1 s of CPU to start)."""
    queue = Queue(keys.MIGRATION_QUEUE, connection=redis)
    deadline = time.monotonic() + timeout
    while len(Worker.all(queue=queue)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} migrator workers came up within {timeout:.0f} s")
        time.sleep(0.1)


def lower_bound(seconds: list[float], slots: int) -> float:
    """No schedule of these migrations on `slots` slots ends before this."""
    return max(sum(seconds) / slots, max(seconds, default=0.0))


def list_makespan(seconds: list[float], slots: int) -> float:
    """The migrations started in this order, each as soon as one of `slots` slots is free, no delay."""
    free = [0.0] * slots
    for s in seconds:
        heapq.heapreplace(free, free[0] + s)
    return max(free)


def run(slot_counts: tuple[int, ...] = (1, 2, 4), time_scale: float | None = None,
        latencies: tuple[float, ...] = LATENCIES) -> list[dict[str, Any]]:
    time_scale = time_scale or TIME_SCALE
    url = os.environ.get("REDIS_URL", "")
    with tempfile.TemporaryDirectory() as tmp:
        own = None
        if not (url and answers(url)):
            own, _ = local_redis(Path(tmp))  # redis-server when on PATH, as the services run against
            url = own.url
        try:
            return [drain(slots, url, Path(tmp), time_scale, latency) for slots in slot_counts for latency in latencies]
        finally:
            if own:
                own.stop()

