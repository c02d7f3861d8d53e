"""Node usage per resource, now and after the moves of the current plan still to come.

Both come from the engine's own load model (engine/load.py), one dimension at a time, with the
operator's mode and reservations: the bar for the balanced dimension is exactly what the plan's
`before` shows, and "after" moves each guest's load as the engine does when it plans.
"""

from __future__ import annotations

from dataclasses import replace

from pvebalance.engine import Policy
from pvebalance.engine.load import guest_load, initial_loads
from pvebalance.engine.policy import Method
from pvebalance.engine.rules import build_constraints
from pvebalance.engine.state import PlanState
from pvebalance.shared.models import ClusterSnapshot, Migration

RESOURCES: tuple[Method, ...] = ("memory", "cpu", "disk")


def usage_percent(snapshot: ClusterSnapshot, policy: Policy,
                  pending: list[Migration] | None = None) -> dict[str, dict[str, float | None]]:
    """node -> resource -> percent of what the node offers guests (None: the node has none of it).

    `pending`: moves not yet carried out, applied to the snapshot's placement (the "after" view).
    """
    guests = {g.vmid: g for g in snapshot.guests}
    out: dict[str, dict[str, float | None]] = {n.name: {} for n in snapshot.nodes}
    for resource in RESOURCES:
        one = replace(policy, method=resource)
        loads = initial_loads(snapshot, one)
        where = {vmid: g.node for vmid, g in guests.items()}
        for move in pending or []:  # in the plan's order: a parked guest's second move starts where the first ended
            guest = guests.get(move.vmid)
            if guest is None or where[move.vmid] != move.source or move.target not in loads or move.source not in loads:
                continue  # done already (the snapshot has the guest elsewhere), or a node not planned on
            amount = guest_load(guest, one)
            loads[move.source].load -= amount
            loads[move.target].load += amount
            where[move.vmid] = move.target
        for name in out:
            load = loads.get(name)
            out[name][resource] = round(load.percent, 2) if load is not None and load.capacity > 0 else None
    return out


def spread_now(snapshot: ClusterSnapshot, policy: Policy) -> float:
    """The engine's spread of the balanced dimension (percentage points), as a plan's `before` says."""
    return round(PlanState(snapshot, policy, build_constraints(snapshot, policy)).spread(), 3)
