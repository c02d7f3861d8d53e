"""Which disks of one storage group move where: the fewest moves that bring the group's fullest and
emptiest storage within the band, then the fewest GiB copied.

An exact MILP (HiGHS, highs.py) where the group is small: x[d, t] = 1 when disk d moves to storage t;
each storage's final percent lies in [lo, hi], hi - lo <= band (or, when no plan reaches the band, the
narrowest spread any plan reaches); no storage that receives passes `max_usage`. Three solves, one
per objective in turn (the narrowest spread when the band is out of reach, the fewest moves, then the
fewest GiB among those), each bounded by branch-and-bound nodes, never by the clock: the same snapshot
gives the same plan. A greedy (one move at a time, the one that narrows the spread most) otherwise,
or when the bounded search found nothing.

`max_usage` in the model: `strict` counts every arrival on a storage before any departure from it
(any order of the moves is then safe); without it only the end state is bounded, and storage_balance
then looks for a safe order (most plans have one: a storage rarely both sends and receives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .highs import solve
from .storage_facts import Candidate, Store
from .storage_models import GIB

# Branch-and-bound nodes per solve. Every case tried (storage-3: 84 disks, 3 storages; random groups
# of up to 6 storages and 200 disks) is settled at the root or within a few dozen nodes.
EXACT_NODE_LIMIT = 500
# Beyond this many x[d, t] columns the greedy plans alone.
EXACT_MAX_COLUMNS = 6000
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


def exact(group: list[str], stores: dict[str, Store], cands: list[Candidate], band: float, max_usage: float,
          *, strict: bool, node_limit: int = EXACT_NODE_LIMIT) -> Selection | None:
    """The exact plan, or None when the model is too large or the bounded search found no plan."""
    pairs = [(i, t) for i, c in enumerate(cands) for t in c.targets]
    if not pairs or len(pairs) > EXACT_MAX_COLUMNS:
        return None
    n = len(pairs)
    hi, lo, ex = n, n + 1, n + 2
    col_low = [0.0] * n + [-1e3, -1e3, 0.0]
    col_high = [1.0] * n + [1e3, 1e3, 0.0]  # the excess over the band: 0 unless the band is out of reach
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

    by_cand: dict[int, list[int]] = {}
    into: dict[str, list[int]] = {s: [] for s in group}
    out_of: dict[str, list[int]] = {s: [] for s in group}
    for col, (i, t) in enumerate(pairs):
        by_cand.setdefault(i, []).append(col)
        into[t].append(col)
        out_of[cands[i].source].append(col)
    for columns in by_cand.values():
        row([(col, 1.0) for col in columns], 0.0, 1.0)
    for s in group:
        st = stores[s]
        base = 100.0 * (st.used - st.freed) / st.total
        delta = [(col, 100.0 * cands[pairs[col][0]].size / st.total) for col in into[s]]
        delta += [(col, -100.0 * cands[pairs[col][0]].size / st.total) for col in out_of[s]]
        row([*delta, (hi, -1.0)], -np.inf, -base)  # percent <= hi
        row([*delta, (lo, -1.0)], -base, np.inf)  # percent >= lo
        room = st.limit(max_usage) - st.used  # in-flight sources are not credited while the plan runs
        if room < 0:
            for col in into[s]:
                col_high[col] = 0.0  # a storage above max_usage takes nothing
            continue
        arrivals = [(col, cands[pairs[col][0]].size / GIB) for col in into[s]]
        departures = [] if strict else [(col, -cands[pairs[col][0]].size / GIB) for col in out_of[s]]
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
    row([(col, 1.0) for col in range(n)], fewest, fewest)
    gib = np.zeros(n + 3)
    gib[:n] = [cands[i].size / GIB for i, _ in pairs]
    status2, x2 = run(gib)
    if x2 is not None:
        x, proven = x2, proven and status2 == "optimal"
    else:
        proven = False
    chosen = [(cands[pairs[col][0]], pairs[col][1]) for col in range(n) if x[col] > 0.5]
    return Selection(chosen, "exact", proven)


def greedy(group: list[str], stores: dict[str, Store], cands: list[Candidate], band: float,
           max_usage: float) -> Selection:
    """One move at a time, each the one that narrows the group's spread most (the smaller disk among
    equals), until the band is met or no move narrows it; each move fits its target when it starts,
    counting the moves before it (their sources freed: storage_balance runs them one after another
    when no batch fits)."""
    final = final_bytes(group, stores, [])
    now = {s: float(stores[s].used) for s in group}
    limit = {s: stores[s].limit(max_usage) for s in group}
    pending = sorted(cands, key=lambda c: (c.source, -c.size, c.vmid, c.disk))
    chosen: list[tuple[Candidate, str]] = []
    current = spread(final, stores)
    while current > band + _EPS:
        pct = {s: 100.0 * final[s] / stores[s].total for s in group}
        top, bottom = max(group, key=lambda s: pct[s]), min(group, key=lambda s: pct[s])
        best: tuple[float, int, int, str, Candidate, str] | None = None
        for c in pending:
            for t in c.targets:
                if (c.source != top and t != bottom) or now[t] + c.size > limit[t]:
                    continue
                final[c.source] -= c.size
                final[t] += c.size
                after = spread(final, stores)
                final[c.source] += c.size
                final[t] -= c.size
                key = (after, c.size, c.vmid, c.disk, c, t)
                if after < current - _EPS and (best is None or key[:4] < best[:4]):
                    best = key
        if best is None:
            break
        current, c, t = best[0], best[4], best[5]
        final[c.source] -= c.size
        final[t] += c.size
        now[c.source] -= c.size
        now[t] += c.size
        pending.remove(c)
        chosen.append((c, t))
    return Selection(chosen, "greedy" if chosen else "none")
