"""The long soak: weeks of a cluster's life, compressed, and nothing in Redis or the services grows.

`./dev.sh soak --long` (30 minutes) or `python -m bench soak` (the bench row: 8 minutes). The
simulator serves mid-300 (8 nodes, 300 guests) at time scale 0.01; a redis-server of the soak's
own; the collector (every 0.5 s: 60x the default 30 s), the planner, the API and three migrator
workers as the `pvebalance` processes they run as. Retention is short (every `*_days` one horizon,
120 s here, standing for the defaults' 7-30 days; 2,000 events), so the soak runs many horizons.
Meanwhile the soak, through the simulator's control API (pvebalance/simulator/control.py):
- creates a guest and destroys another every 2 s (a destroyed guest's job fails: not a lost job);
- drifts the memory of 10 running guests every second (the planner balances them again);
- drains a node, waits until it is empty, undrains it, and the next node (hundreds of moves each).

Sampled every 10 s, reported each minute: Redis's used memory and key count (pvebalance's job
keys apart), each service's resident memory. At the end nothing new starts; the soak waits until
every job ended and checks: no job lost (each job queued ended in a final state), no migration POSTed
twice (every UPID the simulator handed out is a job's), no limit exceeded (the simulator's peaks).
Flat: the mean of the last third of the run against the middle third (after two horizons).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from redis import Redis

from pvebalance.demo import stop_processes
from pvebalance.demo.embedded_redis import RedisServerProcess, free_port
from pvebalance.shared import keys
from pvebalance.shared.apidump import load_dump
from pvebalance.shared.config import PlannerSettings
from pvebalance.shared.jobs import JobState, JobStatusEvent
from pvebalance.shared.requests import OperatorRequest, RequestAction, RequestStore
from pvebalance.simulator.server import Simulator

from .redis_bench import rss_mb

SCENARIO, TIME_SCALE, HORIZON_S = "mid-300", 0.01, 120.0
LIMITS = {"max_parallel_cluster": 4, "max_parallel_per_source": 2, "max_parallel_per_target": 2}
SERVICES = ("collector", "planner", "api", "migrator", "migrator", "migrator")
COLUMNS = [("minute", "min"), ("snapshots", "snapshots"), ("migrations", "migrations"), ("created", "guests +"),
           ("deleted", "guests -"), ("redis_mb", "Redis MB"), ("keys", "keys"), ("job_keys", "job keys"),
           ("collector_mb", "collector MB"), ("planner_mb", "planner MB"), ("api_mb", "API MB"),
           ("migrator_mb", "migrator MB (max)")]
BENCH_COLUMNS = [*COLUMNS, ("growth_redis_pct", "Redis growth %"), ("lost", "jobs lost"), ("doubled", "doubled")]


class Soak:
    def __init__(self, workdir: Path, minutes: float, horizon: float = HORIZON_S) -> None:
        self.workdir, self.minutes, self.horizon = workdir, minutes, horizon
        self.rng = random.Random(23)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.jobs: dict[str, JobStatusEvent] = {}  # job id -> its last event
        self.upids: set[str] = set()
        self.posts: list[str] = []  # every UPID the simulator gave a migrate POST
        self.peaks = {"cluster": 0, "source": 0, "target": 0}
        self.migrations = self.created = self.deleted = 0
        self.next_vmid = 900_000
        self.cursor = "0-0"

    # --- set-up -----------------------------------------------------------------------------------------

    def start(self) -> None:
        self.sim = Simulator(load_dump(SCENARIO), time_scale=TIME_SCALE)
        self.sim.start(0, certdir=self.workdir / "certs")
        self.server = RedisServerProcess("redis-server", self.workdir)
        self.redis = Redis.from_url(self.server.url)
        ident, secret = next(iter(self.sim.tokens.items()))
        user, token = ident.split("!")
        days = self.horizon / 86400
        self.api_port = free_port()
        config = self.workdir / "pvebalance.yaml"
        config.write_text(yaml.safe_dump({
            "proxmox_api": {"hosts": [f"127.0.0.1:{self.sim.port}"], "user": user, "token_id": token,
                            "token_secret": secret, "ca_file": str(self.sim.cafile)},
            "redis": {"url": self.server.url}, "collector": {"interval": 0.5},
            "planner": {"settle_seconds": PlannerSettings().settle_seconds * TIME_SCALE, "retry_after_failure": 2},
            "balancing": {"cooldown_minutes": 0.05, "cooldown_cap_minutes": 0.2},
            "migrator": {**LIMITS, "poll_interval": 0.05, "slot_ttl": 10},
            "retention": {"jobs_days": days, "plans_days": days, "requests_days": days, "events": 2000},
            "api": {"port": self.api_port, "read_requires_token": False}, "logging": {"format": "json"}}))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for i, service in enumerate(SERVICES):
            extra = ["--port", str(self.api_port)] if service == "api" else []
            self.procs[f"{service}-{i}"] = subprocess.Popen(
                [sys.executable, "-m", "pvebalance", service, "-c", str(config), *extra],
                stdout=(self.workdir / f"{service}-{i}.log").open("wb"), stderr=subprocess.STDOUT)
        self.requests = RequestStore(self.redis)

    # --- what happens to the cluster ---------------------------------------------------------------------

    def churn(self) -> None:
        """A guest created and another destroyed every 2 s; 10 running guests' memory drifts every second."""
        tick = 0
        while not self.stop.wait(1.0):
            tick += 1
            c = self.sim.cluster
            with c.lock:
                running = [g for g in c.guests.values() if g.running]
                for g in self.rng.sample(running, min(10, len(running))):
                    maxmem = int(g.entry.get("maxmem", 0))
                    self.sim.control("POST", f"/_sim/guests/{g.vmid}/usage",
                                     {"mem": int(maxmem * self.rng.uniform(0.2, 0.9))})
                if tick % 2:
                    continue
                victim = self.rng.choice(sorted(c.guests))
                self.sim.control("POST", f"/_sim/guests/{victim}/delete", {})
                drained = {n.decode() for n in self.redis.hkeys(keys.DRAINED)}  # a drained node is held empty
                node = self.rng.choice(sorted(n for n, x in c.nodes.items() if x.online and n not in drained))
                self.next_vmid += 1
                self.sim.control("POST", "/_sim/guests", {"vmid": self.next_vmid, "node": node,
                                                          "memory_mib": self.rng.choice([1024, 2048, 4096])})
                self.created, self.deleted = self.created + 1, self.deleted + 1

    def drains(self) -> None:
        """Drain each node in turn until it is empty, then undrain it: the planner fills it again."""
        nodes = sorted(self.sim.cluster.nodes)
        i = 0
        while not self.stop.is_set():
            node = nodes[i % len(nodes)]
            i += 1
            if self._ask(RequestAction.DRAIN, node):  # done: the node is empty
                self.stop.wait(self.horizon / 4)
            # refused (guests that fit nowhere), failed or done: the node takes guests again
            self._ask(RequestAction.UNDRAIN, node)

    def _ask(self, action: RequestAction, node: str) -> bool:
        """Submit a request as the CLI does and wait for its end; True when it ended done."""
        status = self.requests.submit(OperatorRequest(action=action, node=node, who="soak"))
        deadline = time.monotonic() + 5 * self.horizon
        while not self.stop.wait(0.5) and time.monotonic() < deadline:
            now = self.requests.status(status.request.request_id)
            if now is not None and now.state.final:
                return now.state.value == "done"
        return False

    # --- what is recorded ----------------------------------------------------------------------------------

    def follow(self) -> None:
        """Every job event (the stream keeps only the newest few thousand), and the simulator's record
        (read and forgotten, so the simulator does not grow either)."""
        while not self.stop.wait(0.5):
            self.read_events()
            self.read_sim()

    def read_events(self) -> None:
        while True:
            batch = self.redis.xrange(keys.EVENT_STREAM, min=f"({self.cursor}" if self.cursor != "0-0" else "-",
                                      count=5000)
            if not batch:
                return
            with self.lock:
                for entry_id, fields in batch:
                    self.cursor = entry_id.decode()
                    event = JobStatusEvent.model_validate_json(fields[b"event"])
                    self.jobs[event.job_id] = event
                    if event.upid:
                        self.upids.add(event.upid)

    def read_sim(self) -> None:
        c = self.sim.cluster
        with c.lock:
            stats = c.stats
            self.posts += [r["upid"] for r in stats.migrate_requests if r.get("upid")]
            self.migrations += sum(1 for m in stats.migrations if m.get("ok"))
            self.peaks["cluster"] = max(self.peaks["cluster"], stats.max_concurrent)
            self.peaks["source"] = max([self.peaks["source"], *stats.max_per_source.values()])
            self.peaks["target"] = max([self.peaks["target"], *stats.max_per_target.values()])
            c.reset_stats()

    def sample(self, elapsed: float) -> dict[str, Any]:
        memory = self.redis.info("memory")
        job_keys = sum(1 for _ in self.redis.scan_iter(match=keys.job("*"), count=1000))
        rss: dict[str, float] = {}
        for name, proc in self.procs.items():
            service = name.rsplit("-", 1)[0]
            rss[service] = max(rss.get(service, 0.0), rss_mb(proc.pid)[0])
        try:
            snaps = int(self.redis.xinfo_stream(keys.SNAPSHOT_STREAM)["entries-added"])
        except Exception:
            snaps = 0
        try:  # the API read as an operator's page would, so its own memory is exercised
            httpx.get(f"http://127.0.0.1:{self.api_port}/metrics", timeout=10)
            httpx.get(f"http://127.0.0.1:{self.api_port}/api/v1/jobs", timeout=10)
        except httpx.HTTPError:
            pass
        return {"t": elapsed, "minute": round(elapsed / 60, 1), "snapshots": snaps, "migrations": self.migrations,
                "created": self.created, "deleted": self.deleted,
                "redis_mb": round(memory["used_memory"] / 2**20, 2), "keys": self.redis.dbsize(), "job_keys": job_keys,
                "collector_mb": round(rss["collector"]), "planner_mb": round(rss["planner"]),
                "api_mb": round(rss["api"]), "migrator_mb": round(rss["migrator"])}

    # --- the run -------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.start()
        samples: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + 60
            while self.redis.get(keys.SNAPSHOT_LATEST) is None:
                assert time.monotonic() < deadline, "no snapshot within 60 s: see the logs in " + str(self.workdir)
                time.sleep(0.2)
            workers = [threading.Thread(target=f, daemon=True) for f in (self.churn, self.drains, self.follow)]
            for w in workers:
                w.start()
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < self.minutes * 60:
                samples.append(self.sample(elapsed))
                for name, proc in self.procs.items():
                    assert proc.poll() is None, f"{name} ended (see {self.workdir})"
                time.sleep(10)
            self.stop.set()
            for w in workers:
                w.join(60)
            return self.verdict(samples, self.settle())
        finally:
            self.stop.set()
            stop_processes(list(self.procs.values()))
            self.sim.stop()
            self.server.stop()

    def settle(self) -> dict[str, Any]:
        """Nothing new starts; every job ends (within 5 minutes); then the accounts."""
        for node in [n.decode() for n in self.redis.hkeys(keys.DRAINED)]:
            self.requests.submit(OperatorRequest(action=RequestAction.UNDRAIN, node=node, who="soak"))
        self.requests.submit(OperatorRequest(action=RequestAction.PAUSE, who="soak", reason="soak ends"))
        deadline = time.monotonic() + 300
        while self.redis.scard(keys.ACTIVE_JOBS) and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(2)
        self.read_events()
        self.read_sim()
        with self.lock:
            final = {s.value for s in JobState if s.terminal}
            lost = sorted(j for j, e in self.jobs.items() if e.state.value not in final)
            states = {s: sum(1 for e in self.jobs.values() if e.state.value == s) for s in sorted(final)}
            unmatched = [u for u in self.posts if u not in self.upids]
        return {"jobs": len(self.jobs), "states": states, "lost": lost, "posts": len(self.posts),
                "posts_without_job": len(unmatched), "peaks": self.peaks, "limits": LIMITS}

    def verdict(self, samples: list[dict[str, Any]], accounts: dict[str, Any]) -> dict[str, Any]:
        rows = [s for i, s in enumerate(samples) if i % 6 == 0 or i == len(samples) - 1]
        steady = [s for s in samples if s["t"] >= 2 * self.horizon]
        third = max(len(steady) // 3, 1)
        middle, last = steady[third:2 * third] or steady, steady[-third:]
        growth = {}
        for key in ("redis_mb", "keys", "job_keys", "collector_mb", "planner_mb", "api_mb", "migrator_mb"):
            before = sum(s[key] for s in middle) / len(middle)
            after = sum(s[key] for s in last) / len(last)
            growth[key] = round(100 * (after - before) / before, 1) if before else 0.0
        return {"minutes": self.minutes, "horizon_s": self.horizon, "rows": rows, "growth_pct": growth, **accounts}


def run(minutes: float = 8.0, horizon: float = 60.0) -> list[dict[str, Any]]:
    """The bench's row: a shorter soak, the figures of its last sample and its growth."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Soak(Path(tmp), minutes, horizon).run()
    last = result["rows"][-1]
    return [{**last, "lost": len(result["lost"]), "doubled": result["posts_without_job"],
             "growth_redis_pct": result["growth_pct"]["redis_mb"], "peaks": result["peaks"]}]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="./dev.sh soak --long")
    parser.add_argument("--long", action="store_true", help="the long soak (this command)")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--horizon", type=float, default=HORIZON_S, help="seconds every *_days stands for")
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = Soak(Path(tmp), args.minutes, args.horizon).run()
    print(" | ".join(h for _, h in COLUMNS))
    for row in result["rows"]:
        print(" | ".join(str(row[k]) for k, _ in COLUMNS))
    summary = {k: v for k, v in result.items() if k != "rows"}
    summary["lost"] = len(result["lost"]) if isinstance(result["lost"], list) else result["lost"]
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    ok = not result["lost"] and not result["posts_without_job"] and all(
        result["peaks"][k] <= LIMITS[f"max_parallel_{'per_' if k != 'cluster' else ''}{k}"] for k in result["peaks"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
