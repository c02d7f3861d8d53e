"""Ties between placements of as many migrations broken towards less data copied, after the solve.

The exact model counts migrations alone (exact.COUNT_ONLY): with the data copied in the objective as
a tie-break HiGHS cannot round its bound up, and its root node spent most of a plan's time closing
that tie-break's gap (groups balancing CPU: 0.64 s for the tie-break against 0.07 s for the count,
proven either way; memory 0.45 s, still unproven at 100 nodes). The count is what is proven; the
data is then lowered here, by trades that keep the count: a moved guest stays home and a lighter
guest of the same node moves instead (to any node), the heaviest moves first, taken only when every
row of the model still holds (the band's rows against the solution's own top and bottom, the memory
and storage limits, every rule family's rows, the cap and the placements set aside). Rows are the
model's own, so a new rule family is honoured here with no change. Bounded by `PASSES` over the
moves, so the same input gives the same plan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .exact import PlacementModel

PASSES = 3  # rounds over every move; each round trades each move at most once
_TOL = 1e-6  # rows are met within HiGHS's own feasibility tolerance


def lighter(model: PlacementModel, x: np.ndarray, data: np.ndarray) -> np.ndarray:
    """`x` (one value per model column) with migrations traded for lighter ones as the module
    says; `data`: what each column's migration copies (0 where the guest stays)."""
    x = x.copy()
    by_col: list[list[tuple[int, float]]] = [[] for _ in range(model.width)]
    for r, c, v in zip(model.rows, model.cols, model.vals, strict=True):
        by_col[c].append((r, v))
    activity = np.zeros(len(model.lb))
    for col in np.flatnonzero(np.abs(x) > 1e-9).tolist():
        for r, v in by_col[col]:
            activity[r] += v * x[col]
    low, high = np.asarray(model.lb), np.asarray(model.ub)
    home = model.state.where
    column = {pair: col for pair, col in model.index.items() if col not in model.forbidden}
    on: dict[int, str] = {g: n for (g, n), col in column.items() if x[col] > 0.5}
    nodes_of: dict[int, list[str]] = {}
    for g, n in column:
        nodes_of.setdefault(g, []).append(n)
    at_home: dict[str, set[int]] = {}  # node -> the guests that end on it and started there
    for g, n in on.items():
        if n == home[g]:
            at_home.setdefault(n, set()).add(g)

    def trade(changes: list[tuple[int, float]]) -> bool:
        delta: dict[int, float] = {}
        for col, change in changes:
            for r, v in by_col[col]:
                delta[r] = delta.get(r, 0.0) + v * change
        if any(not low[r] - _TOL <= activity[r] + d <= high[r] + _TOL for r, d in delta.items()):
            return False
        for r, d in delta.items():
            activity[r] += d
        for col, change in changes:
            x[col] += change
        return True

    for _ in range(PASSES):
        traded = False
        moved = sorted((g for g, n in on.items() if n != home[g]), key=lambda g: (-data[column[(g, on[g])]], g))
        for u in moved:
            source, target = home[u], on[u]
            if (u, source) not in column:
                continue  # it cannot go back (its node is drained)
            heavy = data[column[(u, target)]]
            lighter_ones = sorted((data[column[(v, n)]], v, n) for v in at_home.get(source, ())
                                  for n in nodes_of[v] if n != source and data[column[(v, n)]] < heavy)
            for _, v, n in lighter_ones:
                if trade([(column[(u, target)], -1.0), (column[(u, source)], 1.0),
                          (column[(v, source)], -1.0), (column[(v, n)], 1.0)]):
                    on[u], on[v] = source, n
                    at_home[source] = (at_home[source] - {v}) | {u}
                    traded = True
                    break
        if not traded:
            break
    return x
