"""The band plan for several dimensions at once: pick the box of bands the nodes end in (one band
per dimension, each as wide as its own `balanciness`), then move the fewest guests that bring every
node into the box in every dimension.

band.py does this for one dimension, where a guest's load is one number and "the smallest guest
that fills the lack" is found by bisection. With several, a guest is a vector (memory and CPU, say)
and a node may be above the box in one dimension and inside or below it in another, so each choice
is scored in bands: a node's distance outside the box, per dimension, in widths of that dimension's
band on that node (`band_box.Box.outside`), added up over the dimensions. The choices
themselves (which unit to shed, which to fill with) are band_box.py's.

For a box (lo_i for each dimension, hi_i = lo_i + band_i):

1. every node outside the box from above sheds, one unit at a time, the unit that takes it furthest
   towards the box (its excess lowered, less any lack it opens below the box), the larger on ties;
2. each node lacking (below the box in some dimension), the one lacking least first, takes shed
   units: the smallest that fills every lack without passing the box's top, else the one covering
   the most lack; then, if the shed units run out, units from nodes with load to spare in every
   dimension, the same way;
3. shed units no node needed go where the box has most room.

The box is found by coordinate search: each dimension's lo in turn over a grid between its mean
less its band and its mean (the capacity-weighted mean must lie in every band), the others held;
twice over. The box with the fewest moves (then the least data) wins, and the caller replays it move
by move through `PlanState` (rules and room checked at each step), as it does the one-dimension plan.
Large clusters look at fewer positions: the search is bounded by work, the same input gives the
same plan.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

import numpy as np  # several dimensions only (band.py loads this module for them), as improve.py

from .band import _EDGE, BandPlan, _Disks
from .band_box import TINY, Box, Figures, NodeUnits, Unit, choose, choose_in_pool, filler, to_shed, window
from .load import Vector
from .search import Sizer
from .state import PlanState

_STEPS = 6  # lo positions per dimension tried between mean - band and mean ...
_STEPS_LARGE = 3  # ... or this many on clusters of more than _LARGE units
_LARGE = 2000
_ROUNDS = 2  # passes of the coordinate search over the dimensions
_SCAN = 48  # units looked at on each side of where the best one should lie ...
_SOURCES = 8  # ... and nodes with load to spare asked for a unit, the most spare first;
_SCAN_LARGE, _SOURCES_LARGE = 48, 8  # on clusters of more than _LARGE units
_PASSES = 4  # shed-then-fill passes per box


def box_plan(state: PlanState, units: Iterable[frozenset[int]], first_only: bool = False) -> BandPlan | None:
    """The fewest-moves plan over the boxes tried (None when no box works). `first_only`: the plan
    for the first box the search tries, each band centred on its dimension's mean (room_probe.py)."""
    nodes = state.targets
    count = len(state.dims)
    sizer = Sizer(state)
    found: dict[str, list[tuple[float, int, Vector, frozenset[int]]]] = {n: [] for n in nodes}
    for vmids in units:
        node = state.where[min(vmids)]
        load = state.load_of(vmids)
        if node in found and any(x > 0 for x in load):
            found[node].append((-sizer.size(load), min(vmids), load, vmids))
    rows: list[Unit] = []  # every unit: each node's by falling size, then key, in a run
    offsets = {}
    for n, listed in found.items():
        offsets[n] = offset = len(rows)
        rows += [Unit(load, -neg, vmids, sum(state.guests[v].mem + state.guests[v].local_disk for v in vmids), key, n,
                      offset + index)
                 for index, (neg, key, load, vmids) in enumerate(sorted(listed, key=lambda x: x[:2]))]
    figures = Figures(rows, count, nodes)
    by_node = {n: NodeUnits(rows[offsets[n]:offsets[n] + len(listed)], figures, offsets[n])
               for n, listed in found.items()}
    total = len(rows)
    means = state.means()
    widths = tuple(b - 2 * _EDGE if b < 1e8 else 1e9 for b in state.bands)
    if min(widths) <= 0:
        return None
    free = [i for i in range(count) if widths[i] < 1e8]  # dimensions held to a band
    steps = _STEPS if total <= _LARGE else _STEPS_LARGE
    lo = [means[i] - widths[i] / 2 if i in free else -1e9 for i in range(count)]

    def at(position: list[float]) -> BandPlan:
        scan, sources = (_SCAN_LARGE, _SOURCES_LARGE) if total > _LARGE else (_SCAN, _SOURCES)
        return _plan_for(state, figures, by_node, sizer, Box(state, tuple(position), widths, scan, sources))

    def better(plan: BandPlan, best: BandPlan) -> bool:  # every node in the box first, then the fewest moves
        def key(p: BandPlan) -> tuple[bool, float, int, int]:
            partial = p.residual > TINY
            return partial, p.residual if partial else 0.0, len(p.moves), p.data
        return key(plan) < key(best)

    if first_only:
        return at(lo)
    if total > _LARGE:
        return _diagonal_search(at, better, means, widths, free, lo)
    best = at(lo)
    for _ in range(_ROUNDS):
        for i in free:
            for step in range(steps + 1):
                trial = list(lo)
                trial[i] = means[i] - widths[i] + widths[i] * step / steps
                plan = at(trial)
                if better(plan, best):
                    best, lo = plan, trial
    return best


def _diagonal_search(at: Callable[[list[float]], BandPlan], better: Callable[[BandPlan, BandPlan], bool],
                     means: Vector, widths: Vector, free: list[int], lo: list[float]) -> BandPlan:
    """The box search on large clusters, in few plans: every dimension's lo at the same fraction of
    its range (the diagonal, inside its ends: where a node must shed in one dimension it mostly must
    in the other), then each dimension half a step either way of the best. A coordinate search from the middle
    wandered off among boxes no plan completes (ranked by how far they fall short)."""
    best, centre = at(lo), lo
    for step in range(1, _STEPS_LARGE):  # not the ends (the box's edge on the mean): no plan of theirs won
        trial = [means[i] - widths[i] + widths[i] * step / _STEPS_LARGE if i in free else lo[i] for i in range(len(lo))]
        plan = at(trial)
        if better(plan, best):
            best, centre = plan, trial
    for i in free:
        for side in (-0.5, 0.5):
            trial = list(centre)
            trial[i] += side * widths[i] / _STEPS_LARGE
            if means[i] - widths[i] <= trial[i] <= means[i]:
                plan = at(trial)
                if better(plan, best):
                    best = plan
    return best


def _plan_for(state: PlanState, figures: Figures, nodes: dict[str, NodeUnits], sizer: Sizer, box: Box) -> BandPlan:
    """The moves for one box; where some node cannot be brought into it, the moves found so far,
    with how far the nodes are left outside (`residual`, in bands): the caller finishes such a plan
    with the greedy one (balance._balance)."""
    plan = BandPlan(box.low[box.nodes[0]][0])
    disks = _Disks(state)
    free = np.ones(len(figures.units), dtype=bool)  # each unit's, by its row: not taken yet
    pool: list[int] = []  # the rows of the units shed, not yet placed: by falling size, then key ...
    keys: list[tuple[float, int]] = []  # ... which these are
    for _ in range(_PASSES):  # a node may be above in one dimension and below in another: shed, fill, again
        for n in sorted(box.nodes):
            while box.outside(n, box.now[n])[0] > TINY:
                u = to_shed(box, n, nodes[n], free)
                if u is None:
                    break
                box.shift(n, u.load, -1.0)
                free[u.row] = False
                at = bisect_left(keys, (-u.size, u.key))
                pool.insert(at, u.row)
                keys.insert(at, (-u.size, u.key))
        for n in sorted(box.nodes, key=lambda x: (box.lacking(x), x)):
            while box.lacking(n) > TINY:
                pick = choose_in_pool(state, disks, box, figures, n, window(keys, pool, box, n, sizer))
                from_pool = pick is not None
                if pick is None:
                    pick = filler(state, disks, box, figures, nodes, free, sizer, n)
                if pick is None:  # nothing fits under the box's top: the unit that helps most, if any
                    pick = choose(state, disks, box, figures, n, pool[:4 * box.scan], over_top=True)
                    from_pool = True
                    if pick is None:
                        break
                if from_pool:
                    at = bisect_left(keys, (-pick.size, pick.key))
                    del pool[at], keys[at]
                else:
                    box.shift(pick.node, pick.load, -1.0)
                    free[pick.row] = False
                box.shift(n, pick.load, 1.0)
                disks.add(pick.vmids, n)
                plan.moves.append((pick.vmids, n))
                plan.data += pick.data
        if all(box.outside(n, box.now[n]) == (0.0, 0.0) for n in box.nodes):
            break
    complete = all(box.outside(n, box.now[n]) == (0.0, 0.0) for n in box.nodes)
    for u in (figures.units[r] for r in pool):  # what no lacking node needed: where the box has most room
        target = next((t for t in box.roomiest(u.load, u.node) if state.allows(u.vmids, t)
                       and disks.room_for(u.vmids, t)), None) if complete else None
        target = target or u.node
        box.shift(target, u.load, 1.0)
        if target != u.node:
            disks.add(u.vmids, target)
            plan.moves.append((u.vmids, target))
            plan.data += u.data
    plan.residual = sum(sum(box.outside(n, box.now[n])) for n in box.nodes)
    return plan
