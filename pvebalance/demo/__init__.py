"""`pvebalance demo`: the whole pipeline on a simulated cluster, from one command.

simulator (HTTPS, in this process) <- collector -> Redis stream -> planner -> rq queue ->
migrator workers (separate processes) -> Proxmox tasks -> status events, shown as they arrive.

Redis: the one at --redis-url/REDIS_URL if it answers; otherwise one of the demo's own, a
redis-server binary when one is on PATH (the Redis production runs on), else fakeredis' TCP server
(a pip dependency, so the demo needs nothing but Python). Whichever is chosen is handed to the
workers explicitly: their settings would otherwise follow REDIS_URL, which may name another Redis.

The demo plans exactly as `pvebalance plan --scenario` does, the scenario's operator_config (its
pool rules) included, and says in one line why when it does not end balanced.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from redis import Redis
from rich import box
from rich.console import Console
from rich.table import Table

from pvebalance.cli.render import unmet_line, usage_table
from pvebalance.engine import Policy, initial_loads
from pvebalance.engine.cluster_plan import plan_cluster
from pvebalance.engine.load import summarize
from pvebalance.engine.storage_balance import plan_storage_balance
from pvebalance.services.collector.collector import Collector
from pvebalance.services.planner.planner import Planner
from pvebalance.shared import keys
from pvebalance.shared.apidump import operator_pools
from pvebalance.shared.config import ENV_PREFIX, PlannerSettings, StorageBalancingSettings, load_settings
from pvebalance.shared.jobs import JobState, JobStatusEvent
from pvebalance.shared.logging import configure_logging
from pvebalance.shared.models import ClusterSnapshot, Plan, UsageSummary
from pvebalance.shared.policy_now import policy_now
from pvebalance.shared.proxmox import ProxmoxClient
from pvebalance.shared.redisconn import answers, connect, redact
from pvebalance.shared.scenario import load_scenario
from pvebalance.simulator.server import Simulator

from .embedded_redis import local_redis

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
    doomed = [k for pattern in (f"{keys.PREFIX}:*", f"rq:*{keys.MIGRATION_QUEUE}*",
                                *(f"rq:{what}:{kind}-*" for what in ("job", "results", "executions")
                                  for kind in ("migrate", "move-disk")))
              for k in redis.scan_iter(match=pattern, count=1000)]
    if doomed:
        redis.delete(*doomed)
    return len(doomed)


def usage_of(snapshot: ClusterSnapshot, policy: Policy) -> UsageSummary:
    loads = initial_loads(snapshot, policy)
    names = [n.name for n in snapshot.nodes if n.online and not n.maintenance and n.name in loads]
    return summarize(loads, names)


def worker_env(redis_url: str) -> dict[str, str]:
    """The workers' environment: the demo's Redis named by the variable that wins over REDIS_URL."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return {**env, "PYTHONUNBUFFERED": "1", f"{ENV_PREFIX}REDIS__URL": redis_url}


def demo_config(dump: dict[str, Any], port: int, sim: Simulator, redis_url: str,
                storage: bool = False) -> dict[str, Any]:
    token_ident, token_secret = next(iter(sim.tokens.items()))
    user, token_id = token_ident.split("!")
    balancing: dict[str, Any] = {"method": "memory", "mode": "used", "balanciness": 5}
    if operator_pools(dump):
        balancing["pools"] = operator_pools(dump)  # as `plan --scenario`: the rules recorded with the cluster
    return {
        "proxmox_api": {"hosts": [f"127.0.0.1:{port}"], "user": user, "token_id": token_id,
                        "token_secret": token_secret, "ca_file": str(sim.cafile)},
        "redis": {"url": redis_url},
        "balancing": balancing,
        "collector": {"interval": 1},
        # The simulator's node figures lag by its figure_lag times its time scale (pvebalance/simulator/realism.py):
        # wait that much shorter for them to settle after a migration, as PVE's 10 s cycle is scaled there.
        "planner": {"settle_seconds": PlannerSettings().settle_seconds * sim.cluster.time_scale},
        "migrator": {"poll_interval": 0.2},
        "logging": {"format": "json"},
        "storage_balancing": {"enable": storage},
    }


@dataclass
class Outcome:
    """How following the jobs ended: settled (a plan found nothing to move), or why not."""

    settled: bool = False
    why: str = ""
    failed: dict[str, JobStatusEvent] = field(default_factory=dict)  # job id -> its failing event
    busy: set[str] = field(default_factory=set)  # jobs seen but not yet ended
    last_plan: Plan | None = None


def run_demo(scenario: str, redis_url: str | None, workers: int, time_scale: float, timeout: float,
             console: Console, storage: bool = False) -> bool:
    dump = load_scenario(scenario).doc  # a broken scenario fails here, before anything starts
    workdir = Path(tempfile.mkdtemp(prefix="pvebalance-demo-"))
    with ExitStack() as cleanup:
        log_stream = cleanup.enter_context((workdir / "services.log").open("w"))
        configure_logging("INFO", "json", stream=log_stream)
        sim = Simulator(dump, time_scale=time_scale)
        port = sim.start(0, certdir=workdir / "certs")
        cleanup.callback(sim.stop)
        console.print(f"[bold]pvebalance demo[/] on '{dump['name']}': {dump.get('description', '')}")
        console.print(f"  Proxmox VE simulator: https://127.0.0.1:{port}/api2/json (logs and config in {workdir})")
        redis_url = _choose_redis(redis_url, workdir, console, cleanup)

        config = demo_config(dump, port, sim, redis_url, storage)
        config_file = workdir / "pvebalance.yaml"
        config_file.write_text(yaml.safe_dump(config))
        # The chosen Redis wins over REDIS_URL here too (an init value outranks every variable).
        settings = load_settings(config_file, redis={"url": redis_url})
        redis = connect(redis_url)

        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "pvebalance", "migrator", "-c", str(config_file)],
                stdout=(workdir / f"worker-{i}.log").open("w"), stderr=subprocess.STDOUT, env=worker_env(redis_url),
            )
            for i in range(workers)
        ]
        cleanup.callback(stop_processes, procs)
        stop = threading.Event()
        collector = Collector(ProxmoxClient(settings.proxmox_api), redis)
        planner = Planner(redis, settings)
        planner.ensure_group()
        policy = policy_now(redis, settings)  # the planner's, as the API and best-node see it
        before = collector.snapshot()
        pools = ", ".join(f"{name} ({rule.get('type') or 'pin'})" for name, rule in operator_pools(dump).items())
        console.print(f"  {len(before.nodes)} nodes, {len(before.guests)} guests; {workers} migrator workers; "
                      f"balanciness {policy.balanciness} pp" + (f"; pool rules: {pools}" if pools else ""))
        threads = [
            threading.Thread(target=collector.run, args=(settings.collector.interval, stop), daemon=True),
            threading.Thread(target=planner.run, args=(stop,), daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            outcome = _follow(redis, console, timeout, procs, workdir)
        finally:
            stop.set()
            stop_processes(procs)
            for t in threads:
                t.join(5)
        after = collector.snapshot()

    u_before, u_after = usage_of(before, policy), usage_of(after, policy)
    console.print(usage_table("memory used per node", u_before, u_after))
    stats = sim.cluster.stats
    moved = sum(1 for m in stats.migrations if m["ok"])
    console.print(
        f"{moved} guests migrated through the simulator's API ({sum(stats.migrate_posts.values())} migrate "
        f"requests, at most {stats.max_concurrent} at once); spread {u_before.spread_pp:.1f} -> "
        f"{u_after.spread_pp:.1f} pp (target <= {policy.balanciness})"
    )
    for line in _pool_lines(after, operator_pools(dump)):
        console.print(line, highlight=False)
    if storage:
        print_storage_outcome(before, after, settings.storage_balancing, sim, console)
    why = outcome.why or _still_to_do(after, policy, settings.storage_balancing)
    if not why and u_after.spread_pp > policy.balanciness:
        why = f"spread {u_after.spread_pp:.1f} pp is above the target of {policy.balanciness}"
        why += _failures(outcome.failed)
    if why:
        console.print(f"[bold red]not balanced:[/] {why}", highlight=False, soft_wrap=True)
        return False
    console.print("[bold green]balanced[/]")
    return True


def _choose_redis(redis_url: str | None, workdir: Path, console: Console, cleanup: ExitStack) -> str:
    if redis_url and answers(redis_url):
        console.print(f"  Redis: {redact(redis_url)} (clearing pvebalance's keys there first)")
        clear_pvebalance_keys(connect(redis_url))
        return redis_url
    if redis_url:
        console.print(f"  Redis at {redact(redis_url)} does not answer: using one of the demo's own")
    server, what = local_redis(workdir)
    cleanup.callback(server.stop)
    console.print(f"  Redis: {what}", highlight=False, soft_wrap=True)
    return server.url


def _pool_lines(snapshot: ClusterSnapshot, pools: dict[str, dict[str, Any]]) -> list[str]:
    """Where the members of each pool with a rule ended: the rule, visibly kept (or not)."""
    where = {g.vmid: g.node for g in snapshot.guests}
    lines = []
    for name, rule in sorted(pools.items()):
        nodes = [where[v] for v in snapshot.pools.get(name, []) if v in where]
        lines.append(f"pool {name} ({rule.get('type') or 'pinned'}): {len(nodes)} guests on "
                     f"{len(set(nodes))} nodes ({', '.join(sorted(set(nodes)))})")
    return lines


def _still_to_do(after: ClusterSnapshot, policy: Policy, storage: StorageBalancingSettings) -> str:
    """Why the final state is not balanced, judged as `plan --scenario` would plan on it ('' if it is)."""
    final = plan_cluster(after, policy, storage)
    if final.unmet:
        return unmet_line(final.unmet[0])
    if final.migrations:
        reasons = sorted({m.reason.value for m in final.migrations})
        return (f"a plan on the final state still has {len(final.migrations)} migrations "
                f"({', '.join(reasons)}); spread {final.before.spread_pp:.1f} pp")
    if final.disk_moves:
        return f"a plan on the final state still has {len(final.disk_moves)} disk moves"
    return ""


def print_storage_outcome(before: ClusterSnapshot, after: ClusterSnapshot, storage: StorageBalancingSettings,
                          sim: Simulator, console: Console) -> None:
    """Each balanced storage's use before and after, as the collector read it, and the disk moves made."""
    first, last = plan_storage_balance(before, storage), plan_storage_balance(after, storage)
    table = Table(title="storage used per storage, %", box=box.SIMPLE_HEAD)
    for col in ("storage", "before %", "after %"):
        table.add_column(col, justify="left" if col == "storage" else "right")
    ended = {f.storage: f for f in last.storages}
    for f in first.storages:
        table.add_row(f.storage, f"{f.percent_before:.1f}", f"{ended[f.storage].percent_before:.1f}"
                      if f.storage in ended else "?")
    console.print(table)
    moves = sim.cluster.stats.disk_moves
    spreads = ", ".join(f"{'/'.join(g.storages)} {g.spread_before_pp:.1f} -> {a.spread_before_pp:.1f} pp"
                        for g, a in zip(first.groups, last.groups, strict=False))
    console.print(f"{sum(1 for m in moves if m.get('ok'))} disks moved through the simulator's API "
                  f"({len(moves)} move tasks); storage spread {spreads} (target <= {storage.balanciness:g})")


def _follow(redis: Redis, console: Console, timeout: float, procs: list[subprocess.Popen[Any]],
            workdir: Path) -> Outcome:
    """Print job events until a plan finds nothing left to move; otherwise say why it stopped."""
    from pvebalance.cli.base import read_events

    outcome = Outcome()
    last_event = "0-0"
    deadline = time.monotonic() + timeout
    shown_plans: set[str] = set()
    warned: set[str] = set()
    while time.monotonic() < deadline:
        if all(p.poll() is not None for p in procs):
            outcome.why = f"every migrator worker exited ({_last_line(workdir / 'worker-0.log')})"
            return outcome
        for entry_id, event in read_events(redis, after=last_event,
                                           warn=lambda text: console.print(f"  warning: {text}", highlight=False)):
            last_event = entry_id
            if event.state in (JobState.FAILED, JobState.SKIPPED):
                outcome.failed[event.job_id] = event
            else:
                outcome.failed.pop(event.job_id, None)
            (outcome.busy.discard if event.state.terminal else outcome.busy.add)(event.job_id)
            if event.state in (JobState.QUEUED, JobState.WAITING):
                continue
            extra = f" in {event.duration_s:.1f} s" if event.duration_s is not None else ""
            reason = f": {event.message}" if event.state in (JobState.FAILED, JobState.SKIPPED) else ""
            console.print(f"    {event.vmid:>6} {event.source} -> {event.target}  {_MARK[event.state]}{extra}{reason}")
        plan = _latest_plan(redis, console, warned)
        if plan is not None and plan.plan_id not in shown_plans:
            shown_plans.add(plan.plan_id)
            outcome.last_plan = plan
            if plan.actions:
                disks = f", {len(plan.disk_moves)} disk moves" if plan.disk_moves else ""
                console.print(f"  plan {plan.plan_id}: {len(plan.migrations)} migrations{disks}, spread "
                              f"{plan.before.spread_pp:.1f} -> {plan.after.spread_pp:.1f} pp expected")
            else:
                console.print(f"  plan {plan.plan_id}: spread {plan.before.spread_pp:.1f} pp, nothing to move")
                outcome.settled = True
                return outcome
        time.sleep(0.2)
    busy = f" with {len(outcome.busy)} jobs not ended" if outcome.busy else ""
    outcome.why = f"gave up after {timeout:.0f} s{busy}" + _failures(outcome.failed)
    return outcome


def _latest_plan(redis: Redis, console: Console, warned: set[str]) -> Plan | None:
    raw = redis.get(keys.PLAN_LATEST)
    if not raw:
        return None
    try:
        return Plan.model_validate_json(raw)
    except ValidationError as exc:  # a planner of another version: say so once, keep following jobs
        text = str(exc.errors(include_url=False)[0]["msg"])
        if text not in warned:
            warned.add(text)
            console.print(f"  warning: the latest plan cannot be read: {text}", highlight=False)
        return None


def _failures(failed: dict[str, JobStatusEvent]) -> str:
    if not failed:
        return ""
    shown = "; ".join(f"{e.vmid} {e.source} -> {e.target} {e.state.value}: {e.message}"
                      for e in list(failed.values())[:3])
    more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
    return f"; {len(failed)} jobs did not succeed ({shown}{more})"


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    last = lines[-1] if lines else "no output"
    return f"{log.name}: {last[:200]}"
