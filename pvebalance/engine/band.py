"""A second balance plan built for few migrations: pick the band the nodes end in, then move the
fewest guests that bring every node into it.

The greedy balance phase (search.py) lowers the variance of node usage step by step; on large
clusters that takes more moves than needed, because variance rewards guests of the "ideal" size
rather than few guests. Here, for each position `lo` of a band [lo, lo + balanciness] (the weighted
mean must lie in it, so only that range is tried, on a fixed grid):

1. every node above the band sheds its largest units that keep it from dropping below `lo`, until
   it is inside (the fewest units, and among those the most load, which the nodes below need);
2. each node below the band, the one lacking least first, takes shed units with the least overshoot:
   the largest while none fills its lack, then the smallest that does;
3. if the shed units run out, it takes units from nodes with load to spare above `lo` the same way;
   shed units no node below the band needed go where the band has most room.

The band with the fewest moves (then the least data, then the lowest `lo`) wins; the caller keeps it
when it needs fewer migrations than the greedy plan (see balance._balance), after replaying it move by move through
`PlanState` (rules and room checked at each step, as for every plan). Pure arithmetic on a fixed
grid with stable tie-breaks: the same input gives the same plan.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from copy import copy
from dataclasses import dataclass, field, replace
from itertools import chain

from pvebalance.shared.models import MigrationReason

from . import fit
from .search import Sizer
from .state import PlanState

COARSE_STEPS = 12  # band positions tried between mean - balanciness and mean
FINE_STEPS = 4  # then this many on each side of the best of them, between it and its neighbours
_EDGE = 0.02  # pp kept clear of the band's edges, so rounding never puts a node outside it


@dataclass
class BandPlan:
    lo: float
    moves: list[tuple[frozenset[int], str]] = field(default_factory=list)  # (unit, target), in no order
    data: int = 0
    residual: float = 0.0  # several dimensions: how far the nodes stay outside the box, in bands (0: none)


@dataclass(frozen=True)
class _Unit:
    load: float
    vmids: frozenset[int]
    data: int
    key: int  # the smallest vmid: the stable tie-break


class _Disks:
    """The local disks the band plan has sent to each node's storages so far: a unit goes to a
    target only if its disks fit there on top of them (fit.storage_refusal), as `apply_in_order`
    will ask of each move; without this a band plan could need a storage no order allows."""

    def __init__(self, state: PlanState) -> None:
        self.state = state
        self.figures: dict[frozenset[int], fit.GuestFigures] = {}  # a unit's: asked of many targets
        self.nodes: dict[str, fit.NodeFigures] = {}  # each target's with the disks sent there: asked of many units

    def room_for(self, vmids: frozenset[int], target: str) -> bool:
        arriving = self._figures(vmids)
        return not arriving.disks or fit.storage_refusal(arriving, self._node(target), self.state.policy) is None

    def add(self, vmids: frozenset[int], target: str) -> None:
        arriving = self._figures(vmids)
        if arriving.disks:  # its disks only: the memory is apply_in_order's to check, step by step
            self.nodes[target] = self._node(target).arrive(fit.GuestFigures(0, 0, False, arriving.disks))

    def _node(self, target: str) -> fit.NodeFigures:
        node = self.nodes.get(target)
        return node if node is not None else self.state.loads[target].figures

    def _figures(self, vmids: frozenset[int]) -> fit.GuestFigures:
        known = self.figures.get(vmids)
        if known is None:
            known = self.figures[vmids] = fit.GuestFigures.of(self.state.guests[v] for v in vmids)
        return known


def clone(state: PlanState) -> PlanState:
    """An independent copy of a plan's state (what a move changes is copied; the rest is shared)."""
    twin = copy(state)
    twin.loads = {n: replace(load, load=list(load.load)) for n, load in state.loads.items()}
    twin.where = dict(state.where)
    twin.moves = list(state.moves)
    twin.moved = set(state.moved)
    twin.inflow = copy(state.inflow)
    return twin


def band_plan(state: PlanState, units: Iterable[frozenset[int]], only: int | None = None) -> BandPlan | None:
    """The fewest-moves plan over the band grid (None when no band position works). Several
    dimensions: a box of bands instead (band_vector.py), unless `only` names the one to plan for
    (the others left as they fall: a start for the local search, improve.py)."""
    nodes = state.targets
    if len(nodes) < 2:
        return None
    dim = only or 0
    if len(state.dims) > 1 and only is None:
        from .band_vector import box_plan  # it builds on this module's BandPlan and _Disks

        return box_plan(state, units)
    by_node: dict[str, list[_Unit]] = {n: [] for n in nodes}
    for vmids in units:
        node = state.where[min(vmids)]
        weight = state.load_of(vmids)[dim]
        if node in by_node and weight > 0:
            data = sum(state.guests[v].mem + state.guests[v].local_disk for v in vmids)
            by_node[node].append(_Unit(weight, vmids, data, min(vmids)))
    for listed in by_node.values():
        listed.sort(key=lambda u: (-u.load, u.key))
    cap = {n: state.loads[n].capacity[dim] for n in nodes}
    load = {n: state.loads[n].load[dim] for n in nodes}
    mean = 100.0 * sum(load.values()) / sum(cap.values())
    width = min(state.bands[dim], 100.0) - 2 * _EDGE
    if width <= 0:
        return None
    neg = {n: [-u.load for u in listed] for n, listed in by_node.items()}

    def at(lo: float) -> BandPlan | None:
        return _plan_for(state, by_node, neg, cap, load, lo, lo + width)

    def better(plan: BandPlan | None, best: BandPlan | None) -> bool:
        return plan is not None and (best is None or (len(plan.moves), plan.data) < (len(best.moves), best.data))

    coarse = width / COARSE_STEPS
    best: BandPlan | None = None
    for step in range(COARSE_STEPS + 1):
        plan = at(mean - width + coarse * step)
        if better(plan, best):
            best = plan
    if best is None:
        return None
    centre = best.lo
    for step in range(-FINE_STEPS, FINE_STEPS + 1):
        lo = centre + coarse * step / (FINE_STEPS + 1)
        if step and mean - width <= lo <= mean:
            plan = at(lo)
            if better(plan, best):
                best = plan
    return best


def _plan_for(state: PlanState, by_node: dict[str, list[_Unit]], neg: dict[str, list[float]], cap: dict[str, float],
              load: dict[str, float], lo: float, hi: float) -> BandPlan | None:
    plan = BandPlan(lo)
    disks = _Disks(state)
    now = dict(load)
    low = {n: lo * cap[n] / 100.0 for n in cap}
    high = {n: hi * cap[n] / 100.0 for n in cap}
    shed: list[tuple[_Unit, str]] = []
    taken: set[int] = set()
    for n in sorted(cap):
        if now[n] <= high[n]:
            continue
        for u in by_node[n]:  # largest first: the fewest units, the most load
            if now[n] - u.load >= low[n]:
                now[n] -= u.load
                shed.append((u, n))
                taken.add(u.key)
                if now[n] <= high[n]:
                    break
        if now[n] > high[n]:
            return None
    shed.sort(key=lambda pair: (-pair[0].load, pair[0].key))
    pool = [u for u, _ in shed]
    keys = [-u.load for u in pool]
    source_of = {u.key: n for u, n in shed}
    # nodes below the band, the one lacking least first (it leaves the lack, if the shed units do not
    # cover it all, on fewer nodes: fewer moves to fill it; measured on the bundled clusters): the
    # shed units that fill each with the least overshoot (the largest while none fills it, then the
    # smallest that does), then units from nodes with load to spare above lo
    for n in sorted(cap, key=lambda x: (low[x] - now[x], x)):
        while now[n] < low[n]:
            index = _from_pool(state, disks, pool, keys, source_of, n, low[n] - now[n], high[n] - now[n])
            if index is None:
                break
            fill = pool.pop(index)
            del keys[index]
            now[n] += fill.load
            disks.add(fill.vmids, n)
            plan.moves.append((fill.vmids, n))
            plan.data += fill.data
        while now[n] < low[n]:
            pick = _filler(state, disks, by_node, neg, taken, now, low, n, low[n] - now[n], high[n] - now[n])
            if pick is None:
                return None
            u, source = pick
            now[source] -= u.load
            now[n] += u.load
            taken.add(u.key)
            disks.add(u.vmids, n)
            plan.moves.append((u.vmids, n))
            plan.data += u.data
    for u in pool:  # what the nodes below the band did not need: where there is most room in it
        target = _receiver(state, disks, u, source_of[u.key], now, high)
        if target is None:
            return None
        now[target] += u.load
        disks.add(u.vmids, target)
        plan.moves.append((u.vmids, target))
        plan.data += u.data
    return plan


def _from_pool(state: PlanState, disks: _Disks, pool: list[_Unit], keys: list[float], source_of: dict[int, str],
               target: str, lack: float, room: float) -> int | None:
    """The index in the pool (sorted by falling load; `keys` its loads negated) of the smallest unit
    that fills `lack` within `room`, else of the largest within `room`."""
    start = bisect_left(keys, -room)  # units from `start` on carry at most `room`
    split = bisect_right(keys, -lack, lo=start)  # those before `split` fill the lack
    for i in chain(range(split - 1, start - 1, -1), range(split, len(pool))):
        u = pool[i]  # the rules are asked only of the one taken
        if source_of[u.key] != target and state.allows(u.vmids, target) and disks.room_for(u.vmids, target):
            return i
    return None


def _receiver(state: PlanState, disks: _Disks, u: _Unit, source: str, now: dict[str, float],
              high: dict[str, float]) -> str | None:
    """The allowed node with the most room under the band's top for the unit."""
    room = sorted((now[t] - high[t], t) for t in state.targets if t != source and now[t] + u.load <= high[t])
    return next((t for _, t in room if state.allows(u.vmids, t) and disks.room_for(u.vmids, t)), None)


def _filler(state: PlanState, disks: _Disks, by_node: dict[str, list[_Unit]], neg: dict[str, list[float]],
            taken: set[int], now: dict[str, float], low: dict[str, float], target: str, lack: float,
            room: float) -> tuple[_Unit, str] | None:
    """The unit, from a node that can spare it, that fills `lack` with the least load (without
    passing `room`); failing that the largest that fits. Ties: the source with most to spare."""
    best: tuple[tuple[float, ...], _Unit, str] | None = None
    for source in sorted(by_node):
        spare = now[source] - low[source]
        if source == target or spare <= 0:
            continue
        units, keys = by_node[source], neg[source]
        start = bisect_left(keys, -min(spare, room))  # units from `start` on carry at most that
        split = bisect_right(keys, -lack, lo=start)  # those before `split` fill the lack
        smallest_filling = _first(state, disks, units, range(split - 1, start - 1, -1), taken, target)
        if smallest_filling is not None:
            key: tuple[float, ...] = (0.0, smallest_filling.load, -spare)
            pick = smallest_filling
        else:
            largest = _first(state, disks, units, range(split, len(units)), taken, target)
            if largest is None:
                continue
            key, pick = (1.0, -largest.load, -spare), largest
        if best is None or key < best[0]:
            best = (key, pick, source)
    return (best[1], best[2]) if best else None


def _first(state: PlanState, disks: _Disks, units: list[_Unit], indices: range, taken: set[int],
           target: str) -> _Unit | None:
    for i in indices:
        u = units[i]
        if u.key not in taken and state.allows(u.vmids, target) and disks.room_for(u.vmids, target):
            return u
    return None


def apply_in_order(state: PlanState, moves: list[tuple[frozenset[int], str]]) -> bool:
    """Make the moves on `state`, each when the rules and its target's room allow it (largest first);
    False when some are left that no order allows."""
    sizer = Sizer(state)
    pending = sorted(moves, key=lambda m: (-sizer.size(state.load_of(m[0])), min(m[0])))
    while pending:
        for i, (unit, target) in enumerate(pending):
            if state.allows(unit, target) and state.fits(unit, target):
                before = state.spreads()
                count = state.move(unit, target, MigrationReason.BALANCE, "")
                together = f" (with its affinity group of {len(unit)})" if len(unit) > 1 else ""
                for move in state.moves[len(state.moves) - count:]:
                    move.detail = f"{state.spread_text(before)}{together}"
                del pending[i]
                break
        else:
            return False
    return True
