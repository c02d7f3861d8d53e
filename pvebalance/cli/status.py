"""`pvebalance status [--json]`: what the balancer is doing now, in one screen.

The mode of operation is the running planner's (it publishes it with its heartbeat): the config the
CLI reads may not be the planner's. Without a planner the CLI's own config says it, marked so.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from pvebalance.shared import keys
from pvebalance.shared.config import Settings
from pvebalance.shared.models import ClusterSnapshot, parse_known

from .base import ConfigOpt, app, settings_of
from .tables import compact, id_column, plural, text_columns, when

if TYPE_CHECKING:
    from redis import Redis


def _json(redis: Redis, key: str) -> dict[str, Any] | None:
    raw = redis.get(key)
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def gather(redis: Redis, settings: Settings) -> dict[str, Any]:
    """Everything `status` shows, as plain data (its --json)."""
    from rq import Queue, Worker

    from pvebalance.shared.heartbeat import alive
    from pvebalance.shared.jobstore import JobStore
    from pvebalance.shared.planner_mode import published
    from pvebalance.shared.plans import PlanStore
    from pvebalance.shared.redisconn import redact

    planner = published(redis)
    if planner is not None:
        mode = {"mode_of_operation": planner.mode_of_operation, "enable": planner.enable, "from": "planner"}
    else:
        mode = {"mode_of_operation": settings.balancing.mode_of_operation, "enable": settings.balancing.enable,
                "from": "config"}
    snapshot = parse_known(ClusterSnapshot, redis.get(keys.SNAPSHOT_LATEST))
    pause = _json(redis, keys.PAUSED)
    drained = [{"node": (k.decode() if isinstance(k, bytes) else k), **json.loads(v)}
               for k, v in sorted(redis.hgetall(keys.DRAINED).items())]
    plans, jobs = PlanStore(redis), JobStore(redis)
    plan = plans.latest()
    status = plans.status(plan.plan_id) if plan else None
    active = []
    ids = sorted(jobs.active_jobs())
    for job_id, record in zip(ids, jobs.load_many(ids), strict=True):
        payload = json.loads(record.payload) if record.payload else {}
        active.append({"job_id": job_id, "vmid": payload.get("vmid"), "name": payload.get("name"),
                       "source": payload.get("source"), "target": payload.get("target"),
                       "state": record.fields.get("state"), "message": record.message, "since": record.updated_at})
    return {
        "redis": redact(settings.redis.url),
        "mode": mode,
        "services": {"collector": len(alive(redis, "collector")), "planner": len(alive(redis, "planner")),
                     "migrators": Worker.count(queue=Queue(keys.MIGRATION_QUEUE, connection=redis))},
        "snapshot": None if snapshot is None else {
            "cluster": snapshot.cluster, "taken_at": snapshot.taken_at.isoformat(),
            "age_s": round(snapshot.age_seconds(), 1)},
        "paused": pause,
        "drained": drained,
        "maintenance_nodes": sorted(settings.proxmox_cluster.maintenance_nodes),
        "plan": None if plan is None else {
            "plan_id": plan.plan_id, "created_at": plan.created_at.isoformat(),
            "state": status.state.value if status else None, "state_reason": status.reason if status else "",
            "outcome": plan.outcome, "outcome_reason": plan.outcome_reason, "migrations": len(plan.migrations)},
        "active_jobs": active,
    }


def mode_text(mode: dict[str, Any]) -> str:
    what = {"automatic": "automatic: plans run as made", "manual": "manual: plans wait for `pvebalance approve`",
            "dry-run": "dry-run: plans are shown, never run"}.get(str(mode["mode_of_operation"]),
                                                                 str(mode["mode_of_operation"]))
    off = "" if mode["enable"] else "; balancing.enable is off: plans are only recommended"
    source = "as the running planner reports it" if mode["from"] == "planner" else "this config's: no planner seen"
    return f"{what}{off} ({source})"


def pause_text(pause: dict[str, Any] | None) -> str:
    if not pause:
        return "no"
    until = pause.get("until")
    left = f"until {when(until)} ({max(0, round((until - time.time()) / 60))} min left)" if until else \
        "until `pvebalance resume`"
    reason = f": {pause['reason']}" if pause.get("reason") else " (no reason given)"
    return f"by {pause.get('who', '?')} since {when(pause.get('since'))}, {left}{reason}"


def print_status(data: dict[str, Any], console: Console) -> None:
    def line(label: str, text: str) -> None:
        head = f"{label + ':' if label else '':<12} "
        wrapped = textwrap.wrap(text, width=max(console.width - len(head), 20), break_long_words=False,
                                break_on_hyphens=False) or [""]
        for i, part in enumerate(wrapped):
            console.print((head if i == 0 else " " * len(head)) + part, markup=False, highlight=False, soft_wrap=True)

    services = data["services"]
    snap = data["snapshot"]
    line("redis", data["redis"])
    line("mode", mode_text(data["mode"]))
    line("services", f"collector {services['collector']}, planner {services['planner']}, "
         f"{plural(services['migrators'], 'migrator')}; " +
         (f"latest snapshot of {snap['cluster'] or 'the cluster'} {snap['age_s']:.0f} s old" if snap
          else "no snapshot yet (is the collector running?)"))
    line("paused", pause_text(data["paused"]))
    drained = [f"{d['node']} (by {d.get('who', '?')} since {when(d.get('at'))}"
               f"{', stopped guests too' if d.get('include_stopped') else ''})" for d in data["drained"]]
    line("drained", "; ".join(drained) or "none")
    if data["maintenance_nodes"]:
        line("maintenance", ", ".join(data["maintenance_nodes"]) + " (proxmox_cluster.maintenance_nodes)")
    plan = data["plan"]
    if plan is None:
        line("plan", "none yet")
    else:
        state = f"{plan['state']}" + (f" ({plan['state_reason']})" if plan["state_reason"] else "")
        line("plan", f"{plan['plan_id']}, made {when(plan['created_at'])}: {state}")
        line("", f"{plan['outcome']}: {plan['outcome_reason']}")
    jobs = data["active_jobs"]
    line("jobs", f"{plural(len(jobs), 'active job')}" + (" (`pvebalance jobs JOB` for one)" if jobs else ""))
    if jobs:
        table = compact()
        id_column(table, "job", [j["job_id"] for j in jobs])
        text_columns(table, "vmid", "move", "state", "since", "message", right=("vmid",), whole=("since", "move"))
        for j in jobs:
            table.add_row(j["job_id"], str(j["vmid"]), f"{j['source']} -> {j['target']}", str(j["state"]),
                          when(j["since"]), j["message"])
        console.print(table)


@app.command()
def status(config: ConfigOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="the same as one JSON object")] = False) -> None:
    """The mode of operation, a pause (why, until when), drained nodes, the current plan and its state,
    the active migration jobs."""
    from pvebalance.shared.redisconn import connect

    settings = settings_of(config)
    data = gather(connect(settings.redis.url), settings)
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    print_status(data, Console())
