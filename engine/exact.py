"""The fewest migrations that reach the balance target, as a MILP solved by HiGHS (scipy).

Placement only, no order: x[g, n] = 1 when guest g ends on node n. Every node's usage must lie in
a band no wider than `balanciness`, no node may pass its memory limit, and the rules hold (fixed
guests, allowed nodes, maintenance, affinity, anti-affinity). The objective counts the guests that
leave their node, with the GiB moved as a small tie-breaker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from pvebalance.shared.models import ClusterSnapshot, MigrationReason

from .load import guest_load
from .policy import Policy
from .rules import Constraints, build_constraints
from .state import PlanState


@dataclass
class ExactResult:
    status: str  # "optimal", "time limit", "infeasible", ...
    migrations: int | None
    bound: int | None  # fewest migrations any plan could have, as far as the solver proved
    placement: dict[int, str]
    seconds: float


def _candidates(state: PlanState) -> list[int]:
    """Guests the model may move: what the engine may move, stopped ones only off drained nodes."""
    out = []
    for vmid, g in sorted(state.guests.items()):
        node = state.where[vmid]
        if vmid in state.c.fixed or node not in state.online:
            continue
        if g.running or node in state.draining:
            out.append(vmid)
    return out


def minimum_migrations(snapshot: ClusterSnapshot, policy: Policy, time_limit: float = 60.0) -> ExactResult:
    started = time.monotonic()
    c = build_constraints(snapshot, policy)
    state = PlanState(snapshot, policy, c)
    policy = state.policy
    nodes = state.targets
    movable = _candidates(state)
    index: dict[tuple[int, str], int] = {}
    for g in movable:
        for n in nodes:
            if c.may_be_on(g, n):  # a pinned guest on a node outside its pins must leave it
                index[(g, n)] = len(index)
    nvar = len(index) + 2  # + hi, lo
    hi, lo = nvar - 2, nvar - 1
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lb: list[float] = []
    ub: list[float] = []

    def row(entries: list[tuple[int, float]], low: float, high: float) -> None:
        r = len(lb)
        for col, val in entries:
            rows.append(r)
            cols.append(col)
            vals.append(val)
        lb.append(low)
        ub.append(high)

    load = {g: guest_load(state.guests[g], policy) for g in movable}
    mem = {g: float(state.guests[g].mem if state.guests[g].running else 0) for g in movable}
    for g in movable:
        row([(index[(g, n)], 1.0) for n in nodes if (g, n) in index], 1.0, 1.0)
    movable_set = set(movable)
    for n in nodes:
        node = state.loads[n]
        base = node.load - sum(load[g] for g in movable if state.where[g] == n)
        mem_base = node.mem_used - sum(mem[g] for g in movable if state.where[g] == n)
        pct = [(index[(g, n)], 100.0 * load[g] / node.capacity) for g in movable if (g, n) in index]
        base_pct = 100.0 * base / node.capacity
        row([*pct, (hi, -1.0)], -np.inf, -base_pct)  # usage <= hi
        row([*pct, (lo, -1.0)], -base_pct, np.inf)  # usage >= lo
        row([(index[(g, n)], mem[g]) for g in movable if (g, n) in index], -np.inf, node.mem_limit - mem_base)
    row([(hi, 1.0), (lo, -1.0)], -np.inf, policy.balanciness)
    for group in c.apart:
        for n in nodes:
            fixed_here = sum(1 for v in group.vmids if v not in movable_set and state.where[v] == n)
            entries = [(index[(g, n)], 1.0) for g in group.vmids if (g, n) in index]
            if entries:
                row(entries, -np.inf, max(1.0 - fixed_here, 0.0))
    for group in c.together:
        members = sorted(group.vmids)
        for a, b in pairwise(members):
            for n in nodes:
                ea, eb = index.get((a, n)), index.get((b, n))
                if ea is None and eb is None:
                    continue
                entries = ([(ea, 1.0)] if ea is not None else []) + ([(eb, -1.0)] if eb is not None else [])
                row(entries, 0.0, 0.0)

    cost = np.zeros(nvar)
    for (g, n), col in index.items():
        if state.where[g] != n:
            cost[col] = 1.0 + 1e-4 * (mem[g] + state.guests[g].local_disk) / 2**40
    integrality = np.ones(nvar)
    integrality[hi] = integrality[lo] = 0
    bounds = Bounds(np.r_[np.zeros(nvar - 2), -1e3, -1e3], np.r_[np.ones(nvar - 2), 1e3, 1e3])
    matrix = coo_matrix((vals, (rows, cols)), shape=(len(lb), nvar)).tocsr()
    res = milp(cost, constraints=LinearConstraint(matrix, lb, ub), integrality=integrality, bounds=bounds,
               options={"time_limit": time_limit, "disp": False})
    seconds = time.monotonic() - started
    dual = getattr(res, "mip_dual_bound", None)
    # the objective is migrations plus a tie-breaker below 1 in total; take it off before rounding up
    tie_breaks = sum(cost[col] - 1.0 for col in range(nvar) if cost[col] > 0)
    bound = int(np.ceil(dual - tie_breaks - 1e-6)) if dual is not None and np.isfinite(dual) else None
    if res.x is None:
        return ExactResult("infeasible" if res.status == 2 else str(res.message), None, bound, {}, seconds)
    placement = {g: n for (g, n), col in index.items() if res.x[col] > 0.5}
    moved = sum(1 for g, n in placement.items() if state.where[g] != n)
    proven = res.status == 0 or (bound is not None and bound >= moved)
    return ExactResult("optimal" if proven else "time limit", moved, bound, placement, seconds)


def _reason(state: PlanState, c: Constraints, vmid: int) -> tuple[MigrationReason, str]:
    """Why the exact plan moves this guest, judged on the placement before any move."""
    node = state.where[vmid]
    if node in state.draining:
        return MigrationReason.MAINTENANCE, f"leaves {node} (maintenance)"
    if not c.may_be_on(vmid, node):
        allowed = ",".join(sorted(c.allowed[vmid]))
        return c.allowed_reason[vmid], f"{c.allowed_rule[vmid]}: may run only on {allowed}"
    for group in c.apart_of.get(vmid, ()):
        if any(state.where[m] == node for m in group.vmids if m != vmid):
            return group.reason, f"{group.name}: must not share {node}"
    for group in c.together:
        if vmid in group.vmids and len({state.where[m] for m in group.vmids}) > 1:
            return group.reason, f"{group.name}: joins its group"
    return MigrationReason.BALANCE, ""


def order_placement(snapshot: ClusterSnapshot, policy: Policy, c: Constraints,
                    placement: dict[int, str]) -> PlanState | None:
    """A safe order for reaching a placement: each move taken only when its target has room and the
    rules hold at that step, largest first; None when the moves are stuck in a cycle."""
    state = PlanState(snapshot, policy, c)
    reasons = {v: _reason(state, c, v) for v, n in placement.items() if state.where[v] != n}
    pending = {v: n for v, n in placement.items() if state.where[v] != n}
    group_of = {v: g for g in c.together for v in g.vmids}
    while pending:
        for vmid in sorted(pending, key=lambda v: (-state.guests[v].mem, v)):
            target = pending[vmid]
            group = group_of.get(vmid)
            unit = frozenset(v for v in group.vmids if pending.get(v) == target) if group else frozenset({vmid})
            if state.allows(unit, target) and state.fits(unit, target):
                before = state.spread()
                reason, detail = reasons[vmid]
                count = state.move(unit, target, reason, detail)
                for move in state.moves[len(state.moves) - count:]:
                    move.detail = move.detail or f"spread {before:.1f} -> {state.spread():.1f} pp"
                for v in unit:
                    del pending[v]
                break
        else:
            return None
    return state
