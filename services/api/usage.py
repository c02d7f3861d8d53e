"""Node usage per resource, now and after the moves of the current plan still to come.

Both come from the engine's own load model (pvebalance/engine/load.py), every dimension of its DIMENSIONS
(the one list of them), with the operator's mode and reservations: the bar of a balanced dimension is
exactly what the plan's `before` shows, and "after" moves each guest's load as the engine does when
it plans.
"""

from __future__ import annotations

from dataclasses import replace

from pvebalance.engine import Policy
from pvebalance.engine.load import DIMENSIONS, guest_load, initial_loads, spreads
from pvebalance.engine.rules import build_constraints
from pvebalance.engine.state import PlanState
from pvebalance.shared.models import ClusterSnapshot, Migration

RESOURCES: tuple[str, ...] = tuple(DIMENSIONS)


def usage_percent(snapshot: ClusterSnapshot, policy: Policy,
                  pending: list[Migration] | None = None) -> dict[str, dict[str, float | None]]:
    """node -> resource -> percent of what the node offers guests (None: the node has none of it).

    `pending`: moves not yet carried out, applied to the snapshot's placement (the "after" view).
    """
    every = replace(policy, method=",".join(RESOURCES))  # one pass, every dimension
    loads = initial_loads(snapshot, every)
    guests = {g.vmid: g for g in snapshot.guests}
    where = {vmid: g.node for vmid, g in guests.items()}
    for move in pending or []:  # in the plan's order: a parked guest's second move starts where the first ended
        guest = guests.get(move.vmid)
        if guest is None or where[move.vmid] != move.source or move.target not in loads or move.source not in loads:
            continue  # done already (the snapshot has the guest elsewhere), or a node not planned on
        amount = guest_load(guest, every)
        loads[move.source].add(amount, -1.0)
        loads[move.target].add(amount)
        where[move.vmid] = move.target
    out: dict[str, dict[str, float | None]] = {}
    for n in snapshot.nodes:
        load = loads.get(n.name)
        out[n.name] = {r: round(load.percent_in(i), 2) if load is not None and load.capacity[i] > 0 else None
                       for i, r in enumerate(RESOURCES)}
    return out


def spreads_now(snapshot: ClusterSnapshot, policy: Policy) -> dict[str, float]:
    """The engine's spread of each balanced dimension (percentage points), as a plan's `before` says."""
    state = PlanState(snapshot, policy, build_constraints(snapshot, policy))
    return {d: round(s, 3) for d, s in zip(state.dims, spreads(state.loads, state.targets, len(state.dims)),
                                           strict=True)}
