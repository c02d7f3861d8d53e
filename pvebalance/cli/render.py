"""Operator-facing output: plan JSON and readable tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pvebalance.engine.load import DIMENSIONS
from pvebalance.shared.models import (
    ClusterSnapshot,
    DiskMove,
    GuestType,
    Migration,
    Plan,
    StorageBalance,
    Unmet,
    UsageSummary,
)
from pvebalance.shared.words import actions_in_words, plural

from .tables import Lines


def plan_to_json(plan: Plan) -> dict[str, Any]:
    def usage(summary: UsageSummary) -> dict[str, Any]:
        # spread_pp and nodes: the first dimension's (what a plan of one dimension always said);
        # dimensions: each balanced dimension's, in the plan's order
        return {
            "spread_pp": round(summary.spread_pp, 2),
            "nodes": {name: round(u.percent, 2) for name, u in sorted(summary.nodes.items())},
            "dimensions": {dim: {"spread_pp": round(d.spread_pp, 2),
                                 "nodes": {name: round(u.percent, 2) for name, u in sorted(d.nodes.items())}}
                           for dim, d in summary.dimensions.items()},
        }

    return {
        "plan_id": plan.plan_id,
        "method": plan.method,
        "mode": plan.mode,
        "balanciness": plan.balanciness,
        "bands": plan.bands,
        "before": usage(plan.before),
        "after": usage(plan.after),
        "migrations": [
            {
                "vmid": m.vmid,
                "name": m.name,
                "type": m.type.value,
                "source": m.source,
                "target": m.target,
                "reason": m.reason.value,
                "detail": m.detail,
                "online": m.online,
                "gib_moved": round(m.gib_moved, 2),
                "batch": m.batch,
                "spread_after_pp": round(m.spread_after_pp, 2),
            }
            for m in plan.migrations
        ],
        "violations": plan.violations,
        "unmet": [u.model_dump() for u in plan.unmet],
        "notes": plan.notes,
        "held_out": plan.held_out,
        "gib_moved": round(sum(m.gib_moved for m in plan.migrations), 2),
        "expected_seconds": plan.expected_seconds,
        # every action in order, of every kind (migrations above are the migrate ones, as they always were)
        "actions": [a.model_dump(mode="json") for a in plan.actions],
        "outcome": plan.outcome,
        "outcome_reason": plan.outcome_reason,
        **({"storage": storage_to_json(plan.storage)} if plan.storage is not None else {}),
    }


def storage_to_json(storage: StorageBalance) -> dict[str, Any]:
    return {
        "balanciness": storage.band_pp,
        "max_usage": storage.max_usage,
        "before": {s: round(u.percent, 2) for s, u in sorted(storage.before.items())},
        "after": {s: round(u.percent, 2) for s, u in sorted(storage.after.items())},
        "groups": [g.model_dump() for g in storage.groups],
        "stays": storage.stays,
    }


# What a node's percentage means, per dimension and mode: said above the usage table (pvebalance/engine/load.py).
USAGE_MEANING: dict[tuple[str, str], str] = {
    (dim, mode): meaning for dim, row in DIMENSIONS.items() for mode, meaning in row.meaning.items()
}
RESTART_NOTE = "ct, restart: a container migrates by restart: stopped, moved, started (downtime)"


def usage_table(title: str, before: UsageSummary, after: UsageSummary, unit: str = "%",
                held_out: Mapping[str, str] | None = None) -> Table:
    """Each node before and after; a node in `held_out` is marked with the reason it is held out.
    Several dimensions: a column before and after for each."""
    held_out = held_out or {}
    table = Table(title=escape(title) if title else None)
    table.add_column("node")
    several = len(before.dimensions) > 1
    parts = [(f"{dim} ", before.dimensions[dim], after.dimensions.get(dim)) for dim in before.dimensions] \
        if several else [("", before, after)]
    for label, _, _ in parts:
        table.add_column(f"{label}before {unit}", justify="right")
        table.add_column(f"{label}after {unit}", justify="right")
    for name in sorted(before.nodes):
        cells = []
        for _, b, a in parts:
            cells += [f"{b.nodes[name].percent:.1f}" if name in b.nodes else "-",
                      f"{a.nodes[name].percent:.1f}" if a is not None and name in a.nodes else "nan"]
        shown = f"{name} ({held_out[name]})" if name in held_out else name
        table.add_row(escape(shown), *cells)
    spreads = []
    for _, b, a in parts:
        spreads += [f"{b.spread_pp:.1f}", f"{a.spread_pp:.1f}" if a is not None else "nan"]
    table.add_row("spread (pp)", *spreads, style="bold")
    return table


def migrations_table(plan: Plan) -> Lines:
    # Two spaces between columns: nine columns fit an 80-column terminal (the name cut short first:
    # the vmid says which guest it is).
    first = f" ({plan.method.split(',')[0]})" if "," in plan.method else ""  # several: the spread is the first's
    table = Lines(f"{plural(len(plan.migrations), 'migration')}, in order",
                  ("#", "vmid", "name", "type", "move", "reason", "GiB", "batch", "spread"),
                  right=("#", "vmid", "GiB", "batch", "spread"), shrink="name",
                  caption=f"GiB: memory copied live + local disks copied; spread: pp after the move{first}")
    for i, m in enumerate(plan.migrations, 1):
        kind = "ct, restart" if m.type is GuestType.LXC else "vm"
        table.add_row(str(i), str(m.vmid), m.name, kind, f"{m.source} -> {m.target}", m.reason.value,
                      f"{m.gib_moved:.1f}", str(m.batch), f"{m.spread_after_pp:.1f}")
    return table


def plan_summary(plan: Plan) -> str:
    """One line: how many migrations, how much they copy, and how long the plan is expected to take."""
    gib = sum(m.gib_moved for m in plan.migrations)
    line = f"{plural(len(plan.migrations), 'migration')}, {gib:.1f} GiB copied"
    if plan.expected_seconds:  # 0: not scheduled (a plan read from elsewhere), no time to promise
        line += f", expected to finish in {duration(plan.expected_seconds)} at the migrator's limits"
    return line


def duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {s} s" if minutes else f"{s} s"


def print_plan(plan: Plan, console: Console) -> None:
    for dim in plan.method.split(","):
        meaning = USAGE_MEANING.get((dim, plan.mode), "%")
        console.print(f"{dim} usage ({plan.mode}): {meaning}", markup=False, highlight=False)
    console.print(usage_table("", plan.before, plan.after, held_out=plan.held_out))
    if plan.held_out:
        console.print(f"spread (pp) leaves out {', '.join(sorted(plan.held_out))}: nothing moves onto "
                      f"{'them' if len(plan.held_out) > 1 else 'it'}", markup=False, highlight=False)
    if not plan.migrations:
        # "needed" only when nothing is to do: an infeasible plan has no migration and is no good news
        console.print("No migrations needed." if plan.outcome == "balanced" or nodes_within_bands(plan) else
                      f"No migrations: no safe move helps ({plan.outcome}; why below).")
    else:
        console.print(migrations_table(plan))
        console.print(plan_summary(plan), markup=False, highlight=False)
        if any(m.type is GuestType.LXC for m in plan.migrations):
            console.print(RESTART_NOTE, markup=False, highlight=False)
    if plan.storage is not None:
        print_storage(plan, plan.storage, console)
    print_other_actions(plan, console)
    for note in plan.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    for unmet in plan.unmet:
        console.print(unmet_line(unmet), markup=False, highlight=False)


def unmet_line(unmet: Unmet) -> str:
    """A rule the plan leaves unmet, with the guests it names, if any (a dimension's band names none)."""
    guests = f" for {', '.join(str(v) for v in unmet.vmids)}" if unmet.vmids else ""
    return f"unmet rule {unmet.rule}{guests}: {unmet.reason}"


def print_other_actions(plan: Plan, console: Console) -> None:
    """Actions of the kinds without a table of their own above (pvebalance/actions/), each in its own words."""
    others = [(i, a) for i, a in enumerate(plan.actions, 1) if not isinstance(a, Migration | DiskMove)]
    if not others:
        return
    table = Table(title=f"{actions_in_words(a for _, a in others)}, in the plan's order", box=box.SIMPLE_HEAD,
                  pad_edge=False, show_edge=False, collapse_padding=True)
    for col in ("#", "kind", "action", "batch"):
        table.add_column(col, justify="right" if col in ("#", "batch") else "left", no_wrap=True, overflow="ellipsis")
    for i, a in others:
        table.add_row(str(i), a.kind, escape(a.describe()), str(a.batch))
    console.print(table)


def nodes_within_bands(plan: Plan) -> bool:
    """Every balanced dimension within its band before the plan: the nodes need no migration."""
    if plan.bands and plan.before.dimensions:
        return all(d in plan.before.dimensions and plan.before.dimensions[d].spread_pp <= b
                   for d, b in plan.bands.items())
    return plan.before.spread_pp <= plan.balanciness


def print_storage(plan: Plan, storage: StorageBalance, console: Console) -> None:
    """Storage balancing's part: each balanced storage before and after, then the disk moves in order."""
    table = Table(title=f"storage use, % of each storage (balanciness {storage.band_pp:g} pp, none above "
                  f"{storage.max_usage:g} %)", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for col in ("storage", "GiB", "before %", "after %"):
        table.add_column(col, justify="left" if col == "storage" else "right")
    for name, before in sorted(storage.before.items()):
        after = storage.after[name]
        table.add_row(escape(name), f"{before.total / 2**30:.0f}", f"{before.percent:.1f}", f"{after.percent:.1f}")
    console.print(table)
    moves = plan.disk_moves
    if not moves:
        console.print("No disk moves needed." if not any(g.spread_after_pp > storage.band_pp for g in storage.groups)
                      else "No disk moves: none helps (why below).", markup=False, highlight=False)
        return
    table = Table(title=f"{plural(len(moves), 'disk move')}, in order", box=box.SIMPLE_HEAD, pad_edge=False,
                  show_edge=False, collapse_padding=True, caption="a batch starts once the one before it has ended")
    for col in ("#", "vmid", "name", "type", "disk", "move", "GiB", "batch"):
        table.add_column(col, justify="right" if col in ("#", "vmid", "GiB", "batch") else "left", no_wrap=True,
                         overflow="ellipsis")
    for i, m in enumerate(moves, 1):
        table.add_row(str(i), str(m.vmid), escape(m.name), m.guest_type.value, m.disk, f"{m.source} -> {m.target}",
                      f"{m.gib:.1f}", str(m.batch))
    console.print(table)
    console.print(f"{plural(len(moves), 'disk move')}, {sum(m.size for m in moves) / 2**30:.1f} GiB copied between "
                  "storages", markup=False, highlight=False)


def snapshot_table(snapshot: ClusterSnapshot) -> Table:
    table = Table(title=f"cluster {snapshot.cluster or '?'} at {snapshot.taken_at:%Y-%m-%d %H:%M:%S} UTC"
                  + ("" if snapshot.quorate else " (NOT QUORATE)"))
    for col in ("node", "state", "guests", "running", "mem %", "cpu %"):
        table.add_column(col, justify="left" if col in ("node", "state") else "right")
    for n in sorted(snapshot.nodes, key=lambda n: n.name):
        on = [g for g in snapshot.guests if g.node == n.name]
        state = "offline" if not n.online else "maintenance" if n.maintenance else "online"
        table.add_row(n.name, state, str(len(on)), str(sum(g.running for g in on)),
                      f"{100 * n.mem / n.maxmem:.1f}", f"{100 * n.cpu:.1f}")
    return table
