"""`pvebalance demo`: the whole pipeline on a simulated cluster, from one command.

simulator (HTTPS, in this process) <- collector -> Redis stream -> planner -> rq queue ->
migrator workers (separate processes) -> Proxmox tasks -> status events, shown as they arrive.

Redis: the one at --redis-url/REDIS_URL if it answers, otherwise an embedded fakeredis TCP server.
fakeredis is chosen over starting a redis-server binary because it is a pip dependency: the demo
then needs nothing but Python, and the workers still talk to it over a real socket.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from redis import Redis
from rich.console import Console

from pvebalance.engine import Policy, initial_loads
from pvebalance.engine.load import summarize
from pvebalance.services.collector.collector import Collector
from pvebalance.services.planner.planner import Planner
from pvebalance.shared import keys
from pvebalance.shared.apidump import load_dump
from pvebalance.shared.config import load_settings
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.logging import configure_logging
from pvebalance.shared.models import ClusterSnapshot, JobState, Plan, UsageSummary
from pvebalance.shared.proxmox import ProxmoxClient
from pvebalance.shared.redisconn import answers, connect, redact
from pvebalance.simulator.server import Simulator

from .embedded_redis import EmbeddedRedis
from .render import usage_table

_MARK = {JobState.SUCCEEDED: "ok", JobState.FAILED: "FAILED", JobState.SKIPPED: "skipped",
         JobState.RUNNING: "running", JobState.WAITING: "waiting", JobState.QUEUED: "queued",
         JobState.CANCELLED: "cancelled"}


def stop_processes(procs: list[subprocess.Popen[Any]], grace: float = 10) -> None:
    """Ask each process to stop, then kill what is still running after the grace period."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()


def clear_pvebalance_keys(redis: Redis) -> int:
    doomed = [k for pattern in (f"{keys.PREFIX}:*", f"rq:*{keys.MIGRATION_QUEUE}*", "rq:job:migrate-*",
                                "rq:results:migrate-*", "rq:executions:migrate-*")
              for k in redis.scan_iter(match=pattern, count=1000)]
    if doomed:
        redis.delete(*doomed)
    return len(doomed)


def usage_of(snapshot: ClusterSnapshot, policy: Policy) -> UsageSummary:
    loads = initial_loads(snapshot, policy)
    names = [n.name for n in snapshot.nodes if n.online and not n.maintenance]
    return summarize(loads, names)


def run_demo(scenario: str, redis_url: str | None, workers: int, time_scale: float, timeout: float,
             console: Console) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="pvebalance-demo-"))
    log_stream = (workdir / "services.log").open("w")
    configure_logging("INFO", "json", stream=log_stream)
    dump = load_dump(scenario)
    sim = Simulator(dump, time_scale=time_scale)
    port = sim.start(0, certdir=workdir / "certs")
    console.print(f"[bold]pvebalance demo[/] on '{dump['name']}': {dump.get('description', '')}")
    console.print(f"  Proxmox VE simulator: https://127.0.0.1:{port}/api2/json (logs and config in {workdir})")

    embedded: EmbeddedRedis | None = None
    if redis_url and answers(redis_url):
        console.print(f"  Redis: {redact(redis_url)} (clearing pvebalance's keys there first)")
        clear_pvebalance_keys(connect(redis_url))
    else:
        if redis_url:
            console.print(f"  Redis at {redact(redis_url)} does not answer: using an embedded one")
        embedded = EmbeddedRedis()
        redis_url = embedded.url
        console.print(f"  Redis: embedded (fakeredis over TCP) at {redis_url}")

    token_ident, token_secret = next(iter(sim.tokens.items()))
    user, token_id = token_ident.split("!")
    config = {
        "proxmox_api": {"hosts": [f"127.0.0.1:{port}"], "user": user, "token_id": token_id,
                        "token_secret": token_secret, "ca_file": str(sim.cafile)},
        "redis": {"url": redis_url},
        "balancing": {"method": "memory", "mode": "used", "balanciness": 5},
        "collector": {"interval": 1},
        "migrator": {"poll_interval": 0.2},
        "logging": {"format": "json"},
    }
    config_file = workdir / "pvebalance.yaml"
    config_file.write_text(yaml.safe_dump(config))
    settings = load_settings(config_file)
    policy = Policy.from_settings(settings.balancing, settings.proxmox_cluster)
    redis = connect(redis_url)

    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pvebalance", "migrator", "-c", str(config_file)],
            stdout=(workdir / f"worker-{i}.log").open("w"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for i in range(workers)
    ]
    stop = threading.Event()
    collector = Collector(ProxmoxClient(settings.proxmox_api), redis)
    planner = Planner(redis, settings)
    planner.ensure_group()
    before = collector.snapshot()
    console.print(f"  {len(before.nodes)} nodes, {len(before.guests)} guests; "
                  f"{workers} migrator workers; balanciness {policy.balanciness} pp")
    threads = [
        threading.Thread(target=collector.run, args=(settings.collector.interval, stop), daemon=True),
        threading.Thread(target=planner.run, args=(stop,), daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        done = _follow(redis, console, timeout, procs)
    finally:
        stop.set()
        stop_processes(procs)
        for t in threads:
            t.join(5)
    after = collector.snapshot()
    sim.stop()
    if embedded:
        embedded.stop()
    log_stream.close()

    u_before, u_after = usage_of(before, policy), usage_of(after, policy)
    console.print(usage_table("memory used per node", u_before, u_after))
    stats = sim.cluster.stats
    moved = sum(1 for m in stats.migrations if m["ok"])
    console.print(
        f"{moved} guests migrated through the simulator's API ({sum(stats.migrate_posts.values())} migrate "
        f"requests, at most {stats.max_concurrent} at once); spread {u_before.spread_pp:.1f} -> "
        f"{u_after.spread_pp:.1f} pp (target <= {policy.balanciness})"
    )
    ok = done and u_after.spread_pp <= policy.balanciness
    console.print("[bold green]balanced[/]" if ok else "[bold red]not balanced[/] (see the logs above)")
    return ok


def _follow(redis: Redis, console: Console, timeout: float, procs: list[subprocess.Popen[Any]]) -> bool:
    """Print job events until a plan finds nothing left to move; False on timeout."""
    store = JobStore(redis)
    last_event = "0-0"
    deadline = time.monotonic() + timeout
    shown_plans: set[str] = set()
    while time.monotonic() < deadline:
        if all(p.poll() is not None for p in procs):
            console.print("[red]every migrator worker exited[/]")
            return False
        for entry_id, event in store.events(after=last_event):
            last_event = entry_id
            mark = _MARK[event.state]
            extra = f" in {event.duration_s:.1f} s" if event.duration_s is not None else ""
            reason = f": {event.message}" if event.state in (JobState.FAILED, JobState.SKIPPED) else ""
            if event.state in (JobState.QUEUED, JobState.WAITING):
                continue
            console.print(f"    {event.vmid:>6} {event.source} -> {event.target}  {mark}{extra}{reason}")
        raw = redis.get(keys.PLAN_LATEST)
        if raw:
            plan = Plan.model_validate_json(raw)
            if plan.plan_id not in shown_plans:
                shown_plans.add(plan.plan_id)
                if plan.migrations:
                    console.print(
                        f"  plan {plan.plan_id}: {len(plan.migrations)} migrations, spread "
                        f"{plan.before.spread_pp:.1f} -> {plan.after.spread_pp:.1f} pp expected"
                    )
                else:
                    console.print(f"  plan {plan.plan_id}: spread {plan.before.spread_pp:.1f} pp, nothing to move")
                    return True
        time.sleep(0.2)
    console.print(f"[red]gave up after {timeout:.0f} s[/]")
    return False
