"""ProxLB 2.3.0 and pvebalance, each from a cold start until the cluster is balanced, on the same simulator.

Each run gets a fresh simulator (its default realism; migration links of 10 Gbit/s, shared by the
migrations using them, pvebalance/simulator/links.py) serving the scenario at the given time scale, in this
process; the tool runs in its own processes against it:

- ProxLB 2.3.0 (PyPI, bench/.venv-proxlb, as `bench proxlb` installs it), not dry-run, one-shot
  (`service.daemon: False`), its own pacing (its sleeps are left in: 0.1 s between its reads, 5 s
  between looks at its running migrations) and its defaults but for what the comparison fixes:
  memory, used, balanciness 5 (pvebalance's default; ProxLB's is 10), both guest types. It reads HA
  maintenance from the cluster, as pvebalance does.
- pvebalance: a collector, a planner and 3 migrator workers (the demo's), with a redis-server of
  their own, every setting at its default but the ones that follow the simulator's time scale:
  `planner.settle_seconds` (the simulator's node figures lag 5 s times the scale, PVE's 10 s cycle) and
  the links the planner expects (`migrator.link_gbit`, `setup_seconds`: the simulated cluster's, 10
  Gbit/s and PVE's 2 s at time scale 1).

The clock starts when the tool's first process starts. Per tool:
- balanced: when the cluster, as the simulator's API shows it without the lag (each node's memory in
  use: its host's own, swinging as the simulator swings it, and its guests'; the nodes in maintenance
  left out and empty), last came within 5 pp and stayed so; the spread at the end also without the
  host's swing;
- end: ProxLB's exit; pvebalance's first plan with nothing to move after its migrations ended
  (the balance confirmed), with the spread the cluster had then;
- migrations, GiB copied (what the links carried), most migrations at once, the busiest link's busy
  time (seconds it carried any migration's data);
- pvebalance's plans: expected time (`Plan.expected_seconds`) against the measured one (its first
  migration's start to its last one's end, as the simulator timed them).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from redis import Redis

from pvebalance.demo import clear_pvebalance_keys, stop_processes, worker_env
from pvebalance.demo.embedded_redis import local_redis
from pvebalance.shared import keys
from pvebalance.shared.apidump import load_dump, operator_pools
from pvebalance.shared.config import PlannerSettings
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.plans import PlanStore
from pvebalance.shared.redisconn import connect
from pvebalance.shared.streams import group_exists
from pvebalance.simulator.realism import host_factor
from pvebalance.simulator.server import Simulator
from pvebalance.simulator.tasks import BASE_SECONDS

from .proxlb_bench import VERSION, ensure_proxlb, proxlb_config

GIB = 2**30
RUNS = [("all-on-one", 1.0), ("mid-300", 0.3), ("maintenance", 0.3)]
BALANCED_PP = 5.0
TIMEOUT = 3600.0
COLUMNS = [("scenario", "scenario"), ("time_scale", "time scale"), ("tool", "tool"),
           ("first_start", "first migration s"), ("balanced", "balanced s"), ("last_end", "last migration ended s"),
           ("end", "end s"), ("end_spread", "spread at end pp"), ("steady_spread", "without the host's swing pp"),
           ("left", "guests left in maintenance"),
           ("migrations", "migrations"),
           ("gib", "GiB copied"), ("at_once", "most at once"), ("busiest_link", "busiest link busy s"),
           ("expected_vs_measured", "plans: expected / measured s")]


class Cluster:
    """What the cluster held when the run began, to replay the simulator's record of the run on.

    A node's memory in use is what the simulator's API shows without its lag: the host's own use,
    swinging as the simulator swings it at that moment (realism.host_factor), plus its running guests
    as the host sees them (memhost for VMs). Both tools read and balance that figure."""

    def __init__(self, sim: Simulator) -> None:
        c = sim.cluster
        self.realism, self.scale = c.realism, c.time_scale
        self.where = {v: g.node for v, g in c.guests.items()}
        self.mem = {v: c._host_mem(g) for v, g in c.guests.items()}
        self.overhead = {n: node.mem_overhead for n, node in c.nodes.items()}
        self.index = {n: node.index for n, node in c.nodes.items()}
        self.maxmem = {n: int(node.entry.get("maxmem", 1)) for n, node in c.nodes.items()}
        self.held_out = {n for n, node in c.nodes.items()
                         if not node.online or node.entry.get("hastate") == "maintenance"}

    def state(self, where: dict[int, str], at: float | None) -> tuple[float, int]:
        """The spread in pp over the nodes that take guests at `at` (epoch seconds; None: the host's own use
        without its swing), and the guests left on the held-out nodes."""
        used = {n: o * (host_factor(self.realism, self.index[n], at, self.scale) if at is not None else 1.0)
                for n, o in self.overhead.items()}
        for v, node in where.items():
            used[node] += self.mem[v]
        pct = [100 * used[n] / self.maxmem[n] for n in used if n not in self.held_out]
        return max(pct) - min(pct), sum(1 for v, n in where.items() if n in self.held_out and self.mem[v])

    def timeline(self, migrations: list[dict[str, Any]], t0: float) -> list[tuple[float, float, int]]:
        """(time, spread, guests left on held-out nodes) at the start and after each successful migration."""
        where = dict(self.where)
        out = [(t0, *self.state(where, t0))]
        for m in sorted((m for m in migrations if m["ok"]), key=lambda m: m["end"]):
            where[m["vmid"]] = m["target"]
            out.append((m["end"], *self.state(where, m["end"])))
        return out

    def final(self, migrations: list[dict[str, Any]]) -> float:
        """The spread at the end without the host's swing (noise no balancer controls)."""
        where = dict(self.where)
        for m in sorted((m for m in migrations if m["ok"]), key=lambda m: m["end"]):
            where[m["vmid"]] = m["target"]
        return self.state(where, None)[0]


def balanced_at(timeline: list[tuple[float, float, int]], t0: float) -> float | None:
    """When the cluster last became balanced (and its held-out nodes empty) for good; None: it did not."""
    when = None
    for t, spread, left in timeline:
        ok = spread <= BALANCED_PP and not left
        when = (when if when is not None else max(t - t0, 0.0)) if ok else None
    return when


def measure(sim: Simulator, start: Cluster, t0: float) -> dict[str, Any]:
    stats = sim.cluster.stats.as_json()
    done = [m for m in stats["migrations"] if m["ok"]]
    links = stats["links"]
    timeline = start.timeline(stats["migrations"], t0)
    when = balanced_at(timeline, t0)
    return {"first_start": round(min(m["start"] for m in done) - t0, 1) if done else None,
            "last_end": round(max(m["end"] for m in done) - t0, 1) if done else None,
            "balanced": round(when, 1) if when is not None else "no",
            "end_spread": round(timeline[-1][1], 1), "steady_spread": round(start.final(stats["migrations"]), 1),
            "left": timeline[-1][2], "migrations": len(done),
            "gib": round(sum(link["sent_gib"] for link in links.values()), 1),
            "at_once": stats["max_concurrent"],
            "busiest_link": round(max((link["busy_s"] for link in links.values()), default=0.0), 1)}


def simulator(name: str, scale: float, workdir: Path) -> tuple[Simulator, dict[str, Any]]:
    doc = load_dump(name)
    sim = Simulator(doc, time_scale=scale)
    sim.start(0, certdir=workdir / "certs")
    return sim, doc


def run_proxlb(name: str, scale: float, python: Path, workdir: Path) -> dict[str, Any]:
    sim, doc = simulator(name, scale, workdir)
    config = proxlb_config(sim, operator_pools(doc))
    config["proxmox_api"]["timeout"] = 60
    cfg = workdir / f"proxlb-{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    start = Cluster(sim)
    t0 = time.time()
    try:
        out = subprocess.run([str(python), "-m", "proxlb", "-c", str(cfg)], capture_output=True, text=True,
                             timeout=TIMEOUT)
        end = time.time() - t0
        row = {"tool": f"ProxLB {VERSION}", **measure(sim, start, t0), "end": f"{end:.1f} (exit {out.returncode})"}
    finally:
        sim.stop()
    if out.returncode:
        row["error"] = (out.stderr or out.stdout).strip().splitlines()[-1:]
    return row


def pvebalance_config(sim: Simulator, doc: dict[str, Any], redis_url: str, scale: float) -> dict[str, Any]:
    ident, secret = next(iter(sim.tokens.items()))
    user, token = ident.split("!")
    balancing: dict[str, Any] = {"method": "memory", "mode": "used", "balanciness": 5}
    if operator_pools(doc):
        balancing["pools"] = operator_pools(doc)
    return {
        "proxmox_api": {"hosts": [f"127.0.0.1:{sim.port}"], "user": user, "token_id": token,
                        "token_secret": secret, "ca_file": str(sim.cafile)},
        "redis": {"url": redis_url},
        "balancing": balancing,
        "planner": {"settle_seconds": PlannerSettings().settle_seconds * scale},
        # the simulated cluster's links, as an operator would give the real ones (a time scale of 0.3 runs
        # migrations 1/0.3 times as fast: links of 10/0.3 Gbit/s, PVE's part 0.3 times as long)
        "migrator": {"link_gbit": 10 / scale, "setup_seconds": BASE_SECONDS * scale},
        "logging": {"format": "json", "level": "WARNING"},
    }


def run_pvebalance(name: str, scale: float, redis_url: str, workdir: Path) -> dict[str, Any]:
    sim, doc = simulator(name, scale, workdir)
    cfg = workdir / f"pvebalance-{name}.yaml"
    cfg.write_text(yaml.safe_dump(pvebalance_config(sim, doc, redis_url, scale)))
    redis = connect(redis_url)
    clear_pvebalance_keys(redis)
    start = Cluster(sim)
    env = worker_env(redis_url)

    def service(*args: str) -> subprocess.Popen[bytes]:
        log = (workdir / f"{name}-{args[0]}-{len(procs)}.log").open("wb")
        return subprocess.Popen([sys.executable, "-m", "pvebalance", *args, "-c", str(cfg)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)

    t0 = time.time()
    procs: list[subprocess.Popen[bytes]] = []
    procs.append(service("planner"))
    try:
        while not group_exists(redis, keys.SNAPSHOT_STREAM, keys.PLANNER_GROUP):  # it reads from where it started
            if procs[0].poll() is not None or time.time() > t0 + 120:
                said = (workdir / f"{name}-planner-0.log").read_text()[-500:]
                raise RuntimeError(f"the planner did not come up: {said}")
            time.sleep(0.05)
        procs += [service("collector"), *(service("migrator") for _ in range(3))]
        end, plans = confirmed(redis, t0)
    finally:
        stop_processes(procs)
        sim.stop()
    row = {"tool": "pvebalance", **measure(sim, start, t0), "end": f"{end:.1f} (confirmed)" if end else "no"}
    row["expected_vs_measured"] = ", ".join(plan_times(p, sim.cluster.stats.migrations) for p in plans)
    return row


def confirmed(redis: Redis, t0: float) -> tuple[float | None, list[Any]]:
    """Wait for a plan with nothing to move, made after every job ended; when it came (from t0), and the
    plans with migrations made on the way."""
    store, jobs = PlanStore(redis), JobStore(redis)
    plans: dict[str, Any] = {}
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        latest = store.latest()
        if latest is not None and latest.created_at.timestamp() >= t0:
            if latest.migrations:
                plans[latest.plan_id] = latest
            elif not jobs.active_jobs() and latest.created_at.timestamp() >= (jobs.last_change_at() or t0):
                return latest.created_at.timestamp() - t0, list(plans.values())
        time.sleep(0.1)
    return None, list(plans.values())


def plan_times(plan: Any, migrations: list[dict[str, Any]]) -> str:
    """The plan's expected time and the measured one: its first migration's start to its last one's end."""
    made = plan.created_at.timestamp()
    vmids = {m.vmid for m in plan.migrations}
    own = [m for m in migrations if m["vmid"] in vmids and m["start"] >= made]
    if not own:
        return f"{plan.expected_seconds:.0f} / -"
    took = max(m["end"] for m in own) - min(m["start"] for m in own)
    off = 100 * (took - plan.expected_seconds) / plan.expected_seconds
    return f"{plan.expected_seconds:.1f} / {took:.1f} ({off:+.0f} %)"


def run(runs: list[tuple[str, float]] | None = None) -> list[dict[str, Any]]:
    python = ensure_proxlb()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server, _ = local_redis(workdir)
        try:
            for name, scale in runs or RUNS:
                for tool in ("ProxLB", "pvebalance"):
                    row = run_proxlb(name, scale, python, workdir) if tool == "ProxLB" else \
                        run_pvebalance(name, scale, server.url, workdir)
                    rows.append({"scenario": name, "time_scale": scale, **row})
                    print(rows[-1], flush=True)
        finally:
            server.stop()
    return rows
