"""One position of band_vector's box: each node's bounds and load as the plan takes shape, and the
choices made in it (which unit a node above the box sheds, which one fills a node below it).

A choice is made among a few dozen units, each scored in bands over every dimension. The scores
are figured for all of them at once with numpy (box_plan makes some 20,000 choices a position on
xl-10k), each by the same operations in the same order as one unit at a time would take, so the
plan is the same to the last bit; the order among them is a lexical one whose last key, the
unit's smallest vmid, is unique.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from .band import _Disks
from .load import Vector
from .search import Sizer
from .state import PlanState

TINY = 1e-9
_Looked = TypeVar("_Looked")
SHORTLIST = 16  # units a node above the box chooses among, per dimension


@dataclass(frozen=True, eq=False)  # compared by identity: a unit is one object, looked up in lists
class Unit:
    load: Vector
    size: float  # Sizer: the load as one number, to sort by
    vmids: frozenset[int]
    data: int
    key: int  # the smallest vmid: the stable tie-break
    node: str  # where it is
    row: int  # its row in Figures


class Figures:
    """Every unit's load (a row each), size and key, as arrays: the units of a node are rows
    `offset` on of its NodeUnits, in its order."""

    def __init__(self, units: list[Unit], count: int, nodes: list[str]) -> None:
        self.units = units
        at = {n: i for i, n in enumerate(nodes)}
        self.node_of = np.array([at[u.node] for u in units], dtype=np.intp)  # by its place in `nodes`
        self.loads = np.array([u.load for u in units], dtype=float).reshape(len(units), count)
        self.sizes = np.array([u.size for u in units], dtype=float)
        self.keys = np.array([u.key for u in units], dtype=float)

    def of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.loads[rows], self.sizes[rows], self.keys[rows]


class NodeUnits:
    """A node's units by falling size (then key), and for each dimension their order by falling
    load there (a node above in one dimension sheds what is large in that one)."""

    def __init__(self, units: list[Unit], figures: Figures, offset: int) -> None:
        self.units, self.figures, self.offset = units, figures, offset
        self.neg_sizes = [-u.size for u in units]  # rising, for bisect
        self.loads = figures.loads[offset:offset + len(units)]
        count = self.loads.shape[1]
        keys = figures.keys[offset:offset + len(units)]
        self.by_load = [np.lexsort((keys, -self.loads[:, i])) for i in range(count)]


class Box:
    """One position of the box: each node's bounds and its load as the plan takes shape."""

    def __init__(self, state: PlanState, lo: Vector, widths: Vector, scan: int, sources: int) -> None:
        self.scan, self.sources = scan, sources
        self.nodes = state.targets
        self.count = len(lo)
        self.now = {n: list(state.loads[n].load) for n in self.nodes}
        caps = {n: state.loads[n].capacity for n in self.nodes}
        self.low = {n: [lo[i] * caps[n][i] / 100.0 for i in range(self.count)] for n in self.nodes}
        self.high = {n: [(lo[i] + widths[i]) * caps[n][i] / 100.0 for i in range(self.count)] for n in self.nodes}
        # load units -> bands on that node (an unbounded dimension counts for nothing)
        self.scale = {n: [100.0 / (caps[n][i] * widths[i]) if widths[i] < 1e8 else 0.0 for i in range(self.count)]
                      for n in self.nodes}
        self.index = {n: i for i, n in enumerate(self.nodes)}
        # the same as arrays, a node a row: for figures over every node at once, and a node's own
        self.now_rows, self.high_rows, self.low_rows, self.scale_rows = (
            np.array([figure[n] for n in self.nodes], dtype=float).reshape(len(self.nodes), self.count)
            for figure in (self.now, self.high, self.low, self.scale))
        self.bounds = {n: (self.high_rows[i], self.low_rows[i], self.scale_rows[i]) for n, i in self.index.items()}
        self._spare = {n: self._spare_of(n) for n in self.nodes}
        self.most_spare = sorted((-s, n) for n, s in self._spare.items())  # kept in order by `shift`
        self.shifts = 0  # every shift so far, and each node's own: did any node but one change?
        self.own_shifts = dict.fromkeys(self.nodes, 0)
        # what a target's last `filler` and `choose_in_pool` looked at and found nothing in (`remember`):
        # where each source's window ended, the pool's units
        self.unfilled: dict[str, tuple[int, dict[str, int]]] = {}
        self.unpooled: dict[str, tuple[int, set[int]]] = {}

    def outside(self, n: str, load: list[float] | Vector) -> tuple[float, float]:
        """How far a load on node n lies above the box and below it, in bands (summed over dimensions)."""
        above = below = 0.0
        for x, lo, hi, scale in zip(load, self.low[n], self.high[n], self.scale[n], strict=True):
            if x > hi:
                above += (x - hi) * scale
            elif x < lo:
                below += (lo - x) * scale
        return above, below

    def outside_each(self, n: str, loads: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`outside` for each row of loads on node n at once, and each row's deepest dimension below."""
        high, low, scale = self.bounds[n]
        above, short = loads - high, low - loads  # a dimension's at most one of them above 0
        np.maximum(above, 0.0, out=above)
        np.maximum(short, 0.0, out=short)
        above *= scale
        short *= scale
        return above.sum(axis=1), short.sum(axis=1), short.max(axis=1)

    def remember(self, looks: dict[str, tuple[int, _Looked]], n: str, looked: _Looked) -> None:
        """Keep what a look for node n found nothing in, while no other node shifts and n takes no
        load away (`shift` drops it then: its room grows)."""
        looks[n] = (self.shifts - self.own_shifts[n], looked)

    def recall(self, looks: dict[str, tuple[int, _Looked]], n: str) -> _Looked | None:
        """What `remember` kept for node n, if it still holds."""
        last = looks.get(n)
        return last[1] if last is not None and last[0] == self.shifts - self.own_shifts[n] else None

    def shift(self, n: str, load: Vector, sign: float) -> None:
        self.shifts += 1
        self.own_shifts[n] += 1
        if sign < 0:
            self.unfilled.pop(n, None)
            self.unpooled.pop(n, None)
        for i in range(self.count):
            self.now[n][i] += sign * load[i]
        self.now_rows[self.index[n]] = self.now[n]
        del self.most_spare[bisect_left(self.most_spare, (-self._spare[n], n))]
        self._spare[n] = self._spare_of(n)
        insort(self.most_spare, (-self._spare[n], n))

    def _spare_of(self, n: str) -> float:
        """The least load above the box's bottom over the dimensions, in bands (bounded ones only):
        what node n can give and stay in the box."""
        return min(((self.now[n][i] - self.low[n][i]) * self.scale[n][i] for i in range(self.count)
                    if self.scale[n][i] > 0), default=0.0)

    def roomiest(self, load: Vector, source: str) -> list[str]:
        """The nodes but `source` whose load stays under the box's top with `load` added, the most
        room first (the least room under the top over the bounded dimensions, in bands; then by name)."""
        under = np.all(self.now_rows + np.asarray(load) <= self.high_rows, axis=1)
        bounded = self.scale_rows > 0
        room = np.where(bounded, (self.high_rows - self.now_rows) * self.scale_rows, np.inf).min(axis=1)
        room[~bounded.any(axis=1)] = 0.0
        found = sorted((-room[i], n) for i, n in enumerate(self.nodes) if under[i] and n != source)
        return [n for _, n in found]

    def lacking(self, n: str) -> float:
        return self.outside(n, self.now[n])[1]

    def room_size(self, n: str, sizer: Sizer) -> float:
        """The room under the box's top on node n, as one size."""
        return sizer.size(tuple(max(hi - x, 0.0) for hi, x in zip(self.high[n], self.now[n], strict=True)))

    def lack_size(self, n: str, sizer: Sizer) -> float:
        """The lack below the box's bottom on node n, as one size."""
        return sizer.size(tuple(max(lo - x, 0.0) for lo, x in zip(self.low[n], self.now[n], strict=True)))


def to_shed(box: Box, n: str, listed: NodeUnits, free: np.ndarray) -> Unit | None:
    """The unit whose leaving takes node n furthest towards the box: its excess above the box
    lowered, less the lack below the box it opens; the larger on ties. When every unit opens more
    lack than it removes excess (a node above in one dimension, at the bottom in another), the one
    that removes the excess opening the least lack: a later pass fills that. Among the first
    SHORTLIST units not taken in each dimension's order by falling load."""
    above, below = box.outside(n, box.now[n])
    mine = free[listed.offset:listed.offset + len(listed.units)]
    if len(mine) <= SHORTLIST:  # every unit not taken is in each dimension's shortlist
        rows = np.flatnonzero(mine)
    else:  # a unit in two shortlists counts twice: the same key, so the same choice
        rows = np.concatenate([order[mine[order]][:SHORTLIST] for order in listed.by_load])
    if not len(rows):
        return None
    a, b, _ = box.outside_each(n, box.now_rows[box.index[n]] - listed.loads[rows])
    lowers = np.flatnonzero(a < above - TINY)  # it lowers some excess
    if not len(lowers):
        return None
    rows, a, b = rows[lowers], a[lowers], b[lowers]
    gain = (above - a) - (b - below)
    size, key = listed.figures.sizes[listed.offset + rows], listed.figures.keys[listed.offset + rows]
    helps = np.flatnonzero(gain > TINY)
    if len(helps):  # by (-gain, -size, key)
        best = helps[np.lexsort((key[helps], -size[helps], -gain[helps]))[0]]
    else:  # by (a, b, -size, key)
        best = np.lexsort((key, -size, b, a))[0]
    return listed.units[int(rows[best])]


def window(keys: list[tuple[float, int]], rows: list[int], box: Box, n: str, sizer: Sizer) -> list[int]:
    """The pool's units that could fill node n's lack (their rows), nearest first: those no larger
    than its room allows, from about the size of its lack both ways (a unit under the box's top in
    every dimension is no larger than the room's size; one filling every lack no smaller than the
    lack's). `keys`: the pool's (-size, key), falling in size; `rows`: its units' rows, in that order."""
    room, lack = box.room_size(n, sizer), box.lack_size(n, sizer)
    start = bisect_left(keys, (-room - TINY,))  # from `start` on, size <= room
    split = max(bisect_left(keys, (-lack,), lo=start), start)  # before `split`: at least the lack's size
    return rows[max(start, split - box.scan):split][::-1] + rows[split:split + box.scan]


def choose_in_pool(state: PlanState, disks: _Disks, box: Box, figures: Figures, n: str, rows: list[int]) -> Unit | None:
    """`choose` among the pool's units `rows` (its `window` for node n), less those n's last look
    found nothing in where only n has changed since, by taking load (`filler` says why such a unit
    still would not do; the pool has only lost units since: a unit is shed by a shift of its node)."""
    looked = box.recall(box.unpooled, n) or set()
    fresh = [r for r in rows if r not in looked]
    pick = choose(state, disks, box, figures, n, fresh) if fresh else None
    if pick is None:
        box.remember(box.unpooled, n, looked | set(rows))
    return pick


def choose(state: PlanState, disks: _Disks, box: Box, figures: Figures, n: str, rows: list[int],
           over_top: bool = False) -> Unit | None:
    """Among the candidates (rows) not on node n and under the box's top there: the smallest that
    fills every lack, else the one that leaves the least lack, its largest dimension's counted twice
    (the larger on ties): a unit that fills the lack of one dimension while another's stays deep
    takes the room a later unit needs to fill that one (large-5k, memory and CPU: 293 migrations
    counting the sum only, 275 so); the first the rules and the storages allow.
    `over_top`: any candidate, by the lack it covers less the excess it opens (when above 0)."""
    found = np.array(rows, dtype=np.intp)
    found = found[figures.node_of[found] != box.index[n]]
    order = _ranked(box, n, *figures.of(found), over_top)
    return _first_allowed(state, disks, n, (figures.units[r] for r in found[order].tolist()))


def filler(state: PlanState, disks: _Disks, box: Box, figures: Figures, nodes: dict[str, NodeUnits],
           free: np.ndarray, sizer: Sizer, target: str) -> Unit | None:
    """A unit from a node with load to spare in every dimension (it stays in the box without it),
    chosen as `choose` does, among the box's `sources` nodes with the most to spare. `free`: each
    unit's (by its row) not taken yet.

    Where the target's last filler found nothing and only the target has changed since, by taking
    load (`Box.unfilled`), only the units that have come into a source's window are looked at: the
    sources, their spare and their free units are as they were, and with more load on the target
    each unit looked at then is no less over the box's top, covers no more of its lack, and is no
    more allowed by the rules and storages (loads are never negative); its smaller room moves the
    windows on to smaller units. So the unit found is the one a full look finds. Most fillers on
    xl-10k find nothing, called again after each unit over the top fills the same target."""
    looked = box.recall(box.unfilled, target) or {}
    room = box.room_size(target, sizer)
    windows: list[np.ndarray] = []
    spares: list[list[float]] = []
    counts: list[int] = []
    stops: dict[str, int] = {}
    for minus, source in box.most_spare:
        if len(windows) == box.sources or minus >= 0:
            break
        if source == target:
            continue
        listed = nodes[source]
        start = bisect_left(listed.neg_sizes, -room - TINY)
        stops[source] = stop = min(start + 2 * box.scan, len(listed.units))
        start = max(start, looked.get(source, start))  # up to there: looked at, and nothing found
        windows.append(np.arange(listed.offset + start, listed.offset + stop))
        spares.append([now - lo for now, lo in zip(box.now[source], box.low[source], strict=True)])
        counts.append(stop - start)
    if not windows:
        return None
    pick = None
    if sum(counts):
        rows = np.concatenate(windows)
        spare_at = np.repeat(np.array(spares), counts, axis=0)
        rows = rows[free[rows] & np.all(figures.loads[rows] <= spare_at, axis=1)]  # no more than its node can spare
        order = _ranked(box, target, *figures.of(rows))
        pick = _first_allowed(state, disks, target, (figures.units[r] for r in rows[order].tolist()))
    if pick is None:
        box.remember(box.unfilled, target, stops)
    return pick


def _first_allowed(state: PlanState, disks: _Disks, n: str, ordered: Iterable[Unit]) -> Unit | None:
    return next((u for u in ordered if state.allows(u.vmids, n) and disks.room_for(u.vmids, n)), None)


def _ranked(box: Box, n: str, loads: np.ndarray, size: np.ndarray, key: np.ndarray,
            over_top: bool = False) -> list[int]:
    """Which candidates (a row each) cover some of node n's lack, under the box's top unless
    `over_top`, best first as `choose` says: a filling one by (size, key), else by (lack left plus
    its deepest dimension's, lack left, -size, key); over the top by (excess opened less the lack
    covered, -size, key)."""
    if not len(size):
        return []
    lack = box.lacking(n)
    opened, left, most = box.outside_each(n, box.now_rows[box.index[n]] + loads)
    if over_top:
        keep = np.flatnonzero(~((left >= lack - TINY) | (lack - left - opened <= TINY)))
        columns = [opened - (lack - left), -size, key]
    else:
        keep = np.flatnonzero((opened <= 0) & (left < lack - TINY))  # under the top, covering some lack
        fills = left <= TINY
        columns = [~fills, np.where(fills, size, left + most), np.where(fills, key, left),
                   np.where(fills, 0.0, -size), np.where(fills, 0.0, key)]
    order = np.lexsort([c[keep] for c in reversed(columns)])  # lexsort's last column is its first key
    ranked: list[int] = keep[order].tolist()
    return ranked
