"""Operator-facing output: plan JSON and readable tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from pvebalance.shared.models import ClusterSnapshot, Plan, UsageSummary


def plan_to_json(plan: Plan) -> dict[str, Any]:
    def usage(summary: UsageSummary) -> dict[str, Any]:
        return {
            "spread_pp": round(summary.spread_pp, 2),
            "nodes": {name: round(u.percent, 2) for name, u in sorted(summary.nodes.items())},
        }

    return {
        "plan_id": plan.plan_id,
        "method": plan.method,
        "mode": plan.mode,
        "balanciness": plan.balanciness,
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
    }


def usage_table(title: str, before: UsageSummary, after: UsageSummary, unit: str = "%") -> Table:
    table = Table(title=title)
    table.add_column("node")
    table.add_column(f"before {unit}", justify="right")
    table.add_column(f"after {unit}", justify="right")
    for name in sorted(before.nodes):
        b = before.nodes[name].percent
        a = after.nodes[name].percent if name in after.nodes else float("nan")
        table.add_row(name, f"{b:.1f}", f"{a:.1f}")
    table.add_row("spread (pp)", f"{before.spread_pp:.1f}", f"{after.spread_pp:.1f}", style="bold")
    return table


def print_plan(plan: Plan, console: Console) -> None:
    console.print(usage_table(f"{plan.method} usage ({plan.mode})", plan.before, plan.after))
    if not plan.migrations:
        console.print("No migrations needed.")
    else:
        table = Table(title=f"{len(plan.migrations)} migrations, in order")
        for col in ("#", "vmid", "name", "type", "source", "target", "reason", "GiB", "batch", "spread after"):
            table.add_column(col, justify="right" if col in ("#", "vmid", "GiB", "batch") else "left")
        for i, m in enumerate(plan.migrations, 1):
            table.add_row(
                str(i), str(m.vmid), m.name, m.type.value, m.source, m.target, m.reason.value,
                f"{m.gib_moved:.1f}", str(m.batch), f"{m.spread_after_pp:.1f}",
            )
        console.print(table)
    for note in plan.notes:
        console.print(f"note: {note}")
    for unmet in plan.unmet:
        console.print(f"unmet rule {unmet.rule} for {unmet.vmids}: {unmet.reason}")


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
