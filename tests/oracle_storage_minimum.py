"""The fewest disk moves, then the fewest GiB copied, that bring a storage group within its band: an
exact MILP (HiGHS) on a raw API dump, the yardstick for engine/storage_balance.py's plans.

It reads the dump's `api` mapping through tests/oracle_storage_balance.py (which disk may go where,
by the rules the oracle judges a move by; each storage's capacity and use), never pvebalance's parsers
or its storage model, and writes its own model: x[d, t] = 1 when disk d moves to storage t of its
group; each disk moves once at most; every storage of the group ends within [lo, lo + band] percent
of its capacity; a storage that receives anything ends at or below `max_usage` (a storage that
only sends may stay above it, as it may in any plan the oracle accepts).

It bounds the end state, not the order: the oracle's every-batch rule implies these rows (after the
last batch a storage receives in, it only sends), so every safe plan is a solution and the minimum is
a lower bound on any safe plan. `safe_order` looks for an order of the optimum the oracle accepts,
one move at a time; when it finds one, the bound is the minimum of safe plans too.

Two solves, lexicographic: the fewest moves, then the fewest GiB with that many. No time or node
limit and a relative gap of 0: "optimal" is proven. `fewest_gib` drops the count (the least any plan
copies, with however many moves).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import highspy
import numpy as np
from highspy import _core

from tests.oracle_storage_balance import Move, capacities, default_group, judge, movable_targets

GIB = 1 << 30


@dataclass
class Minimum:
    """What the MILP proved for one group (moves None: no plan brings it within the band)."""

    group: list[str]
    columns: int  # x[d, t] variables
    disks: int  # disks that may move
    moves: int | None = None
    gib: float | None = None  # the fewest GiB copied by a plan of `moves` moves
    chosen: list[Move] = field(default_factory=list)  # one optimum, batch numbers in no order yet
    seconds: float = 0.0


@dataclass
class _Model:
    group: list[str]
    disks: list[tuple[int, str, str, int, tuple[str, ...]]]
    pairs: list[tuple[int, str]]  # column -> (disk index, target)
    rows: list[tuple[list[tuple[int, float]], float, float]]
    n_cols: int
    integer: list[bool]
    col_low: list[float]
    col_high: list[float]


def _model(api: Mapping[str, Any], group: Sequence[str], band: float, max_usage: float) -> _Model:
    figures = capacities(api)
    group = list(group)
    members = set(group)
    disks = [d for d in movable_targets(api, [group]) if d[2] in members]
    pairs = [(i, t) for i, d in enumerate(disks) for t in d[4]]
    n = len(pairs)
    lo = n  # the band's bottom, percent
    col_low, col_high = [0.0] * n + [-1000.0], [1.0] * n + [1000.0]
    integer = [True] * n + [False]
    rows: list[tuple[list[tuple[int, float]], float, float]] = []
    for i in range(len(disks)):
        rows.append(([(c, 1.0) for c, (j, _) in enumerate(pairs) if j == i], 0.0, 1.0))  # moves once at most
    for s in group:
        total, used = figures[s]
        # the change of s's use, GiB: + what arrives, - what leaves
        change = [(c, disks[i][3] / GIB) for c, (i, t) in enumerate(pairs) if t == s]
        change += [(c, -disks[i][3] / GIB) for c, (i, _) in enumerate(pairs) if disks[i][2] == s]
        cap, now, limit = total / GIB, used / GIB, total * max_usage / 100 / GIB
        pct = [(c, 100.0 * v / cap) for c, v in change]
        rows.append(([*pct, (lo, -1.0)], -100.0 * now / cap, np.inf))  # percent >= lo
        rows.append(([*pct, (lo, -1.0)], -np.inf, band - 100.0 * now / cap))  # percent <= lo + band
        arriving = [c for c, (_, t) in enumerate(pairs) if t == s]
        if not arriving:
            continue
        if now <= limit:  # it ends at or below the limit whether it receives or not
            rows.append((change, -np.inf, limit - now))
            continue
        # above the limit now: only if it receives (r = 1) must it end at or below it
        r = len(col_low)
        col_low.append(0.0)
        col_high.append(1.0)
        integer.append(True)
        for c in arriving:
            rows.append(([(c, 1.0), (r, -1.0)], -np.inf, 0.0))
        over = now - limit
        rows.append(([*change, (r, over)], -np.inf, limit - now + over))
    return _Model(group, disks, pairs, rows, len(col_low), integer, col_low, col_high)


def _solve(m: _Model, cost: list[float], extra: list[tuple[list[tuple[int, float]], float, float]],
           ) -> np.ndarray | None:
    """The optimum's columns, proven, or None when the model has no solution."""
    lp = highspy.HighsLp()
    lp.num_col_ = m.n_cols
    lp.col_cost_ = np.array(cost + [0.0] * (m.n_cols - len(cost)))
    lp.col_lower_, lp.col_upper_ = np.array(m.col_low), np.array(m.col_high)
    rows = m.rows + extra
    lp.num_row_ = len(rows)
    lp.row_lower_ = np.array([lb for _, lb, _ in rows])
    lp.row_upper_ = np.array([ub for _, _, ub in rows])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    starts, index, value = [0], [], []
    for entries, _, _ in rows:
        index += [c for c, _ in entries]
        value += [v for _, v in entries]
        starts.append(len(index))
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = starts, index, value
    lp.integrality_ = [highspy.HighsVarType.kInteger if f else highspy.HighsVarType.kContinuous for f in m.integer]
    h = _core._Highs()  # the bare solver: highspy.Highs() prints a banner on stdout when made
    for option, setting in {"output_flag": False, "threads": 1, "mip_rel_gap": 0.0, "mip_abs_gap": 1e-6}.items():
        h.setOptionValue(option, setting)
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        return None
    if status != highspy.HighsModelStatus.kOptimal:
        raise RuntimeError(f"HiGHS ended with {h.modelStatusToString(status)}: no proven minimum")
    return np.array(h.getSolution().col_value)


def _chosen(m: _Model, x: np.ndarray) -> list[Move]:
    return [Move(m.disks[i][0], m.disks[i][1], m.disks[i][2], t, 0)
            for c, (i, t) in enumerate(m.pairs) if x[c] > 0.5]


def fewest_moves(api: Mapping[str, Any], *, band: float = 10.0, max_usage: float = 90.0,
                 group: Sequence[str] | None = None) -> Minimum:
    """The fewest moves that bring `group` (default: the oracle's default group) within `band` pp,
    then the fewest GiB with that many."""
    start = time.perf_counter()
    m = _model(api, group or default_group(api), band, max_usage)
    n = len(m.pairs)
    out = Minimum(group=m.group, columns=n, disks=len(m.disks))
    x = _solve(m, [1.0] * n, [])
    if x is not None:
        count = round(float(x[:n].sum()))
        size = [m.disks[i][3] / GIB for i, _ in m.pairs]
        x = _solve(m, size, [([(c, 1.0) for c in range(n)], count, count)])
        assert x is not None  # the first solve's optimum is a solution of the second
        out.moves, out.gib, out.chosen = count, float(np.dot(size, x[:n])), _chosen(m, x)
    out.seconds = time.perf_counter() - start
    return out


def fewest_gib(api: Mapping[str, Any], *, band: float = 10.0, max_usage: float = 90.0,
               group: Sequence[str] | None = None) -> tuple[float, int] | None:
    """The fewest GiB any plan copies to bring `group` within `band` pp, whatever its count of moves,
    then the fewest moves that copy so few (None: no plan reaches the band)."""
    m = _model(api, group or default_group(api), band, max_usage)
    n = len(m.pairs)
    size = [m.disks[i][3] / GIB for i, _ in m.pairs]
    x = _solve(m, size, [])
    if x is None:
        return None
    least = float(np.dot(size, x[:n]))
    x = _solve(m, [1.0] * n, [(list(enumerate(size)), -np.inf, least + 1e-6)])
    assert x is not None  # the first solve's optimum is a solution of the second
    return least, round(float(x[:n].sum()))


def safe_order(api: Mapping[str, Any], moves: Sequence[Move], *, max_usage: float = 90.0,
               group: Sequence[str] | None = None) -> list[Move] | None:
    """The moves one at a time in an order the oracle accepts (each next move one whose target stays
    at or below max_usage, the one out of the fullest source first), or None when this search finds
    none (another order may still exist)."""
    figures = capacities(api)
    size = {(d[0], d[1]): d[3] for d in movable_targets(api, [group] if group else None)}
    used = {s: float(u) for s, (_, u) in figures.items()}
    pending = list(moves)
    ordered: list[Move] = []
    while pending:
        fits = [m for m in pending
                if used[m.target] + size[(m.vmid, m.disk)] <= figures[m.target][0] * max_usage / 100]
        if not fits:
            return None
        m = max(fits, key=lambda m: (used[m.source] / figures[m.source][0], size[(m.vmid, m.disk)]))
        used[m.target] += size[(m.vmid, m.disk)]
        used[m.source] -= size[(m.vmid, m.disk)]
        pending.remove(m)
        ordered.append(Move(m.vmid, m.disk, m.source, m.target, len(ordered)))
    if judge(api, ordered, max_usage=max_usage, groups=[group] if group else None).problems:
        return None
    return ordered
