"""Commands that only read: best-node (placement), plans, requests."""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pvebalance.engine import Policy
from pvebalance.engine.placement import PlacementRequest, place
from pvebalance.shared.config import load_settings
from pvebalance.shared.models import GuestType
from pvebalance.shared.requests import RequestStore
from pvebalance.shared.retention import Retention
from pvebalance.shared.scenario import load_scenario

from .base import ConfigOpt, UserError, app, config_file, err, settings_of
from .render import print_plan
from .tables import compact, id_column, plural, text_columns, when

UNITS = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str, option: str, bare: str | None) -> int:
    """'8G', '512M', '1.5T' -> bytes. A bare number is in `bare` units ('m': MiB, as `qm set --memory`
    takes it), or refused when `bare` is None (a disk: `qm` reads a bare disk size as GiB, its
    --memory as MiB; a guess either way would be 1024 times off)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?\s*", text.lower())
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"{option} {text!r}: give a size such as 512M, 8G or 1T")
    unit = match.group(2) or bare
    if unit is None:
        raise UserError(f"{option} {text!r}: give a unit, e.g. {match.group(1)}G or {match.group(1)}M")
    return int(float(match.group(1)) * UNITS[unit])


@app.command("best-node")
def best_node(
    memory: Annotated[str, typer.Option(help="the new guest's memory, e.g. 8G; a bare number is MiB, as in "
                                              "`qm set --memory`")],
    cores: Annotated[int, typer.Option(min=1, help="its vCPUs")] = 1,
    disk: Annotated[str | None, typer.Option(help="its disk size with a unit, e.g. 32G")] = None,
    local: Annotated[bool, typer.Option("--local", help="the disk is on the node's local storage")] = False,
    tags: Annotated[str, typer.Option(help="plb_* tags it will carry, comma-separated")] = "",
    pool: Annotated[str | None, typer.Option(help="the pool it joins")] = None,
    ct: Annotated[bool, typer.Option("--ct", help="a container (default: a VM)")] = False,
    scenario: Annotated[str | None, typer.Option(help="answer offline on a recorded cluster")] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="the answer as JSON")] = False,
) -> None:
    """The best node for a new guest under every rule, reservation and limit; the runner-ups; why not
    the others. Offline on --scenario, else on the collector's latest snapshot."""
    from pvebalance.shared.redisconn import connect

    request = PlacementRequest(memory=parse_size(memory, "--memory", bare="m"), cores=cores,
                               disk=parse_size(disk, "--disk", bare=None) if disk else 0, local=local,
                               type=GuestType.LXC if ct else GuestType.QEMU,
                               tags=[t.strip().lower() for t in tags.split(",") if t.strip()], pool=pool)
    config = config_file(config, warn=not scenario)  # offline, the defaults are a fine policy
    if scenario:
        recorded = load_scenario(scenario)
        settings = recorded.settings(config)
        snapshot = recorded.snapshot
        policy = Policy.from_settings(settings.balancing, settings.proxmox_cluster)
    else:
        from pvebalance.shared.policy_now import policy_now, snapshot_now

        settings = load_settings(config)
        redis = connect(settings.redis)
        latest = snapshot_now(redis)  # with the migrations in flight (both nodes hold their memory)
        if latest is None:
            raise UserError("no snapshot of the cluster in Redis yet: is the collector running? "
                            "(or answer offline with --scenario)")
        snapshot = latest
        policy = policy_now(redis, settings)  # the planner's own: drained nodes and maintenance windows count
    answer = place(snapshot, policy, request)
    if as_json:
        sys.stdout.write(answer.model_dump_json(indent=2) + "\n")
        if answer.best is None:
            raise typer.Exit(2)
        return
    if answer.best is None:
        raise UserError(answer.reason)
    table = Table(title="nodes that may take it, best first")
    columns = ["node", f"{answer.method} % after"] + (["memory % after"] if answer.method != "memory" else [])
    for col in columns:
        table.add_column(col, justify="left" if col == "node" else "right")
    for choice in answer.ranked:
        table.add_row(choice.node, f"{choice.percent_after:.1f}",
                      *([f"{choice.memory_percent_after:.1f}"] if answer.method != "memory" else []))
    console = Console()
    console.print(f"best node: [bold]{answer.best}[/bold]")
    console.print(table)
    for node, why in sorted(answer.refused.items()):
        console.print(f"not {node}: {why}", markup=False, highlight=False)


@app.command()
def plans(
    plan_id: Annotated[str | None, typer.Argument(help="show this plan in full")] = None,
    config: ConfigOpt = None,
    count: Annotated[int, typer.Option(help="how many recent plans")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recent plans and their states (recommended, running, done, superseded, rejected, dry-run), with why."""
    from pvebalance.shared.plans import PlanStore
    from pvebalance.shared.redisconn import connect

    settings = settings_of(config)
    store = PlanStore(connect(settings.redis), Retention(settings.retention))
    if plan_id:
        plan, status = store.plan(plan_id), store.status(plan_id)
        if plan is None:
            raise UserError(f"no plan {plan_id} ({store.retention.plans_kept()})")
        if as_json:
            sys.stdout.write(plan.model_dump_json(indent=2) + "\n")
            return
        console = Console()
        console.print(f"plan {plan.plan_id}: {status.state.value if status else '?'}"
                      f"{' (' + status.reason + ')' if status and status.reason else ''}; "
                      f"{plan.outcome}: {plan.outcome_reason}", markup=False, highlight=False)
        print_plan(plan, console)
        return
    recent = store.recent(count)
    if as_json:
        rows = [{"plan_id": p.plan_id, "created_at": p.created_at.isoformat(), "state": s.state.value if s else None,
                 "reason": s.reason if s else None, "outcome": p.outcome, "migrations": len(p.migrations),
                 "spread_before_pp": p.before.spread_pp, "spread_after_pp": p.after.spread_pp} for p, s in recent]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = compact(plural(len(recent), "recent plan"))
    id_column(table, "plan", [p.plan_id for p, _ in recent])
    text_columns(table, "made", "state", "outcome", "moves", "spread pp", "why", right=("moves",),
                 whole=("made",))
    for p, s in recent:
        table.add_row(p.plan_id, when(p.created_at), s.state.value if s else "?", p.outcome, str(len(p.migrations)),
                      f"{p.before.spread_pp:.1f} -> {p.after.spread_pp:.1f}", s.reason if s else "")
    Console().print(table)


@app.command()
def requests(
    request_id: Annotated[str | None, typer.Argument(help="show this request in full")] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recent operator requests (drain, approve, pause, ...) and how each ended."""
    from pvebalance.shared.redisconn import connect

    settings = settings_of(config)
    store = RequestStore(connect(settings.redis), Retention(settings.retention))
    if request_id:
        status = store.status(request_id)
        if status is None:
            raise UserError(f"no request {request_id} ({store.retention.requests_kept()})")
        sys.stdout.write(status.model_dump_json(indent=2) + "\n")
        return
    recent = store.recent()
    if as_json:
        sys.stdout.write("[" + ",".join(s.model_dump_json() for s in recent) + "]\n")
        return
    table = compact(plural(len(recent), "recent request"))
    id_column(table, "request", [s.request.request_id for s in recent])
    text_columns(table, "asked", "action", "who", "state", "ended", "reason", whole=("asked", "ended"))
    for s in recent:
        table.add_row(s.request.request_id, when(s.request.at), s.request.action.value, s.request.who, s.state.value,
                      when(s.updated_at) if s.state.final else "", s.reason)
    Console().print(table)
    if not recent:
        err.print("no requests yet", highlight=False)
