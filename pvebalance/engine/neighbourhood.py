"""Fewer migrations for a plan of several dimensions where the whole exact model is too large
(balance.EXACT_MAX_WORK): the exact model (exact.py) over a neighbourhood of the plan only.

The guests the model may move are the plan's own and, on each node, its largest in each dimension
(`SHORTLIST` of each: the guests that shift a node most per migration); every other guest stays
where it is. The model keeps every row of the whole one (each dimension's band, the memory and
storage limits, every rule family's constraints), asks for fewer migrations than the plan has, and
is bounded by HiGHS nodes (`NODE_LIMIT`), never by the clock. A placement it finds is
ordered move by move through PlanState (exact.order_placement: rules and room at every step), and
kept only when that order ends balanced. Each step that finds one starts the next from it, up to
`ROUNDS` solves in all. Together-groups come whole: a guest of one is a candidate with all of its
group or not at all (the model ties a group's members to one node).
"""

from __future__ import annotations

import numpy as np

from pvebalance.shared.models import ClusterSnapshot

from .exact import PlacementModel, _candidates, order_placement, whole_units
from .policy import Policy
from .rules import Constraints
from .state import PlanState

SHORTLIST = 10  # guests per node and dimension, the largest there, beside the plan's own
FEWEST = 8  # ... and no fewer (else no solve: a neighbourhood so small seldom holds a better plan)
ROUNDS = 2  # solves in all
NODE_LIMIT = 10  # HiGHS branch-and-bound nodes per solve
MAX_WORK = 1000  # candidates x nodes x dimensions, as balance.EXACT_MAX_WORK: the model's size
# No restart of the search after presolving again at the root: on these small models (operator-rules
# memory,cpu: 317 columns, 95 rows) the restart took half of each solve (0.40 -> 0.20 s) and changed no
# bundled scenario's plan (every one compared, memory, cpu and memory,cpu). Ending a solve at its first
# placement with fewer migrations saved a quarter of its time but handed the search a few nodes at a
# time (node_subsets.py) a plan it took three times as long over (operator-rules memory,cpu): not so.
OPTIONS: dict[str, float | bool] = {"mip_allow_restart": False}


def fewer_nearby(snapshot: ClusterSnapshot, policy: Policy, constraints: Constraints,
                 plan: PlanState) -> PlanState | None:
    """A balanced plan with fewer migrations than `plan`, found as the module says; None if none."""
    best: PlanState | None = None
    for _ in range(ROUNDS):
        found = _one_solve(snapshot, policy, constraints, best or plan)
        if found is None:
            break
        best = found
    return best


def _one_solve(snapshot: ClusterSnapshot, policy: Policy, constraints: Constraints,
               plan: PlanState) -> PlanState | None:
    state = PlanState(snapshot, policy, constraints)
    movable = set(_candidates(state))
    moved = {m.guest.vmid for m in plan.moves}
    count = len(plan.moves)
    for shortlist in range(SHORTLIST, FEWEST - 1, -1):  # as many as the model's size allows
        chosen = whole_units(state, (moved | _largest(state, movable, shortlist)) & movable, movable)
        if len(chosen) * len(state.targets) * len(state.dims) <= MAX_WORK:
            break
    else:
        return None  # too large a model even with few: the neighbourhood would be the plan's own moves
    if not chosen or not moved <= chosen:
        return None  # a move of the plan the model cannot make (a guest it may not move): not comparable
    model = PlacementModel(state, sorted(chosen))
    model.balance_rows(state.policy)
    for family in constraints.families:
        family.exact(constraints, model)
    cost = model.costs()
    model.row([(col, 1.0) for col in range(len(cost)) if cost[col] > 0], -np.inf, count - 1.0)
    res, column = model.solve(cost, node_limit=NODE_LIMIT, time_limit=None, options=OPTIONS)
    if res.x is None:
        return None
    placement = {g: n for (g, n), col in model.index.items() if col in column and res.x[column[col]] > 0.5}
    ordered = order_placement(snapshot, policy, constraints, placement)
    if ordered is None or not ordered.balanced() or len(ordered.moves) >= count:
        return None
    return ordered


def _largest(state: PlanState, movable: set[int], shortlist: int) -> set[int]:
    """On each node, its `shortlist` largest movable guests in each dimension."""
    out: set[int] = set()
    for node in state.targets:
        here = sorted(v for v in movable if state.where[v] == node)
        for i in range(len(state.dims)):
            out.update(sorted(here, key=lambda v: (-state.guest_load(v)[i], v))[:shortlist])
    return out

