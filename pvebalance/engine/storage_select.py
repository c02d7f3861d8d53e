"""Which disks of one storage group move where: the fewest moves that bring the group's fullest and
emptiest storage within the band, then the fewest GiB copied.

An exact MILP (HiGHS, highs.py) where the group is small: y[k, t] disks of class k (the same storage,
size and targets) move to storage t; each storage's final percent lies in [lo, hi], hi - lo <= band
(or, when no plan reaches the band, the narrowest spread any plan reaches); no storage that receives
passes `max_usage`. Up to three solves, one per objective in turn (the narrowest spread when the band
is out of reach, the fewest moves, then the fewest GiB among those), each bounded by branch-and-bound
nodes, never by the clock: the same snapshot gives the same plan. A greedy (one move at a time, the
one that narrows the spread most) otherwise, or when the bounded search found nothing.

`max_usage` in the model: `strict` counts every arrival on a storage before any departure from it
(any order of the moves is then safe); without it only the end state is bounded, and storage_balance
then looks for a safe order (most plans have one: a storage rarely both sends and receives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .storage_facts import Candidate, Store
from .storage_models import GIB

if TYPE_CHECKING:
    import numpy as np

# Branch-and-bound nodes per solve. storage-3 (84 disks, 3 storages) is settled at the root; synthetic
# groups of 4-6 storages and 1,000-1,500 disks of 6 sizes prove the fewest moves at the root and the
# fewest GiB within about 100 nodes.
EXACT_NODE_LIMIT = 200
# Beyond this many y[k, t] columns the greedy plans alone; beyond GIB_STAGE_MAX_COLUMNS the fewest
# moves are still searched, and `shrink` lowers their GiB. Measured: 3 storages of 700 disks of 490
# distinct sizes (1,083 columns): fewest moves proven at the root in 1.3 s, the GiB search 17 s for
# 20 nodes, not proven; 123 columns (6 sizes, 5 storages): 3 s, proven.
EXACT_MAX_COLUMNS = 1500
GIB_STAGE_MAX_COLUMNS = 400
_EPS = 1e-7


@dataclass
class Selection:
    moves: list[tuple[Candidate, str]]
    method: Literal["none", "exact", "greedy"]
    proven: bool = False


def spread(final: dict[str, float], stores: dict[str, Store]) -> float:
    pct = [100.0 * final[s] / stores[s].total for s in final]
    return max(pct) - min(pct) if pct else 0.0


def final_bytes(group: list[str], stores: dict[str, Store], moves: list[tuple[Candidate, str]]) -> dict[str, float]:
    """Each storage's bytes once the moves (and those in flight) have ended."""
    out = {s: float(stores[s].used - stores[s].freed) for s in group}
    for c, t in moves:
        out[c.source] -= c.size
        out[t] += c.size
    return out


def _classes(cands: list[Candidate]) -> list[list[Candidate]]:
    """The candidates that are interchangeable for the model (same storage, size and targets), each
    class in vmid order: the model counts how many of a class go where, so its size follows the
    number of distinct sizes, not of disks (and ten equal disks are not ten! equal plans to search)."""
    classes: dict[tuple[str, int, tuple[str, ...]], list[Candidate]] = {}
    for c in sorted(cands, key=lambda c: (c.vmid, c.disk)):
        classes.setdefault((c.source, c.size, c.targets), []).append(c)
    return [classes[k] for k in sorted(classes)]


def exact(group: list[str], stores: dict[str, Store], cands: list[Candidate], band: float, max_usage: float,
          *, strict: bool, node_limit: int = EXACT_NODE_LIMIT) -> Selection | None:
    """The exact plan, or None when the model is too large or the bounded search found no plan."""
    import numpy as np  # with highspy: loaded only when a storage group is planned

    from .highs import solve

    classes = _classes(cands)
    pairs = [(k, t) for k, members in enumerate(classes) for t in members[0].targets]
    if not pairs or len(pairs) > EXACT_MAX_COLUMNS:
        return None
    n = len(pairs)
    size = [classes[k][0].size for k, _ in pairs]
    hi, lo, ex = n, n + 1, n + 2
    col_low = [0.0] * n + [-1e3, -1e3, 0.0]
    # y[k, t]: how many disks of class k move to t; then the band's top and bottom and the excess
    # over the band (0 unless the band is out of reach)
    col_high = [float(len(classes[k])) for k, _ in pairs] + [1e3, 1e3, 0.0]
    integer = [True] * n + [False] * 3
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    low: list[float] = []
    high: list[float] = []

    def row(entries: list[tuple[int, float]], lb: float, ub: float) -> None:
        r = len(low)
        for col, v in entries:
            rows.append(r)
            cols.append(col)
            vals.append(v)
        low.append(lb)
        high.append(ub)

    by_class: dict[int, list[int]] = {}
    into: dict[str, list[int]] = {s: [] for s in group}
    out_of: dict[str, list[int]] = {s: [] for s in group}
    for col, (k, t) in enumerate(pairs):
        by_class.setdefault(k, []).append(col)
        into[t].append(col)
        out_of[classes[k][0].source].append(col)
    for k, columns in by_class.items():
        row([(col, 1.0) for col in columns], 0.0, float(len(classes[k])))
    for s in group:
        st = stores[s]
        base = 100.0 * (st.used - st.freed) / st.total
        delta = [(col, 100.0 * size[col] / st.total) for col in into[s]]
        delta += [(col, -100.0 * size[col] / st.total) for col in out_of[s]]
        row([*delta, (hi, -1.0)], -np.inf, -base)  # percent <= hi
        row([*delta, (lo, -1.0)], -base, np.inf)  # percent >= lo
        room = st.limit(max_usage) - st.used  # in-flight sources are not credited while the plan runs
        if room < 0:
            for col in into[s]:
                col_high[col] = 0.0  # a storage above max_usage takes nothing
            continue
        arrivals = [(col, size[col] / GIB) for col in into[s]]
        departures = [] if strict else [(col, -size[col] / GIB) for col in out_of[s]]
        if arrivals:
            row(arrivals + departures, -np.inf, room / GIB)
    row([(hi, 1.0), (lo, -1.0), (ex, -1.0)], -np.inf, band)

    def run(cost: np.ndarray) -> tuple[str, np.ndarray | None]:
        res = solve(cost, rows, cols, vals, low, high, col_low, col_high, integer, node_limit=node_limit,
                    time_limit=None)
        return res.status, res.x

    proven = True
    count = np.zeros(n + 3)
    count[:n] = 1.0
    status, x = run(count)
    if status == "infeasible":  # the band is out of reach: first the narrowest spread reachable
        col_high[ex] = 1e3
        narrow = np.zeros(n + 3)
        narrow[ex] = 1.0
        status, x = run(narrow)
        if x is None:
            return None
        proven = status == "optimal"
        col_high[ex] = float(x[ex]) + 1e-6
        status, x = run(count)
    if x is None:
        return None
    proven = proven and status == "optimal"
    fewest = round(float(x[:n].sum()))
    if fewest == 0:
        return Selection([], "exact", proven)
    if n <= GIB_STAGE_MAX_COLUMNS:
        row([(col, 1.0) for col in range(n)], fewest, fewest)
        gib = np.zeros(n + 3)
        gib[:n] = [b / GIB for b in size]
        status2, x2 = run(gib)
        if x2 is not None:
            x, proven = x2, proven and status2 == "optimal"
        else:
            proven = False
    chosen: list[tuple[Candidate, str]] = []
    taken = dict.fromkeys(range(len(classes)), 0)
    for col, (k, t) in enumerate(pairs):
        many = round(float(x[col]))
        chosen += [(c, t) for c in classes[k][taken[k]:taken[k] + many]]
        taken[k] += many
    if n > GIB_STAGE_MAX_COLUMNS:
        return Selection(shrink(group, stores, cands, chosen, band, max_usage, strict=strict), "exact", False)
    return Selection(chosen, "exact", proven)


def _holds(group: list[str], stores: dict[str, Store], moves: list[tuple[Candidate, str]], band: float,
           max_usage: float, strict: bool) -> float | None:
    """The excess of the moves' end state over the band, or None when they break the model's max_usage
    rows (`strict`: every arrival counted before any departure; else the end state)."""
    arriving = dict.fromkeys(group, 0.0)
    leaving = dict.fromkeys(group, 0.0)
    for c, t in moves:
        arriving[t] += c.size
        leaving[c.source] += c.size
    for s in group:
        st = stores[s]
        held = st.used + arriving[s] - (0.0 if strict else leaving[s])
        if arriving[s] and held > st.limit(max_usage) + 1.0:
            return None
    return max(0.0, spread(final_bytes(group, stores, moves), stores) - band)


def shrink(group: list[str], stores: dict[str, Store], cands: list[Candidate], moves: list[tuple[Candidate, str]],
           band: float, max_usage: float, *, strict: bool) -> list[tuple[Candidate, str]]:
    """Fewer GiB for the same number of moves where the model is too large to search for them: each
    move in turn (the largest first) takes instead the smallest disk left of its storage that goes
    to the same target and keeps the plan as close to the band and within max_usage."""
    moves = sorted(moves, key=lambda m: (-m[0].size, m[0].vmid, m[0].disk))
    excess = _holds(group, stores, moves, band, max_usage, strict)
    if excess is None:
        return moves
    spare = sorted(cands, key=lambda c: (c.size, c.vmid, c.disk))
    for i, (c, t) in enumerate(moves):
        used = {(m.vmid, m.disk) for m, _ in moves}
        for other in spare:
            if other.size >= c.size:
                break
            if other.source != c.source or t not in other.targets or (other.vmid, other.disk) in used:
                continue
            trial = [*moves[:i], (other, t), *moves[i + 1:]]
            after = _holds(group, stores, trial, band, max_usage, strict)
            if after is not None and after <= excess + _EPS:
                moves = trial
                break
    return moves


def _spread_after(final: dict[str, float], total: dict[str, float], edges: list[str], c: Candidate,
                  t: str) -> float:
    """The group's spread once c has moved to t; `edges` holds the three fullest and emptiest."""
    pct = [100.0 * final[s] / total[s] for s in edges if s not in (c.source, t)]
    pct += [100.0 * (final[c.source] - c.size) / total[c.source], 100.0 * (final[t] + c.size) / total[t]]
    return max(pct) - min(pct)


def greedy(group: list[str], stores: dict[str, Store], cands: list[Candidate], band: float,
           max_usage: float) -> Selection:
    """One move at a time, each the one that narrows the group's spread most (the smaller disk among
    equals), until the band is met or no move narrows it; each move fits its target when it starts,
    counting the moves before it (their sources freed: storage_balance runs them one after another
    when no batch fits). Only a move out of the fullest storage or into the emptiest can narrow the
    spread, so only those are weighed."""
    final = final_bytes(group, stores, [])
    now = {s: float(stores[s].used) for s in group}
    limit = {s: stores[s].limit(max_usage) for s in group}
    total = {s: float(stores[s].total) for s in group}
    # disks of one class move alike: each class is weighed once, by its first disk left (in vmid order)
    classes = _classes(cands)
    left = [0] * len(classes)
    chosen: list[tuple[Candidate, str]] = []
    current = spread(final, stores)
    while current > band + _EPS:
        ranked = sorted(group, key=lambda s: (final[s] / total[s], s))
        top, bottom = ranked[-1], ranked[0]
        edges = ranked[:3] + ranked[-3:]  # the others' extremes, whichever two storages a move changes
        best: tuple[tuple[float, int, int, str, str], int, str] | None = None
        for k, members in enumerate(classes):
            if left[k] == len(members):
                continue
            c = members[left[k]]
            for t in c.targets if c.source == top else (bottom,) if bottom in c.targets else ():
                if now[t] + c.size > limit[t]:
                    continue
                spread_after = _spread_after(final, total, edges, c, t)
                key = (spread_after, c.size, c.vmid, c.disk, t)
                if spread_after < current - _EPS and (best is None or key < best[0]):
                    best = (key, k, t)
        if best is None:
            break
        (current, *_), k, t = best
        c = classes[k][left[k]]
        left[k] += 1
        final[c.source] -= c.size
        final[t] += c.size
        now[c.source] -= c.size
        now[t] += c.size
        chosen.append((c, t))
    return Selection(chosen, "greedy" if chosen else "none")
