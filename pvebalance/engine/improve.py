"""Fewer migrations for a plan that balances several dimensions: a local search bounded by work.

With one dimension the band plan and the exact model reach the minimum. With several, the exact
model takes HiGHS far longer than a plan may (mid-300, memory and CPU: the minimum, 18, is proven in
about 10 minutes; none of 18 is found in a minute), and the constructive plans end a few moves above
it. This search takes a balanced plan of k moves and looks for one of k - 1, then k - 2, ...:

- drop: a move whose guest may as well stay (reverted, everything still within its band);
- two for one: two moves reverted and one other made instead (any guest, any target);
- else, at k - 1 moves, from the plan less the move whose loss hurts least, swaps (one move
  reverted, another made) that bring the dimensions closest to their bands (the sum over the
  dimensions of how far each spread is above its band, in bands; then of the spreads, in bands),
  never undoing a swap of the last few steps, until every dimension is within its band.

Every candidate move of every step is scored at once with numpy: moving unit k from node s to node t
changes only s and t, so the spread after it is the largest of (the other nodes' largest percentage,
s's and t's new ones) less the smallest, from each dimension's three largest and three smallest.
The rules a unit's target must meet (pins, HA node rules) come from `PlanState.allows` once per
unit and node; rules between guests (anti-affinity, affinity groups) are checked on each placement
found (`Family.check`), and the plan found is replayed move by move through `PlanState`, where every
rule and the room on each target are checked at each step, as for every plan. The search stops
after `ITERATIONS` steps: bounded by work, never by time, so the same input gives the same plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from .band import apply_in_order, clone
from .fit import memory_limit
from .state import PlanState

ITERATIONS = 20  # swaps tried in all, over every count of moves
TABU = 6  # a swap's guests are left alone for this many steps
_TOL = 1e-9


class _Cluster:
    """The units and nodes as arrays: what each unit adds to each node, in percent per dimension."""

    def __init__(self, base: PlanState, units: Sequence[frozenset[int]]) -> None:
        self.base = base
        self.units = list(units)
        self.nodes = list(base.targets)
        index = {n: i for i, n in enumerate(self.nodes)}
        load = np.array([base.load_of(u) for u in self.units], dtype=float).reshape(len(self.units), -1)
        cap = np.array([base.loads[n].capacity for n in self.nodes], dtype=float)
        self.pct = 100.0 * load[:, None, :] / cap[None, :, :]  # unit x node x dimension
        self.home = np.array([index[base.where[min(u)]] for u in self.units])
        self.start = np.array([base.loads[n].percents for n in self.nodes], dtype=float)  # node x dimension
        self.bands = np.array(base.bands, dtype=float)
        self.allowed = np.array([[base.allows(u, n) for n in self.nodes] for u in self.units], dtype=bool)
        self.of_vmid = {min(u): k for k, u in enumerate(self.units)}
        self.index = index
        # the memory a unit takes on a node (running guests), each node's in use and its limit: a
        # placement's end must keep every node under fit.memory_limit, as any order of it must
        self.mem = np.array([float(sum(base.guests[v].mem for v in u if base.guests[v].running)) for u in self.units])
        self.mem_start = np.array([float(base.loads[n].figures.used_mem) for n in self.nodes])
        self.mem_limit = np.array([memory_limit(base.loads[n].figures, base.policy) for n in self.nodes])

    def in_bands(self, spread: np.ndarray) -> np.ndarray:
        """Spreads in bands; a band of 0 (`balanciness: 0`) makes any spread infinitely far above it,
        silently: numpy's warning would reach the operator's terminal."""
        with np.errstate(divide="ignore", invalid="ignore"):
            out: np.ndarray = spread / self.bands
        return out

    def memory(self, place: np.ndarray) -> np.ndarray:
        moved = np.flatnonzero(place != self.home)
        used = self.mem_start.copy()
        np.add.at(used, _interleaved(self.home[moved], place[moved]), _interleaved(-self.mem[moved], self.mem[moved]))
        return used

    def percents(self, place: np.ndarray) -> np.ndarray:
        moved = np.flatnonzero(place != self.home)
        home, there = self.home[moved], place[moved]
        p = self.start.copy()
        np.add.at(p, _interleaved(home, there), _interleaved(-self.pct[moved, home], self.pct[moved, there]))
        return p

    def scores(self, place: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For every unit k and node t: how far above its band each dimension's spread would be
        after moving k (from where `place` has it) to t, summed in bands, and the spreads so summed.
        Moves that are no move, or to a node the unit's rules exclude, score infinite."""
        p = self.percents(place)
        n_nodes = len(self.nodes)
        src = place
        nodes = np.arange(n_nodes)
        ex_max = _excluding(p, nodes, largest=True)  # node s x node t x dimension
        ex_min = _excluding(p, nodes, largest=False)
        units = np.arange(len(self.units))
        new_s = p[src] - self.pct[units, src]  # unit x dimension
        new_t = p[None, :, :] + self.pct  # unit x node x dimension
        high = np.maximum(np.maximum(ex_max[src], new_s[:, None, :]), new_t)
        low = np.minimum(np.minimum(ex_min[src], new_s[:, None, :]), new_t)
        spread = self.in_bands(high - low)
        over = np.maximum(spread - 1.0, 0.0).sum(axis=2)
        smooth = spread.sum(axis=2)
        full = self.memory(place)[None, :] + self.mem[:, None] > self.mem_limit[None, :]
        bad = ~self.allowed | (nodes[None, :] == src[:, None]) | full
        over[bad] = np.inf
        smooth[bad] = np.inf
        return over, smooth

    def best_trade(self, place: np.ndarray, banned: Sequence[int], limit: int | None,
                   fewer_first: bool) -> tuple[tuple[float, float, float], int, int] | None:
        """The best trade of places between two units on different nodes (each takes the other's
        node): least over (see `scores`), then (with `fewer_first`) the fewest moves after, then the
        least spread; none touching a `banned` unit, none leaving more than `limit` moves. Scored a
        pair of nodes at a time: a trade changes only those two."""
        p = self.percents(place)
        used = self.memory(place)
        nodes = np.arange(len(self.nodes))
        ex_max = _excluding(p, nodes, largest=True)
        ex_min = _excluding(p, nodes, largest=False)
        free = np.ones(len(self.units), dtype=bool)
        free[list(banned)] = False
        on = [np.flatnonzero((place == n) & free) for n in nodes]
        moves = _count_of(place, self.home)
        best: tuple[tuple[float, float, float], int, int] | None = None
        for s in nodes:
            for t in nodes[s + 1:]:
                i, j = on[s], on[t]
                if not len(i) or not len(j):
                    continue
                new_s = p[s] - self.pct[i, s][:, None, :] + self.pct[j, s][None, :, :]
                new_t = p[t] - self.pct[j, t][None, :, :] + self.pct[i, t][:, None, :]
                high = np.maximum(np.maximum(ex_max[s, t], new_s), new_t)
                low = np.minimum(np.minimum(ex_min[s, t], new_s), new_t)
                spread = self.in_bands(high - low)
                over = np.maximum(spread - 1.0, 0.0).sum(axis=2)
                smooth = spread.sum(axis=2)
                # each: a move more if it leaves its home, one less if it goes back there
                added = ((self.home[i] == s).astype(int) - (self.home[i] == t))[:, None] + \
                    ((self.home[j] == t).astype(int) - (self.home[j] == s))[None, :]
                bad = ~(self.allowed[i, t][:, None] & self.allowed[j, s][None, :])
                bad |= used[s] - self.mem[i][:, None] + self.mem[j][None, :] > self.mem_limit[s]
                bad |= used[t] - self.mem[j][None, :] + self.mem[i][:, None] > self.mem_limit[t]
                if limit is not None:
                    bad |= moves + added > limit
                over[bad] = np.inf
                a, b = divmod(_first(over, smooth, added if fewer_first else None), len(j))
                if not np.isfinite(over[a, b]):
                    continue
                key = (float(over[a, b]), float(added[a, b]) if fewer_first else 0.0, float(smooth[a, b]))
                if best is None or key < best[0]:
                    best = (key, int(i[a]), int(j[b]))
        return best

    def balanced(self, place: np.ndarray) -> bool:
        p = self.percents(place)
        return bool(np.all(p.max(axis=0) - p.min(axis=0) <= self.bands + _TOL))

    def rules_hold(self, place: np.ndarray) -> bool:
        """No rule between guests broken at the placement's end (what `allowed` cannot say)."""
        state = self.base
        where = dict(state.where)
        for k in np.nonzero(place != self.home)[0]:
            for v in self.units[k]:
                where[v] = self.nodes[place[k]]
        return not any(b.required for f in state.c.families for b in f.check(state.c, where, state.guests))


def _interleaved(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """first[0], second[0], first[1], ...: each move's leaving then its arriving, in the order of the
    moves, as np.add.at applies them (one at a time, in order): the same sums, to the last bit, as
    taking each move in turn, for a tenth of the time (mid-300 memory,cpu,disk: 0.21 s of 0.83)."""
    out = np.empty((2 * len(first), *first.shape[1:]), dtype=np.result_type(first, second))
    out[0::2] = first
    out[1::2] = second
    return out


def _excluding(p: np.ndarray, nodes: np.ndarray, largest: bool) -> np.ndarray:
    """For each pair of nodes (s, t): each dimension's largest (or smallest) percentage over the
    other nodes; -inf (+inf) when there are none."""
    fill = -np.inf if largest else np.inf
    order = np.argsort(-p if largest else p, axis=0, kind="stable")[:3]  # up to 3 x dimension
    values = np.take_along_axis(p, order, axis=0)
    if len(order) < 3:
        pad = 3 - len(order)
        order = np.vstack([order, np.full((pad, p.shape[1]), -1)])
        values = np.vstack([values, np.full((pad, p.shape[1]), fill)])
    s = nodes[:, None, None]
    t = nodes[None, :, None]
    out = np.full((len(nodes), len(nodes), p.shape[1]), fill)
    for j in (2, 1, 0):  # the first of the three that is neither s nor t wins
        free = (order[j][None, None, :] != s) & (order[j][None, None, :] != t)
        out = np.where(free, values[j][None, None, :], out)
    return out


def fewer_moves(base: PlanState, starts: Sequence[PlanState], units: Sequence[frozenset[int]]) -> PlanState | None:
    """The plan with the fewest balance moves the search finds from `base` (the state after the
    repairs), starting from each of `starts` in turn (plans made from `base`, balanced or not: one
    that is not is first brought within the bands), replayed through PlanState; None when it finds
    none with every dimension within its band."""
    if len(base.dims) < 2 or len(base.targets) < 2 or not units:
        return None
    cluster = _Cluster(base, units)
    budget = [ITERATIONS]
    best: PlanState | None = None
    for start in starts:
        place = cluster.home.copy()
        for move in start.moves[len(base.moves):]:
            k = cluster.of_vmid.get(min(base.c.unit(move.guest.vmid)))
            if k is not None:  # else a move the search does not model: it starts without it
                place[k] = cluster.index[move.target]
        if not cluster.balanced(place) or not cluster.rules_hold(place):
            reached = _reach(cluster, place, budget)
            if reached is None:
                continue
            place = reached
        while True:
            replayed = _replay(base, cluster, place)
            if replayed is None:
                break
            if best is None or len(replayed.moves) < len(best.moves):
                best = replayed
            found = _one_fewer(cluster, place, budget)
            if found is None:
                break
            place = found
    return best


def _reach(cluster: _Cluster, place: np.ndarray, budget: list[int]) -> np.ndarray | None:
    """From a placement some dimension's spread leaves above its band: steps that bring the
    dimensions closest to their bands (then add the fewest moves): a guest moved, moved on or back
    home, or two guests on different nodes trading places; never touching a guest of the last few
    steps; until every dimension is within its band."""
    current = place.copy()
    recent: list[int] = []
    n_nodes = len(cluster.nodes)
    while budget[0] > 0:
        budget[0] -= 1
        at_home = (current == cluster.home).astype(int)
        over, smooth = cluster.scores(current)
        over[recent, :] = np.inf
        added = at_home[:, None] - (np.arange(n_nodes)[None, :] == cluster.home[:, None])
        k, t = divmod(_first(over, smooth, added), n_nodes)
        single = (float(over[k, t]), float(added[k, t]), float(smooth[k, t]))
        trade = cluster.best_trade(current, recent, None, fewer_first=True)
        if not np.isfinite(single[0]) and trade is None:
            return None
        current = current.copy()
        if trade is None or single <= trade[0]:
            current[k] = t
            recent = [*recent, k][-TABU:]
            reached = single[0]
        else:
            _, i, j = trade
            current[i], current[j] = current[j], current[i]
            recent = [*recent, i, j][-TABU:]
            reached = trade[0][0]
        if reached <= _TOL and cluster.rules_hold(current):
            return current
    return None


def _count(cluster: _Cluster, place: np.ndarray) -> int:
    return _count_of(place, cluster.home)


def _count_of(place: np.ndarray, home: np.ndarray) -> int:
    return int(np.count_nonzero(place != home))


def _one_fewer(cluster: _Cluster, place: np.ndarray, budget: list[int]) -> np.ndarray | None:
    """A balanced placement with one move fewer than `place`, or None."""
    moved = [int(k) for k in np.nonzero(place != cluster.home)[0]]
    target = len(moved) - 1
    for k in moved:  # drop
        trial = place.copy()
        trial[k] = cluster.home[k]
        if cluster.balanced(trial) and cluster.rules_hold(trial):
            return trial
    for a, b in combinations(moved, 2):  # two for one
        trial = place.copy()
        trial[a], trial[b] = cluster.home[a], cluster.home[b]
        found = _first_fix(cluster, trial, target)
        if found is not None:
            return found
    return _swaps(cluster, place, moved, target, budget)


def _first_fix(cluster: _Cluster, place: np.ndarray, count: int) -> np.ndarray | None:
    """One move from `place` that balances it with at most `count` moves and keeps the rules."""
    if not _one_move_may_balance(cluster, place):
        return None
    over, smooth = cluster.scores(place)
    fixing = np.flatnonzero(over.ravel() <= _TOL)  # the moves that balance: in lexsort's order, among them only
    for flat in fixing[np.lexsort((smooth.ravel()[fixing], over.ravel()[fixing]))]:
        k, t = divmod(int(flat), len(cluster.nodes))
        trial = place.copy()
        trial[k] = t
        if _count(cluster, trial) <= count and cluster.rules_hold(trial):
            return trial
    return None


def _one_move_may_balance(cluster: _Cluster, place: np.ndarray) -> bool:
    """Whether one move could bring `place` within every band: a move changes two nodes only, so
    in each dimension the other nodes must already lie within the band, and the narrowest that any
    two nodes left out can leave is found among the two lowest and two highest. Scoring every move
    (`_Cluster.scores`) is skipped where this says no: most two-for-one trials (mid-300 memory,cpu:
    443 of 517), the same plans."""
    p = cluster.percents(place)
    n = len(p)
    if n <= 2:
        return True
    v = np.sort(p, axis=0)
    narrowest = np.minimum(np.minimum(v[n - 1] - v[2], v[n - 2] - v[1]), v[n - 3] - v[0])
    return bool(np.all(narrowest <= cluster.bands + _TOL))


def _swaps(cluster: _Cluster, place: np.ndarray, moved: list[int], count: int, budget: list[int]) -> np.ndarray | None:
    """From `place` less its least needed move, swaps towards balance at `count` moves (see the module)."""
    losses = []
    for k in moved:
        trial = place.copy()
        trial[k] = cluster.home[k]
        lost, spread = _totals(cluster, trial)
        losses.append((lost, spread, k, trial))
    if not losses:
        return None
    _, _, dropped, current = min(losses, key=lambda x: (x[0], x[1], x[2]))
    recent: list[int] = [dropped]
    while budget[0] > 0:
        budget[0] -= 1
        best: tuple[float, float, int, int, int] | None = None
        for m in (int(k) for k in np.nonzero(current != cluster.home)[0]):
            if m in recent:
                continue
            trial = current.copy()
            trial[m] = cluster.home[m]
            over, smooth = cluster.scores(trial)
            for k in recent:
                over[k, :] = np.inf
            k, t = divmod(_first(over, smooth), len(cluster.nodes))
            if not np.isfinite(over[k, t]):
                continue
            trial[k] = t
            if _count(cluster, trial) > count:
                continue
            key = (float(over[k, t]), float(smooth[k, t]), m, k, t)
            if best is None or key < best:
                best = key
        trade = cluster.best_trade(current, recent, count, fewer_first=False)
        if best is None and trade is None:
            return None
        current = current.copy()
        if trade is not None and (best is None or (trade[0][0], trade[0][2]) < best[:2]):
            i, j = trade[1], trade[2]
            current[i], current[j] = current[j], current[i]
            recent = ([*recent, i, j])[-TABU:]
            reached = trade[0][0]
        else:
            assert best is not None
            _, _, m, k, t = best
            current[m] = cluster.home[m]
            current[k] = t
            recent = ([*recent, m, k])[-TABU:]
            reached = best[0]
        if reached <= _TOL and cluster.balanced(current) and cluster.rules_hold(current):
            return current
    return None


def _first(over: np.ndarray, smooth: np.ndarray, added: np.ndarray | None = None) -> int:
    """The flat index of the least (over, added, smooth), the first on ties; lexsort's answer, but
    only the least is sought, among the few whose `over` is least."""
    flat_over = over.ravel()
    low = flat_over.min()
    tied = np.flatnonzero(flat_over <= low) if np.isfinite(low) else np.arange(flat_over.size)
    keys = [smooth.ravel()[tied]] + ([added.ravel()[tied]] if added is not None else [])
    return int(tied[np.lexsort(keys)[0]])


def _totals(cluster: _Cluster, place: np.ndarray) -> tuple[float, float]:
    p = cluster.percents(place)
    spread = cluster.in_bands(p.max(axis=0) - p.min(axis=0))
    return float(np.maximum(spread - 1.0, 0.0).sum()), float(spread.sum())


def _replay(base: PlanState, cluster: _Cluster, place: np.ndarray) -> PlanState | None:
    """The placement's moves made through PlanState (rules and room at each step), if some order
    allows them and the end is balanced."""
    state = clone(base)
    moves = [(cluster.units[k], cluster.nodes[place[k]]) for k in np.nonzero(place != cluster.home)[0]]
    if not apply_in_order(state, moves) or not state.balanced():
        return None
    return state
