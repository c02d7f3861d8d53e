"""One MILP solve with HiGHS (the `highspy` package): the exact models' solver.

HiGHS through highspy rather than scipy's `milp`: importing scipy.optimize takes a quarter of a
second before any plan is made (this machine: 270 ms of a 1.1 s `pvebalance plan`), highspy with
numpy about a tenth; and highspy sets any HiGHS option, where scipy's wrapper knows five.

The solve is bounded by work for plans: branch-and-bound nodes (`node_limit`), one thread (the same
search on any machine), HiGHS's own random seed. `time_limit` is for yardsticks (the bench), never
for plans: a search a clock cuts short depends on the machine's load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import highspy
import numpy as np
from highspy import _core

# HiGHS's sub-MIP heuristics (RINS, RENS) and symmetry detection cost most of the root node's time
# on the placement models (mid-300 balancing CPU: 4-6 s of the root's 7) and found nothing the
# engine's own plans had not: off, the root takes a fraction of that and the proofs are the same.
# The count-only model of several dimensions turns RINS and RENS back on (exact.COUNT_ONLY): there
# they find the placements the heuristics miss.
_QUIET = {"output_flag": False, "threads": 1, "mip_heuristic_run_rins": False, "mip_heuristic_run_rens": False,
          "mip_detect_symmetry": False}


@dataclass
class Solved:
    status: str  # "optimal", "infeasible", "node limit", "time limit", or HiGHS's words for another end
    x: np.ndarray | None  # the best solution found, if any
    dual_bound: float | None  # what the solver proved no solution beats
    nodes: int = 0  # branch-and-bound nodes searched

    @property
    def stopped_by(self) -> str | None:
        return self.status if self.status in ("node limit", "time limit") else None


def solve(cost: np.ndarray, rows: list[int], cols: list[int], vals: list[float], row_low: list[float],
          row_high: list[float], col_low: list[float], col_high: list[float], integer: list[bool], *,
          node_limit: int | None, time_limit: float | None,
          options: Mapping[str, float | bool] | None = None) -> Solved:
    """Minimise cost @ x subject to row_low <= A x <= row_high (A given as coordinates, rows by
    cols), col_low <= x <= col_high, x integral where `integer` says so. `options`: HiGHS options
    beside the defaults (`_QUIET`)."""
    n_col, n_row = len(col_low), len(row_low)
    r = np.asarray(rows, dtype=np.int32)
    c = np.asarray(cols, dtype=np.int32)
    v = np.asarray(vals, dtype=float)
    order = np.lexsort((r, c))  # column-wise, rows ascending within a column
    start = np.zeros(n_col + 1, dtype=np.int32)
    np.add.at(start, c + 1, 1)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n_col, n_row
    lp.col_cost_ = np.asarray(cost, dtype=float)
    lp.col_lower_, lp.col_upper_ = np.asarray(col_low, dtype=float), np.asarray(col_high, dtype=float)
    lp.row_lower_, lp.row_upper_ = np.asarray(row_low, dtype=float), np.asarray(row_high, dtype=float)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n_col, n_row
    lp.a_matrix_.start_ = np.cumsum(start, dtype=np.int32)
    lp.a_matrix_.index_ = r[order]
    lp.a_matrix_.value_ = v[order]
    lp.integrality_ = [highspy.HighsVarType.kInteger if flag else highspy.HighsVarType.kContinuous
                       for flag in integer]
    # the bare solver: highspy's Highs subclass routes HiGHS's log through Python callbacks, which
    # print its banner on stdout when it is made, before any option can silence it
    solver = _core._Highs()
    for name, value in {**_QUIET, **(options or {})}.items():
        solver.setOptionValue(name, value)
    if node_limit is not None:
        solver.setOptionValue("mip_max_nodes", int(node_limit))
    if time_limit is not None:
        solver.setOptionValue("time_limit", float(time_limit))
    solver.passModel(lp)
    solver.run()
    info = solver.getInfo()
    status = solver.getModelStatus()
    words = {highspy.HighsModelStatus.kOptimal: "optimal", highspy.HighsModelStatus.kInfeasible: "infeasible",
             highspy.HighsModelStatus.kSolutionLimit: "node limit", highspy.HighsModelStatus.kTimeLimit: "time limit"}
    found = info.primal_solution_status == 2  # kSolutionStatusFeasible
    dual = float(info.mip_dual_bound)
    return Solved(words.get(status, solver.modelStatusToString(status)),
                  np.array(solver.getSolution().col_value) if found else None,
                  dual if np.isfinite(dual) else None, int(info.mip_node_count))
