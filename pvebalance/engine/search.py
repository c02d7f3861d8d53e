"""The balance phase: moves that bring node usage together, few and small.

Each step takes the move (of a guest, or of a whole affinity group) that lowers the variance of
node usage the most, among moves every rule allows and whose target has room at that step; ties
go to fewer migrations, then less data copied. Large moves lower the variance most, so the plan
uses few of them. Only the most and least loaded nodes are tried first; when none of their moves
helps, every pair of nodes is tried before giving up, the most promising pairs first (a pair whose
best conceivable change is above the best found is not looked into). On clusters past the exact
model's size those scans are bounded by work, and the extremes of each dimension are tried after.

With several dimensions a move is judged by what it does to all of them: the sum of each
dimension's variance divided by its band squared (so a dimension held to 2 pp weighs as much as one
held to 10 pp at five times the spread), relative to the first dimension's band, so that with one
dimension the objective is the variance itself and `min_gain` stays in its pp².

For one source and one target the change is a convex quadratic in the load moved, separable by
dimension, so the best guest is the one whose load lies nearest the quadratic's minimum: each node
keeps its guests sorted by a scalar size (the load itself for one dimension; the loads in bands of
an average node for several), and a step looks at the units nearest that point instead of every
guest. (A band-filling strategy, largest guests first into a band around the mean, was measured
against this one on the bundled clusters and needed as many or more migrations: it is band.py, and
the caller keeps whichever plan is better.)
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from pvebalance.shared.models import MigrationReason

from . import fit
from .load import Vector
from .state import PlanState

_SOURCES_TRIED = 3
_TARGETS_TRIED = 4
_NARROW, _EXTREMES, _EVERY = "narrow", "extremes", "every"  # the nodes a step tries (_best_move)
# Pairs of nodes a greedy run on a large cluster may look into in scans of every pair: about fifty
# such scans while the moves still lower the variance much (xl-10k with three dimensions takes 9
# scans, 754 pairs; the scans that only polish it look into 1,000-4,000 pairs each).
_EVERY_PAIRS_LARGE = 5000
_SCAN = 64  # units looked at on each side of the ideal load before a pair of nodes is given up


class NodeUnits:
    """A node's movable units, sorted by their scalar size (`Sizer`), with the memory each brings
    to another node (fit.brings_memory)."""

    def __init__(self) -> None:
        self.keys: list[tuple[float, int]] = []  # (size, smallest vmid), for bisect
        self.units: dict[tuple[float, int], tuple[frozenset[int], Vector]] = {}
        self.memory: dict[tuple[float, int], int] = {}
        self._arrays: tuple[Any, ...] | None = None

    def add(self, size: float, unit: frozenset[int], load: Vector, memory: int) -> None:
        key = (size, min(unit))
        insort(self.keys, key)
        self.units[key] = (unit, load)
        self.memory[key] = memory
        self._arrays = None

    def remove(self, size: float, unit: frozenset[int]) -> None:
        key = (size, min(unit))
        self.keys.pop(bisect_left(self.keys, key))
        del self.units[key], self.memory[key]
        self._arrays = None

    def arrays(self) -> tuple[Any, ...]:
        """The units' loads (a row each), sizes, smallest vmids and memory, in `keys`' order, as
        numpy arrays (several dimensions only: numpy is loaded for them)."""
        if self._arrays is None:
            import numpy as np

            self._arrays = (np.array([self.units[k][1] for k in self.keys], dtype=float),
                            np.array([k[0] for k in self.keys], dtype=float),
                            np.array([k[1] for k in self.keys], dtype=np.int64),
                            np.array([self.memory[k] for k in self.keys], dtype=np.int64))
        return self._arrays


class Sizer:
    """A unit's load vector as one number to sort and search by: the load itself for one dimension;
    for several, the sum of its loads in bands of an average target node."""

    def __init__(self, state: PlanState) -> None:
        count = len(state.dims)
        if count == 1:
            self.factors: Vector = (1.0,)
        else:
            nodes = max(len(state.targets), 1)
            self.factors = tuple(
                100.0 * nodes / max(sum(state.loads[n].capacity[i] for n in state.targets), 1e-9)
                / max(state.bands[i], 1e-9) for i in range(count))

    def size(self, load: Vector) -> float:
        return load[0] if len(load) == 1 else sum(f * x for f, x in zip(self.factors, load, strict=True))


def objective_weights(state: PlanState) -> Vector:
    """Each dimension's weight in the summed variance: (first band / its band)^2; a dimension let go
    (an infinite band: below its threshold, or out of reach) weighs nothing."""
    finite = [b for b in state.bands if math.isfinite(b)]
    first = max(state.bands[0] if math.isfinite(state.bands[0]) else min(finite, default=1.0), 1e-9)
    return tuple((first / max(b, 1e-9)) ** 2 if math.isfinite(b) else 0.0 for b in state.bands)


def movable_units(state: PlanState) -> list[frozenset[int]]:
    """What the balance phase may move: whole together-groups, or single guests; running only."""
    seen: set[int] = set()
    units = []
    for vmid in sorted(state.guests):
        if vmid in seen:
            continue
        unit = state.c.unit(vmid)
        seen |= unit
        nodes = {state.where[v] for v in unit}
        if len(nodes) != 1 or not state.movable(unit) or nodes.pop() not in state.targets:
            continue
        if not all(state.guests[v].running for v in unit):
            continue  # stopped guests move only when their node is drained
        units.append(unit)
    return units


def units_by_node(state: PlanState, units: list[frozenset[int]]) -> dict[str, NodeUnits]:
    by_node: dict[str, NodeUnits] = defaultdict(NodeUnits)
    sizer = Sizer(state)
    for unit in units:
        load = state.load_of(unit)
        if any(x > 0 for x in load):
            memory = fit.brings_memory(fit.GuestFigures.of(state.guests[v] for v in unit))
            by_node[state.where[next(iter(unit))]].add(sizer.size(load), unit, load, memory)
    return by_node


def balance_moves(state: PlanState, by_node: dict[str, NodeUnits], notes: list[str], large: bool = False,
                  until: Callable[[PlanState], bool] | None = None) -> None:
    """Move by move until every dimension is within its band or no move helps. `large`: a cluster
    past the exact model's size, where scans of every pair of nodes are bounded by work
    (_EVERY_PAIRS_LARGE pairs looked into by this run); past it, the extremes of each dimension
    are tried instead (xl-10k with cpu,disk: 180 such scans, 48-70 s, had polished the variance of
    the nodes in the middle while one full node held the disk spread where it was). `until`: a
    state the run stops at, after a move (a plan its caller will make again otherwise)."""
    policy = state.policy
    sizer = Sizer(state)
    weights = objective_weights(state)
    work = _Work(_EVERY_PAIRS_LARGE if large else math.inf)
    while not state.balanced():
        best = _best_move(state, by_node, sizer, weights, _NARROW)
        if best is None and work.pairs > 0:
            best = _best_move(state, by_node, sizer, weights, _EVERY, work)
        if best is None and large and work.pairs <= 0:
            best = _best_move(state, by_node, sizer, weights, _EXTREMES)
        if best is None:
            over = [f"{d} {s:.1f} pp" for d, s, b in zip(state.dims, state.spreads(), state.bands, strict=True)
                    if s > b]
            shown = f"{state.spread():.1f} pp" if len(state.dims) == 1 else ", ".join(over)
            notes.append(
                f"spread {shown} stays above balanciness {_bands_text(state)}: no move that the rules allow "
                "lowers it safely" + (f" by at least min_gain {policy.min_gain}" if policy.min_gain else "")
            )
            return
        size, unit, source, target = best
        if not state.budget_left(len(unit)):
            return
        before = state.spreads()
        by_node[source].remove(size, unit)
        count = state.move(unit, target, MigrationReason.BALANCE, "")
        together = f" (with its affinity group of {len(unit)})" if len(unit) > 1 else ""
        for move in state.moves[len(state.moves) - count:]:
            move.detail = f"{state.spread_text(before)}{together}"
        if until is not None and until(state):
            return


class _Work:
    """What is left of a greedy run's bound on pairs of nodes looked into (balance_moves)."""

    def __init__(self, pairs: float) -> None:
        self.pairs = pairs


def _bands_text(state: PlanState) -> str:
    if len(state.dims) == 1:
        return f"{state.bands[0]}"
    return ", ".join(f"{d} {b:g}" for d, b in zip(state.dims, state.bands, strict=True)) + " pp"


def _node_scores(state: PlanState, weights: Vector) -> dict[str, float]:
    """How loaded each target is, as one number: its percentage for one dimension; for several, the
    weighted sum of its distances from each dimension's mean, in bands."""
    if len(state.dims) == 1:
        return {n: state.loads[n].percent for n in state.targets}
    means = state.means()
    return {n: sum(w * (state.loads[n].percent_in(i) - means[i]) / max(state.bands[i], 1e-9)
                   for i, w in enumerate(weights)) for n in state.targets}


def _best_move(
    state: PlanState, by_node: dict[str, NodeUnits], sizer: Sizer, weights: Vector, among: str,
    work: _Work | None = None,
) -> tuple[float, frozenset[int], str, str] | None:
    """The best move between the nodes `among` names: _NARROW, the few most and least loaded (by
    `_node_scores`); _EXTREMES, those and the few highest and lowest in each dimension (a node high
    in one and low in another scores near the middle); _EVERY, every pair. Each pair looked into
    takes one from `work`; none left, the best move found so far."""
    loads, targets = state.loads, state.targets
    count = len(state.dims)
    score = _node_scores(state, weights)
    ranked = sorted(targets, key=lambda n: (score[n], n))
    sources, receivers = ranked[::-1], ranked
    if among != _EVERY:
        sources, receivers = sources[:_SOURCES_TRIED], receivers[:_TARGETS_TRIED]
    if among == _EXTREMES:
        for i in range(count):
            by_dim = sorted(targets, key=lambda x: (loads[x].percent_in(i), x))
            sources += [x for x in by_dim[::-1][:_SOURCES_TRIED] if x not in sources]
            receivers += [x for x in by_dim[:_TARGETS_TRIED] if x not in receivers]
    n = len(targets)
    totals = [sum(loads[x].percent_in(i) for x in targets) for i in range(count)]
    min_gain = max(state.policy.min_gain, 1e-9)
    best: tuple[float, int, int, int, str, str] | None = None
    choice: tuple[float, frozenset[int], str, str] | None = None
    pairs = []
    for s in sources:
        node_units = by_node.get(s)
        if not node_units or not node_units.keys:
            continue
        for t in receivers:
            if t == s or score[t] >= score[s]:
                continue
            # the objective's change for moving load L from s to t: sum over dimensions of a*L^2 + b*L
            a, b = [], []
            for i in range(count):
                alpha, beta = 100.0 / loads[s].capacity[i], 100.0 / loads[t].capacity[i]
                p_s, p_t = loads[s].percent_in(i), loads[t].percent_in(i)
                a.append(weights[i] * ((alpha**2 + beta**2) / n - (alpha - beta) ** 2 / n**2))
                b.append(weights[i] * (2 * (p_t * beta - p_s * alpha) / n + 2 * totals[i] * (alpha - beta) / n**2))
            floor = _floor(a, b)
            if floor <= -min_gain:
                pairs.append((floor, s, t, node_units, a, b))
    # Pairs whose floor is above the best change found cannot hold a better move: the most
    # promising pairs first, and the scan ends there (the same move as scanning every pair).
    pairs.sort(key=lambda p: (p[0], p[1], p[2]))
    for floor, s, t, node_units, a, b in pairs:
        if (best is not None and floor > best[0]) or (work is not None and work.pairs <= 0):
            break
        if work is not None:
            work.pairs -= 1
        ideal = sizer.size(tuple(-b[i] / (2 * a[i]) if a[i] else 0.0 for i in range(count)))
        for delta, size, unit in _nearest_valid(state, node_units, ideal, t, a, b):
            if delta > -min_gain:
                continue
            # ties: fewer migrations, less data, then stable names (never the order of the loops)
            data = sum(state.guests[v].mem + state.guests[v].local_disk for v in unit)
            key = (delta, len(unit), data, min(unit), s, t)
            if best is None or key < best:
                best, choice = key, (size, unit, s, t)
    return choice


def _floor(a: list[float], b: list[float]) -> float:
    """The least change any load could make: the sum of each dimension's a*L^2 + b*L at its minimum
    (a >= 0 always: a dimension of weight 0, a = 0, bounds nothing)."""
    total = 0.0
    for ai, bi in zip(a, b, strict=True):
        if ai <= 0:
            if bi:
                return -math.inf
            continue
        total -= bi * bi / (4 * ai)
    return total


def _nearest_valid(state: PlanState, node_units: NodeUnits, ideal: float, target: str, a: list[float],
                   b: list[float]) -> list[tuple[float, float, frozenset[int]]]:
    """The best unit the rules and the target's room allow, on each side of the ideal size, among the
    _SCAN nearest there. With one dimension the objective falls towards the ideal, so that is the
    nearest allowed unit on each side; with several, the units are tried best first (by the
    objective's change, then key: figured for all at once, each as `_change` figures it). The memory
    each brings is asked first, as it refuses most (xl-10k's full nodes)."""
    keys = node_units.keys
    pos = bisect_left(keys, (ideal, -1))
    found = []
    room = fit.memory_room(state.loads[target].figures, state.policy)
    for side in (range(pos - 1, max(pos - 1 - _SCAN, -1), -1), range(pos, min(pos + _SCAN, len(keys)))):
        if len(a) == 1:  # nearest the ideal first
            order: Iterable[int] = (i for i in side if node_units.memory[keys[i]] <= room)
        else:
            import numpy as np

            loads, sizes, vmids, memory = node_units.arrays()
            rows = np.arange(min(side), max(side) + 1) if side else np.arange(0)
            x = loads[rows]
            change = (np.asarray(a) * x * x + np.asarray(b) * x).sum(axis=1)
            rows = rows[np.lexsort((vmids[rows], sizes[rows], change))]
            order = rows[memory[rows] <= room].tolist()
        for i in order:
            unit, load = node_units.units[keys[i]]
            if state.allows(unit, target) and state.fits(unit, target):
                found.append((_change(load, a, b), keys[i][0], unit))
                break
    return found


def _change(load: Vector, a: list[float], b: list[float]) -> float:
    return sum(a[i] * x * x + b[i] * x for i, x in enumerate(load))
