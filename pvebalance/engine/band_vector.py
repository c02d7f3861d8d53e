"""The band plan for several dimensions at once: pick the box of bands the nodes end in (one band
per dimension, each as wide as its own `balanciness`), then move the fewest guests that bring every
node into the box in every dimension.

band.py does this for one dimension, where a guest's load is one number and "the smallest guest
that fills the lack" is found by bisection. With several, a guest is a vector (memory and CPU, say)
and a node may be above the box in one dimension and inside or below it in another, so each choice
is scored in bands: a node's distance outside the box, per dimension, in widths of that dimension's
band on that node (`_Box.outside`), added up over the dimensions.

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

from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np  # several dimensions only (band.py loads this module for them), as improve.py

from .band import _EDGE, BandPlan, _Disks
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
_TINY = 1e-9
_PASSES = 4  # shed-then-fill passes per box
_SHORTLIST = 16  # units a node above the box chooses among, per dimension


@dataclass(frozen=True)
class _Sizes:
    """A node's units as box_plan lists them (by falling size): their sizes negated, for bisect, and
    their loads as one array (unit x dimension), for `_filler`'s window."""
    sizes: list[float]
    loads: np.ndarray


@dataclass(frozen=True, eq=False)  # compared by identity: a unit is one object, looked up in lists
class _Unit:
    load: Vector
    size: float  # Sizer: the load as one number, to sort by
    vmids: frozenset[int]
    data: int
    key: int  # the smallest vmid: the stable tie-break


class _Box:
    """One position of the box: each node's bounds and its load as the plan takes shape."""

    def __init__(self, state: PlanState, lo: Vector, widths: Vector, large: bool) -> None:
        self.scan, self.sources = (_SCAN_LARGE, _SOURCES_LARGE) if large else (_SCAN, _SOURCES)
        self.nodes = state.targets
        self.count = len(lo)
        self.now = {n: list(state.loads[n].load) for n in self.nodes}
        caps = {n: state.loads[n].capacity for n in self.nodes}
        self.low = {n: [lo[i] * caps[n][i] / 100.0 for i in range(self.count)] for n in self.nodes}
        self.high = {n: [(lo[i] + widths[i]) * caps[n][i] / 100.0 for i in range(self.count)] for n in self.nodes}
        # load units -> bands on that node (an unbounded dimension counts for nothing)
        self.scale = {n: [100.0 / (caps[n][i] * widths[i]) if widths[i] < 1e8 else 0.0 for i in range(self.count)]
                      for n in self.nodes}

    def outside(self, n: str, load: list[float] | Vector) -> tuple[float, float]:
        """How far a load on node n lies above the box and below it, in bands (summed over dimensions)."""
        above = below = 0.0
        for x, lo, hi, scale in zip(load, self.low[n], self.high[n], self.scale[n], strict=True):
            if x > hi:
                above += (x - hi) * scale
            elif x < lo:
                below += (lo - x) * scale
        return above, below

    def fits_under(self, n: str, load: Vector) -> bool:
        return all(now + x <= hi for x, now, hi in zip(load, self.now[n], self.high[n], strict=True))

    def room(self, n: str) -> float:
        """The least room under the box's top over the dimensions, in bands (bounded ones only)."""
        return min(((self.high[n][i] - self.now[n][i]) * self.scale[n][i] for i in range(self.count)
                    if self.scale[n][i] > 0), default=0.0)

    def shift(self, n: str, load: Vector, sign: float) -> None:
        for i in range(self.count):
            self.now[n][i] += sign * load[i]

    def lacking(self, n: str) -> float:
        return self.outside(n, self.now[n])[1]


def box_plan(state: PlanState, units: Iterable[frozenset[int]]) -> BandPlan | None:
    """The fewest-moves plan over the boxes tried (None when no box works)."""
    nodes = state.targets
    count = len(state.dims)
    sizer = Sizer(state)
    by_node: dict[str, list[_Unit]] = {n: [] for n in nodes}
    total = 0
    for vmids in units:
        node = state.where[min(vmids)]
        load = state.load_of(vmids)
        if node in by_node and any(x > 0 for x in load):
            data = sum(state.guests[v].mem + state.guests[v].local_disk for v in vmids)
            by_node[node].append(_Unit(load, sizer.size(load), vmids, data, min(vmids)))
            total += 1
    for listed in by_node.values():
        listed.sort(key=lambda u: (-u.size, u.key))
    neg = {n: _Sizes([-u.size for u in listed],
                     np.array([u.load for u in listed], dtype=float).reshape(len(listed), count))
           for n, listed in by_node.items()}
    # a node sheds among its largest units in each dimension (a node above in one dimension only
    # needs what is large in that one): _SHORTLIST per dimension, by falling load there
    shortlist = {n: _shortlist(listed, count) for n, listed in by_node.items()}
    means = state.means()
    widths = tuple(b - 2 * _EDGE if b < 1e8 else 1e9 for b in state.bands)
    if min(widths) <= 0:
        return None
    free = [i for i in range(count) if widths[i] < 1e8]  # dimensions held to a band
    steps = _STEPS if total <= _LARGE else _STEPS_LARGE
    lo = [means[i] - widths[i] / 2 if i in free else -1e9 for i in range(count)]

    def at(position: list[float]) -> BandPlan:
        return _plan_for(state, by_node, shortlist, neg, sizer, _Box(state, tuple(position), widths, total > _LARGE))

    def better(plan: BandPlan, best: BandPlan) -> bool:  # every node in the box first, then the fewest moves
        def key(p: BandPlan) -> tuple[bool, float, int, int]:
            partial = p.residual > _TINY
            return partial, p.residual if partial else 0.0, len(p.moves), p.data
        return key(plan) < key(best)

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


def _shortlist(units: list[_Unit], count: int) -> list[list[_Unit]]:
    """For each dimension, the node's units by falling load in it (a unit of no load there last)."""
    return [sorted(units, key=partial(_by_load, i)) for i in range(count)]


def _by_load(i: int, u: _Unit) -> tuple[float, int]:
    return -u.load[i], u.key


def _plan_for(state: PlanState, by_node: dict[str, list[_Unit]], shortlist: dict[str, list[list[_Unit]]],
              neg: dict[str, _Sizes], sizer: Sizer, box: _Box) -> BandPlan:
    """The moves for one box; where some node cannot be brought into it, the moves found so far,
    with how far the nodes are left outside (`residual`, in bands): the caller finishes such a plan
    with the greedy one (balance._balance)."""
    plan = BandPlan(box.low[box.nodes[0]][0])
    disks = _Disks(state)
    taken: set[int] = set()
    pool: list[_Unit] = []  # shed, not yet placed: by falling size
    source_of: dict[int, str] = {}
    for _ in range(_PASSES):  # a node may be above in one dimension and below in another: shed, fill, again
        for n in sorted(box.nodes):
            while box.outside(n, box.now[n])[0] > _TINY:
                u = _to_shed(box, n, shortlist[n], taken)
                if u is None:
                    break
                box.shift(n, u.load, -1.0)
                taken.add(u.key)
                source_of[u.key] = n
                insort(pool, u, key=lambda x: (-x.size, x.key))
        for n in sorted(box.nodes, key=lambda x: (box.lacking(x), x)):
            while box.lacking(n) > _TINY:
                keys = [-u.size for u in pool]
                near = [u for u in _window(pool, keys, box, n, sizer) if source_of[u.key] != n]
                pick = _choose(state, disks, box, n, near)
                source = None
                if pick is None:
                    found = _filler(state, disks, box, by_node, neg, taken, sizer, n)
                    if found is None:  # nothing fits under the box's top: the unit that helps most, if any
                        anywhere = [u for u in pool[:4 * box.scan] if source_of[u.key] != n]
                        pick = _choose(state, disks, box, n, anywhere, over_top=True)
                        if pick is None:
                            break
                    else:
                        pick, source = found
                if source is None:
                    pool.remove(pick)
                else:
                    box.shift(source, pick.load, -1.0)
                    taken.add(pick.key)
                box.shift(n, pick.load, 1.0)
                disks.add(pick.vmids, n)
                plan.moves.append((pick.vmids, n))
                plan.data += pick.data
        if all(box.outside(n, box.now[n]) == (0.0, 0.0) for n in box.nodes):
            break
    complete = all(box.outside(n, box.now[n]) == (0.0, 0.0) for n in box.nodes)
    for u in pool:  # what no lacking node needed: where the box has most room (else it stays)
        room = sorted((-box.room(t), t) for t in box.nodes if t != source_of[u.key] and box.fits_under(t, u.load))
        target = next((t for _, t in room if state.allows(u.vmids, t) and disks.room_for(u.vmids, t)), None) \
            if complete else None
        target = target or source_of[u.key]
        box.shift(target, u.load, 1.0)
        if target != source_of[u.key]:
            disks.add(u.vmids, target)
            plan.moves.append((u.vmids, target))
            plan.data += u.data
    plan.residual = sum(sum(box.outside(n, box.now[n])) for n in box.nodes)
    return plan


def _to_shed(box: _Box, n: str, shortlist: list[list[_Unit]], taken: set[int]) -> _Unit | None:
    """The unit whose leaving takes node n furthest towards the box: its excess above the box
    lowered, less the lack below the box it opens; the larger on ties. When every unit opens more
    lack than it removes excess (a node above in one dimension, at the bottom in another), the one
    that removes the excess opening the least lack: a later pass fills that."""
    above, below = box.outside(n, box.now[n])
    best: tuple[float, ...] | None = None
    choice = None
    for u in _first_free(shortlist, taken):
        after = [box.now[n][i] - u.load[i] for i in range(box.count)]
        a, b = box.outside(n, after)
        if a >= above - _TINY:
            continue  # it lowers no excess
        gain = (above - a) - (b - below)
        key = (0.0, -gain, -u.size, float(u.key)) if gain > _TINY else (1.0, a, b, -u.size, float(u.key))
        if best is None or key < best:
            best, choice = key, u
    return choice


def _first_free(shortlist: list[list[_Unit]], taken: set[int]) -> Iterator[_Unit]:
    """The first _SHORTLIST units not taken in each dimension's list (a unit in two, once)."""
    seen: set[int] = set()
    for listed in shortlist:
        found = 0
        for u in listed:
            if found == _SHORTLIST:
                break
            if u.key in taken:
                continue
            found += 1
            if u.key not in seen:
                seen.add(u.key)
                yield u


def _window(pool: list[_Unit], keys: list[float], box: _Box, n: str, sizer: Sizer) -> Iterator[_Unit]:
    """The pool's units that could fill node n's lack, nearest first: those no larger than its room
    allows, from about the size of its lack both ways (a unit under the box's top in every dimension
    is no larger than the room's size; one filling every lack no smaller than the lack's)."""
    room = sizer.size(tuple(max(box.high[n][i] - box.now[n][i], 0.0) for i in range(box.count)))
    lack = sizer.size(tuple(max(box.low[n][i] - box.now[n][i], 0.0) for i in range(box.count)))
    start = bisect_left(keys, -room - _TINY)  # pool is sorted by falling size: from `start` on, size <= room
    split = max(bisect_left(keys, -lack, lo=start), start)  # before `split`: at least the lack's size
    for i in range(split - 1, max(start - 1, split - 1 - box.scan), -1):
        yield pool[i]
    for i in range(split, min(len(pool), split + box.scan)):
        yield pool[i]


def _choose(state: PlanState, disks: _Disks, box: _Box, n: str, candidates: Iterable[_Unit],
            over_top: bool = False) -> _Unit | None:
    """Among the candidates under the box's top on node n: the smallest that fills every lack, else
    the one that leaves the least lack, its largest dimension's counted twice (the larger on ties):
    a unit that fills the lack of one dimension while another's stays deep takes the room a later
    unit needs to fill that one (large-5k, memory and CPU: 293 migrations counting the sum only, 275
    so); the first the rules and the storages allow.
    `over_top`: any candidate, by the lack it covers less the excess it opens (when above 0)."""
    keyed = _ranked(box, n, candidates, over_top)
    return next((u for _, u in keyed if state.allows(u.vmids, n) and disks.room_for(u.vmids, n)), None)


def _ranked(box: _Box, n: str, candidates: Iterable[_Unit],
            over_top: bool = False) -> list[tuple[tuple[float, ...], _Unit]]:
    lack = box.lacking(n)
    keyed: list[tuple[tuple[float, ...], _Unit]] = []
    rows = list(zip(box.now[n], box.low[n], box.high[n], box.scale[n], strict=True))  # the hot loop's figures
    for u in candidates:
        opened = left = most = 0.0
        for x, (now, lo, hi, scale) in zip(u.load, rows, strict=True):
            after = now + x
            if after > hi:
                opened += (after - hi) * scale
            elif after < lo:
                short = (lo - after) * scale
                left += short
                most = max(most, short)
        if opened > 0 and not over_top:
            continue  # above the box's top in some dimension
        if left >= lack - _TINY or (over_top and lack - left - opened <= _TINY):
            continue  # it covers none of the lack (or opens as much excess)
        if over_top:
            key: tuple[float, ...] = (2.0, opened - (lack - left), -u.size, float(u.key))
        else:
            key = (0.0, u.size, float(u.key)) if left <= _TINY else (1.0, left + most, left, -u.size, float(u.key))
        keyed.append((key, u))
    keyed.sort(key=lambda pair: pair[0])
    return keyed


def _filler(state: PlanState, disks: _Disks, box: _Box, by_node: dict[str, list[_Unit]],
            neg: dict[str, _Sizes], taken: set[int], sizer: Sizer, target: str) -> tuple[_Unit, str] | None:
    """A unit from a node with load to spare in every dimension (it stays in the box without it),
    chosen as `_choose` does; the nodes with the most to spare are asked first."""
    spare = sorted((-min(((box.now[s][i] - box.low[s][i]) * box.scale[s][i] for i in range(box.count)
                           if box.scale[s][i] > 0), default=0.0), s) for s in box.nodes if s != target)
    best: tuple[tuple[float, ...], _Unit, str] | None = None
    for minus, source in spare[:box.sources]:
        if minus >= 0:
            break
        units = by_node[source]
        room = sizer.size(tuple(max(box.high[target][i] - box.now[target][i], 0.0) for i in range(box.count)))
        start = bisect_left(neg[source].sizes, -room - _TINY)
        near = units[start:start + 2 * box.scan]
        spare_at = [now - lo for now, lo in zip(box.now[source], box.low[source], strict=True)]
        # each unit's load no more than the node can spare in every dimension: at once for the window
        spared = np.all(neg[source].loads[start:start + 2 * box.scan] <= spare_at, axis=1).tolist()
        candidates = [u for u, ok in zip(near, spared, strict=True) if ok and u.key not in taken]
        for key, u in _ranked(box, target, candidates):
            if best is not None and key >= best[0]:
                break
            if state.allows(u.vmids, target) and disks.room_for(u.vmids, target):
                best = (key, u, source)
                break
    return (best[1], best[2]) if best else None
