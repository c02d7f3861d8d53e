"""Draining a node of 40 guests with 1, 2 and 4 parallel slots, against the lower bound.

The simulator serves all-on-one with pve1 in maintenance; real rq worker processes (slots + 2 of
them, as a deployment runs more workers than slots) carry the 40 moves out. Every migration leaves
pve1, so every byte goes out of pve1's migration link (10 Gbit/s: 1 GiB a second), shared by the
migrations running at once (pvebalance/simulator/links.py): two at once each copy at half speed, and
only PVE's fixed part of each migration (2 s: the tunnel, the target's QEMU, the config move) overlaps
with the other's copy.

Makespan: from the first migration task's start to the last one's end, as the simulator timed them
(planning and start-up left out). Lower bound: no order of these migrations on that many slots ends
sooner than the largest of
- the sum of their durations alone on the links (PVE's part and the copy), divided by the slots;
- the longest of those;
- the busiest link's data at its full rate, plus one migration's fixed part: no copy starts before the
  first migration's part before its copy (1.7 s for a live VM), and the last task ends only after its
  copy and its switch-over (0.3 s for a live VM; every guest here is a running VM).
With one slot the first counts; with two or more, pve1's link.

With two slots the link bound is not one any order reaches: it assumes pve1's link never idles after
the first fixed part, and half of these guests copy for less than a fixed part and the migrator's gap
(G = 2 s + g) last. For the link never to idle, each slot's G between two copies must lie within one
copy of the other slot, alone on the link; so a guest copying for less than G, unless it is the first
on its slot or beside the other slot's last, must copy wholly beside a longer copy, both at half rate,
and two such never copy at once. Then the link carries 38 G alone plus twice those short copies:
at g = 0.25 s (the model's gap) 85.5 + 42.6 s (20 short guests, the 4 longest left out) against its
117.1 s, so it must idle; how long is not proven here. The plan's expected time is the best order the
schedule found over the same model. `out of queue order` counts the migrations that started before
one queued ahead of them: the migrator grants a freed slot to the first waiting job in queue order
(services/migrator/slots.py), as the plan's expected time assumes, but a job's pre-flight and POST
after its grant take their own time, so two granted close together may start the other way round.
The rows with as many workers as slots show the same drain where no job waits for a slot (a worker
takes the next job only once it is free).

Each drain runs twice: with the simulator's API latency (10 ms a request, 3 pveproxy workers per node,
as in the demo and the tests) and without any. The durations are the simulator's own (time scale 1);
at a smaller time scale the same per-migration overhead (task polling, the pre-flight's reads, the
POST: about 0.1-0.2 s) weighs proportionally more.
"""

from __future__ import annotations

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
from pvebalance.demo.embedded_redis import local_redis
from pvebalance.services.collector.collector import Collector
from pvebalance.services.planner.planner import Planner
from pvebalance.shared import keys
from pvebalance.shared.apidump import load_dump
from pvebalance.shared.config import load_settings
from pvebalance.shared.jobs import JobState, job_ids
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.proxmox import ProxmoxClient
from pvebalance.shared.redisconn import answers, connect
from pvebalance.simulator.links import link_rate
from pvebalance.simulator.server import Simulator
from pvebalance.simulator.tasks import BASE_SECONDS, migration_bytes

COLUMNS = [("latency_ms", "API latency ms"), ("slots", "slots"), ("workers", "workers"),
           ("guests", "guests"), ("succeeded", "jobs succeeded"), ("max_posts", "POSTs per guest"),
           ("seconds", "drain s"), ("max_concurrent", "max at once"), ("makespan", "makespan s"),
           ("alone", "durations alone / slots s"), ("link_bound", "busiest link s"),
           ("lower_bound", "lower bound s"), ("over_bound_pct", "+% over bound"), ("expected", "plan expected s"),
           ("out_of_order", "out of queue order")]
TIME_SCALE = 1.0  # the simulator's own durations (4.9 s on average here); lower is quicker and harsher
LATENCIES = (10.0, 0.0)  # the simulator's default (pveproxy's 3 workers per node), then none (unlimited)
IN_QUEUE_ORDER = (2,)  # slot counts also drained with as many workers as slots (no job waits for a slot)


def drain(slots: int, redis_url: str, workdir: Path, time_scale: float = TIME_SCALE,
          latency_ms: float = LATENCIES[0], workers: int | None = None) -> dict[str, Any]:
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
                     "max_parallel_per_target": slots, "poll_interval": 0.1,
                     # the simulated cluster's links and PVE's part, at its time scale (the plan's expected time)
                     "link_gbit": 10 / time_scale, "setup_seconds": BASE_SECONDS * time_scale},
        "logging": {"format": "json", "level": "WARNING"},
    }))
    settings = load_settings(config)
    redis = connect(redis_url)
    clear_pvebalance_keys(redis)
    procs = [subprocess.Popen([sys.executable, "-m", "pvebalance", "migrator", "-c", str(config)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(workers or slots + 2)]
    try:
        workers_up(redis, len(procs))  # the clock starts with the first task, not the workers' start-up
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
        stop_processes(procs)  # terminate, then kill: a worker whose Redis is gone waits for it for ever
        sim.stop()
    done = [m for m in sim.cluster.stats.migrations if m["ok"]]
    posts = sim.cluster.stats.migrate_posts
    alone = [lone_seconds(sim, m) for m in done]
    makespan = max(m["end"] for m in done) - min(m["start"] for m in done)
    link = link_bound(sim)
    bound = max(lower_bound(alone, slots), link)
    return {"latency_ms": latency_ms, "slots": slots, "workers": len(procs), "guests": len(done),
            "succeeded": f"{succeeded}/{len(ids)}",
            "max_posts": max(posts.values(), default=0), "seconds": round(seconds, 1),
            "max_concurrent": sim.cluster.stats.max_concurrent, "makespan": round(makespan, 2),
            "alone": round(sum(alone) / slots, 2), "link_bound": round(link, 2),
            "lower_bound": round(bound, 2), "over_bound_pct": round(100 * (makespan - bound) / bound, 1),
            "expected": plan.expected_seconds, "out_of_order": out_of_order([m.vmid for m in plan.migrations], done)}


def out_of_order(queue: list[int], done: list[dict[str, Any]]) -> int:
    """How many migrations started before one queued ahead of them (the queue: the plan's vmids in order)."""
    start = {m["vmid"]: m["start"] for m in done}
    latest, count = float("-inf"), 0
    for vmid in (v for v in queue if v in start):
        count += start[vmid] < latest
        latest = max(latest, start[vmid])
    return count


def lone_seconds(sim: Simulator, record: dict[str, Any]) -> float:
    """How long the migration takes with nothing else on its links: PVE's part and its copy, as the simulator
    times them (its guest is on the target now, and holds what it copied)."""
    g = sim.cluster.guests[record["vmid"]]
    disks = sum(d["size"] for d in sim.cluster.local_disks(g))
    nbytes = migration_bytes(g, disks, online=g.running and g.type == "qemu")
    copy = sim.tasks.links.lone_seconds(record["source"], record["target"], nbytes)
    return (BASE_SECONDS + copy) * sim.tasks.time_scale


def link_bound(sim: Simulator) -> float:
    """The busiest link side's data at its full rate, plus one migration's fixed part."""
    links = sim.tasks.links
    busiest = max((max(r.sent, r.received) / link_rate(links.gbit_of(node)) for node, r in links.records.items()),
                  default=0.0)
    return (BASE_SECONDS + busiest) * sim.tasks.time_scale


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
            rows = [drain(slots, url, Path(tmp), time_scale, latency) for slots in slot_counts for latency in latencies]
            return rows + [drain(slots, url, Path(tmp), time_scale, latency, workers=slots)
                           for slots in IN_QUEUE_ORDER if slots in slot_counts for latency in latencies]
        finally:
            if own:
                own.stop()

