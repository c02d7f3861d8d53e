"""The fewest migrations that reach the balance target, as a MILP solved by HiGHS (highs.py).

Placement only, no order: x[g, n] = 1 when guest g ends on node n. Every node's usage must lie in
a band no wider than `balanciness`, in each balanced dimension (one band per dimension, each of its
own width: `Policy.band`), no node may pass its memory limit, fixed guests stay, and each
registered rule family adds its own constraints (`Family.exact`). The objective counts the guests
that leave their node, with the data copied as a tie-breaker. `order_placement` then finds a safe
order for the moves, or says there is none.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pvebalance.shared.models import ClusterSnapshot, MigrationReason

from .exact_phase import EXACT_NODE_LIMIT
from .exact_ties import lighter
from .fit import memory_limit, storage_limit
from .highs import Solved, solve
from .policy import Policy
from .rules import Constraints, build_constraints
from .state import PlanState

# The search of a plan (`count_only`, exact_phase.py). With the data copied as a tie-break the
# objective is not integral, so HiGHS cannot round its bound up and closes the gap only by branching:
# on held-out clusters (tests/heldout.py, memory and CPU) 100 nodes left seed 6 at 26 migrations
# where 18 is the minimum, proven at about 3,000. Counting migrations alone, with a gap below one
# migration (mip_abs_gap) and RINS/RENS on to find placements early, the same seed is proven at 18
# within 83 nodes, seed 12 at 12 within 250 (1,000 before: 15, unproven). With one dimension the
# tie-break cost the root node most of its time for the same count (groups cpu 0.64 s against 0.07 s,
# groups memory 0.45 s, unproven at 100 nodes, against 0.05 s, proven): the ties are broken after the
# solve instead (exact_ties.py).
COUNT_ONLY: dict[str, float | bool] = {"mip_abs_gap": 0.999, "mip_heuristic_run_rins": True,
                                       "mip_heuristic_run_rens": True}


@dataclass
class ExactResult:
    status: str  # "optimal", "node limit", "time limit", "infeasible", ...
    migrations: int | None
    bound: int | None  # fewest migrations any plan could have, as far as the solver proved
    placement: dict[int, str]
    seconds: float
    stopped_by: str | None = None  # "node limit" or "time limit" when the search was cut short


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


def whole_units(state: PlanState, vmids: set[int], movable: set[int]) -> set[int]:
    """The guests with their whole together-groups (the model ties a group to one node); a group
    with a guest outside `movable` is left out whole."""
    out: set[int] = set()
    for v in sorted(vmids):
        unit = state.c.unit(v)
        if unit <= movable:
            out |= unit
    return out


class PlacementModel:
    """The MILP being built: column (g, n) is x[g, n], 1 when guest g ends on node n; then each
    balanced dimension's hi and lo (the band's top and bottom, percent).

    Further columns may be added (`add_columns`) by a model that builds on this one (exact_ordered.py
    adds the steps before the end): this model's rows then hold for its own block of columns."""

    def __init__(self, state: PlanState, candidates: list[int], home: Mapping[int, str] | None = None, *,
                 count_trades: bool = False) -> None:
        self.state = state
        self.nodes = state.targets
        self.candidates = frozenset(candidates)
        # where each guest begins the plan: a migration is a guest away from it (default: where the
        # state has it; a model built on a plan's end counts from where the guests started: node_subsets.py)
        self.home: Mapping[int, str] = state.where if home is None else home
        self.count_trades = count_trades  # trade_parks adds its column and row (else it only notes the pair)
        self.trades: list[tuple[int | None, int, int]] = []  # (column, first, second): trade_parks'
        self.index = {pair: col for col, pair in enumerate((g, n) for g in candidates for n in self.nodes)}
        self.col_low: list[float] = [0.0] * len(self.index)
        self.col_high: list[float] = [1.0] * len(self.index)
        self.integer: list[bool] = [True] * len(self.index)
        self.hi = [self.add_columns(1, -1e3, 1e3, integer=False) for _ in state.dims]
        self.lo = [self.add_columns(1, -1e3, 1e3, integer=False) for _ in state.dims]
        self.forbidden: set[int] = set()
        self.band_rows: list[int] = []  # each dimension's hi - lo <= band row (balance_rows)
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.vals: list[float] = []
        self.lb: list[float] = []
        self.ub: list[float] = []

    @property
    def width(self) -> int:
        """The number of columns."""
        return len(self.col_low)

    def add_columns(self, count: int, low: float, high: float, *, integer: bool) -> int:
        """`count` new columns, each within [low, high]; the first one's index."""
        first = self.width
        self.col_low += [low] * count
        self.col_high += [high] * count
        self.integer += [integer] * count
        return first

    def var(self, vmid: int, node: str) -> int | None:
        col = self.index.get((vmid, node))
        return None if col is None or col in self.forbidden else col

    def forbid(self, vmid: int, node: str) -> None:
        col = self.index.get((vmid, node))
        if col is not None:
            self.forbidden.add(col)

    def row(self, entries: list[tuple[int, float]], low: float, high: float) -> None:
        r = len(self.lb)
        for col, val in entries:
            self.rows.append(r)
            self.cols.append(col)
            self.vals.append(val)
        self.lb.append(low)
        self.ub.append(high)

    def stays_on(self, vmid: int) -> str | None:
        return None if vmid in self.candidates else self.state.where[vmid]

    def trade_parks(self, first: int, second: int) -> None:
        """One more migration where two guests kept apart end each where the other began: whichever
        moves first would join the other, so one of them waits on a third node (order_placement
        parks it). With `count_trades`, a column p with x[first, home of second] + x[second, home of
        first] - p <= 1, costing a migration (a guest the model does not move counts as its x, 1 or
        0); without, the pair is only noted, for `traded`."""
        a, b = self.home[first], self.home[second]
        if a == b:
            return  # together from the start: no trade (the rule's own rows part them)
        ends = [self._ends_on(first, b), self._ends_on(second, a)]
        cols = [e for e in ends if not isinstance(e, bool)]
        if any(e is False for e in ends) or not cols:
            return  # it cannot trade, or the model cannot change that it does
        parked = None
        if self.count_trades:
            parked = self.add_columns(1, 0.0, 1.0, integer=False)
            self.row([*((col, 1.0) for col in cols), (parked, -1.0)], -np.inf, len(cols) - 1.0)
        self.trades.append((parked, first, second))

    def _ends_on(self, vmid: int, node: str) -> int | bool:
        """x[vmid, node]'s column, or whether a guest the model does not move (or may not send there) is there."""
        if vmid not in self.candidates:
            return self.state.where[vmid] == node
        col = self.var(vmid, node)
        return False if col is None else col

    def traded(self, placement: Mapping[int, str]) -> int:
        """The pairs of `trade_parks` that trade nodes in a placement (of the candidates; the others stay)."""
        def end(v: int) -> str:
            return placement.get(v, self.state.where[v])
        return sum(1 for _, first, second in self.trades
                   if end(first) == self.home[second] and end(second) == self.home[first])

    def balance_rows(self, policy: Policy) -> None:
        """Each guest on one node; each node's usage within [lo, hi] in every balanced dimension and
        its memory under its limit; each dimension's hi - lo within its band."""
        state = self.state
        mem = {g: float(state.guests[g].mem if state.guests[g].running else 0) for g in self.candidates}
        ordered = sorted(self.candidates)
        for g in ordered:
            self.row([(self.index[(g, n)], 1.0) for n in self.nodes], 1.0, 1.0)
        for n in self.nodes:
            node = state.loads[n]
            here = [g for g in ordered if state.where[g] == n]
            for i, (hi, lo) in enumerate(zip(self.hi, self.lo, strict=True)):
                cap = node.capacity[i]
                base_pct = 100.0 * (node.load[i] - sum(state.guest_load(g)[i] for g in here)) / cap
                pct = [(self.index[(g, n)], 100.0 * state.guest_load(g)[i] / cap) for g in ordered]
                self.row([*pct, (hi, -1.0)], -np.inf, -base_pct)  # usage <= hi
                self.row([*pct, (lo, -1.0)], -base_pct, np.inf)  # usage >= lo
            # in GiB: rows in bytes (up to 1e11) beside percentages (1e-2) leave HiGHS badly scaled
            mem_base = node.figures.used_mem - sum(mem[g] for g in here)
            self.row([(self.index[(g, n)], mem[g] / 2**30) for g in ordered], -np.inf,
                     (memory_limit(node.figures, policy) - mem_base) / 2**30)
            self.storage_rows(n, ordered, policy)
        self.band_rows = list(range(len(self.lb), len(self.lb) + len(state.bands)))
        for hi, lo, band in zip(self.hi, self.lo, state.bands, strict=True):
            self.row([(hi, 1.0), (lo, -1.0)], -np.inf, band)

    def storage_rows(self, n: str, ordered: list[int], policy: Policy) -> None:
        """The local disks copied onto each of the node's storages stay under its limit; a guest whose
        disks need a storage the node lacks cannot go there (fit.storage_refusal, as rows)."""
        storages = self.state.loads[n].figures.storages
        if storages is None:
            return
        arriving: dict[str, list[tuple[int, float]]] = {}
        for g in ordered:
            if self.state.where[g] == n:
                continue
            for storage, size in self.state.guests[g].local_storage_bytes().items():
                if storage not in storages:
                    self.forbid(g, n)
                else:
                    arriving.setdefault(storage, []).append((self.index[(g, n)], size / 2**30))
        for storage, entries in sorted(arriving.items()):
            figures = storages[storage]
            self.row(entries, -np.inf, (storage_limit(figures, n, policy) - figures.used) / 2**30)

    def costs(self) -> np.ndarray:
        """Each migration costs 1, plus its share of all the data that could move: the shares of any
        plan add up to less than 1/2, so they only break ties between plans with as many migrations,
        and they are large enough for HiGHS's gap tolerance (1e-4 of the objective) to tell apart.
        A migration is a guest away from `home`, or a parking move (trade_parks: 1, no share)."""
        guests, where = self.state.guests, self.home
        data = {g: (guests[g].mem if guests[g].running else 0) + guests[g].local_disk for g in self.candidates}
        weight = 0.5 / (sum(data.values()) + 1.0)
        cost = np.zeros(self.width)
        for (g, n), col in self.index.items():
            if where[g] != n:
                cost[col] = 1.0 + weight * data[g]
        for parked, _, _ in self.trades:
            if parked is not None:
                cost[parked] = 1.0
        return cost

    def solve(self, cost: np.ndarray, *, node_limit: int | None, time_limit: float | None,
              options: dict[str, float | bool] | None = None) -> tuple[Solved, dict[int, int]]:
        """Solve without the forbidden columns (as if they had never been made); also the map from
        the model's columns to the solver's."""
        kept = [col for col in range(self.width) if col not in self.forbidden]
        new = {col: i for i, col in enumerate(kept)}
        entries = [(r, new[c], v) for r, c, v in zip(self.rows, self.cols, self.vals, strict=True) if c in new]
        res = solve(cost[kept], [r for r, _, _ in entries], [c for _, c, _ in entries], [v for _, _, v in entries],
                    self.lb, self.ub, [self.col_low[col] for col in kept], [self.col_high[col] for col in kept],
                    [self.integer[col] for col in kept], node_limit=node_limit, time_limit=time_limit,
                    options=options)
        return res, new


def why_stopped(res: Solved) -> str | None:
    """"node limit" or "time limit" when the search was cut short, else None."""
    return res.stopped_by


def unsolved(res: Solved) -> str:
    """Why the solver gave no solution: "infeasible", or the limit or message that stopped it."""
    return res.status


def lower_bound(res: Solved, tie_breaks: float) -> int | None:
    """The fewest migrations the solver proved any plan needs, from its dual bound on an objective of
    migrations plus tie-breaks adding up to less than `tie_breaks`."""
    return int(np.ceil(res.dual_bound - tie_breaks - 1e-6)) if res.dual_bound is not None else None


def placement_model(snapshot: ClusterSnapshot, policy: Policy, *, count_trades: bool = False) -> PlacementModel:
    """The placement model with every row a finished plan must meet: the balance band, the memory
    limit, fixed guests, and each rule family's constraints (with `count_trades`, a parking move for
    each pair kept apart that trades nodes: PlacementModel.trade_parks)."""
    c = build_constraints(snapshot, policy)
    state = PlanState(snapshot, policy, c)
    model = PlacementModel(state, _candidates(state), count_trades=count_trades)
    model.balance_rows(state.policy)
    for family in c.families:
        family.exact(c, model)
    return model


def minimum_migrations(snapshot: ClusterSnapshot, policy: Policy, *, node_limit: int | None = EXACT_NODE_LIMIT,
                       time_limit: float | None = 60.0, fewer_than: int | None = None,
                       exclude: Sequence[dict[int, str]] = (), count_only: bool = False) -> ExactResult:
    """The placement with the fewest migrations, searched over at most `node_limit` nodes (None: no
    limit). `time_limit` (None: none) is for yardsticks such as the bench: a search it cuts short
    depends on the machine's load, so plans pass None.
    `exclude`: placements not to find again (each: not all of its moves at once).
    With `fewer_than`, only placements with fewer migrations count (infeasible when there is none),
    which lets the solver stop as soon as its bound shows that a plan in hand cannot be beaten.
    `count_only`: the objective counts migrations alone and HiGHS's own heuristics (RINS, RENS) run
    (see COUNT_ONLY); the ties are then broken towards less data copied (exact_ties.py). Without it
    the data copied is the objective's own tie-break (the bench's yardstick).

    Two guests kept apart that trade nodes take a parking move besides their two migrations. The
    model counts those only where its placement has such a trade, searching again with them
    counted (PlacementModel.trade_parks): counted from the start, they slowed every search on a
    cluster with anti-affinity groups (groups balancing CPU: 0.16 -> 0.68 s, the same 26) for
    the few placements that trade (held-out seed 165: 16 migrations and a parking move, where 16
    without a trade balance)."""
    started = time.monotonic()
    model = placement_model(snapshot, policy)
    found = _search(model, node_limit, time_limit, fewer_than, exclude, count_only)
    if found.migrations is not None and model.traded(found.placement):
        model = placement_model(snapshot, policy, count_trades=True)
        found = _search(model, node_limit, time_limit, fewer_than, exclude, count_only)
    found.seconds = time.monotonic() - started
    return found


def _search(model: PlacementModel, node_limit: int | None, time_limit: float | None, fewer_than: int | None,
            exclude: Sequence[dict[int, str]], count_only: bool) -> ExactResult:
    """minimum_migrations' search on one model (`seconds` left for the caller)."""
    state = model.state
    cost = data = model.costs()
    options: dict[str, float | bool] = {}
    if count_only:
        cost = np.where(data > 0, 1.0, 0.0)
        options = COUNT_ONLY
    if fewer_than is not None:
        model.row([(col, 1.0) for col in range(len(cost)) if cost[col] > 0], -np.inf, fewer_than - 1.0)
    for placed in exclude:  # a no-good cut: not all of these moves again (that placement has no safe order)
        cols = [col for g, n in sorted(placed.items()) if state.where[g] != n and (col := model.var(g, n)) is not None]
        if cols:
            model.row([(col, 1.0) for col in cols], -np.inf, len(cols) - 1.0)
    res, column = model.solve(cost, node_limit=node_limit, time_limit=time_limit, options=options)
    stopped_by = why_stopped(res)
    # the objective is migrations plus tie-breaks below 1/2 in total: take those off before rounding up
    bound = lower_bound(res, 0.0 if count_only else 0.5)
    if res.x is None:
        return ExactResult(unsolved(res), None, bound, {}, 0.0, stopped_by)
    x = np.zeros(model.width)
    for col, i in column.items():
        x[col] = res.x[i]
    if count_only:  # the ties the objective no longer breaks: towards less data copied (exact_ties.py)
        x = lighter(model, x, np.where(data > 0, data - 1.0, 0.0))
    placement = {g: n for (g, n), col in model.index.items() if x[col] > 0.5}  # a forbidden column stays 0
    moved = sum(1 for g, n in placement.items() if state.where[g] != n) + model.traded(placement)
    proven = res.status == "optimal" or (bound is not None and bound >= moved)
    return ExactResult("optimal" if proven else stopped_by or "stopped", moved, bound, placement, 0.0, stopped_by)


def _reasons(state: PlanState, c: Constraints) -> dict[int, tuple[MigrationReason, str]]:
    """Why the exact plan moves a guest, judged on the placement before any move: the first rule it
    breaks there (in the registry's order), else balance."""
    reasons: dict[int, tuple[MigrationReason, str]] = {}
    for family in c.families:
        for breach in family.check(c, state.where, state.guests):
            for vmid in breach.vmids:
                reasons.setdefault(vmid, (breach.reason, breach.detail))
    return reasons


def order_placement(snapshot: ClusterSnapshot, policy: Policy, c: Constraints,
                    placement: dict[int, str], *, parkings: int = 0) -> PlanState | None:
    """A safe order for reaching a placement: each move taken only when its target has room and the
    rules hold at that step, largest first; None when the moves are stuck in a cycle.

    With `parkings` > 0, a cycle is broken by parking one of its guests on a third node (one more
    migration, up to `parkings` of them): two guests kept apart that trade nodes can do it no other
    way, nor can two full nodes that trade guests."""
    state = PlanState(snapshot, policy, c)
    breaking = _reasons(state, c)
    pending = {v: n for v, n in placement.items() if state.where[v] != n}
    reasons = {v: breaking.get(v, (MigrationReason.BALANCE, "")) for v in pending}
    parked = 0
    while pending:
        for vmid in sorted(pending, key=lambda v: (-state.guests[v].mem, v)):
            target = pending[vmid]
            unit = frozenset(v for v in c.unit(vmid) if pending.get(v) == target)
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
            if parked == parkings or not _park_one(state, c, pending, reasons):
                return None
            parked += 1
    return state


def _park_one(state: PlanState, c: Constraints, pending: dict[int, str],
              reasons: dict[int, tuple[MigrationReason, str]]) -> bool:
    """Park the smallest stuck guest (its unit) whose node another stuck move waits for, on the
    emptiest third node where the rules allow it and it fits; whether one was parked. It stays
    pending: it goes on to its place when the order comes back to it."""
    waited = set(pending.values())
    for vmid in sorted(pending, key=lambda v: (state.guests[v].mem, v)):
        here, target = state.where[vmid], pending[vmid]
        if here not in waited:
            continue  # its leaving unblocks nothing
        unit = frozenset(v for v in c.unit(vmid) if pending.get(v) == target)
        spots = [n for n in state.targets if n not in (here, target) and state.allows(unit, n) and state.fits(unit, n)]
        if spots:
            spot = min(spots, key=lambda n: (state.loads[n].percent, n))
            waiting = ",".join(str(v) for v, n in sorted(pending.items()) if n == here)
            state.move(unit, spot, reasons[vmid][0], f"parked on {spot} to make room on {here} for {waiting}")
            return True
    return False
