"""The fewest migrations of a plan that can be carried out: the exact minimum with the order in it.

exact.py's model asks for a placement: where each guest ends. A placement can need fewer migrations
than any plan reaching it: two full nodes swapping guests have no safe order, and a real plan needs
a third node and a parking move (two migrations for one guest). This model is time-indexed, so its
minimum is the minimum over plans, not placements:

- steps t = 1..T, one migration per step (sequential is the most permissive order: a plan in
  batches is one of its orders, so this minimum is a lower bound for batched plans too);
- x[g, n, t] = 1 when guest g is on node n after step t; t = 0 is the snapshot; a guest may move
  any number of times (a parking move counts 2);
- during step t the moving guest is counted on both its source and its target, as the engine,
  schedule.py and verify.py count a live migration: a node receiving a guest at step t must hold the
  guests it had after step t - 1 plus the new one within its memory limit (fit.memory_limit, the
  limit of exact.py; a node above its limit in the snapshot receives nothing until it is below);
- only the nodes exact.py may place guests on receive, and a guest leaves a drained node for good;
- after step T every row of exact.py's model holds (its rows are built on the last step's columns:
  band/balanciness, memory limit, fixed guests, each rule family's `exact` rows);
- the steps before the end need only the room rows above, not the rules nor the band: a plan may
  break no rule at any step, so asking less of the steps between keeps the minimum a lower bound
  (it can only be lower than the fewest migrations of a plan the engine could make, never higher).

The objective is the number of migrations. T = the engine's own count is enough: a plan with fewer
moves fits in T steps, the spare steps idle (they are put last, which also removes that symmetry).

It lives in the engine, beside exact.py whose model it extends, and returns the moves in order, so
that a plan could be taken from it; today only the bench uses it, as the reference that compares like
with like when exact.py's placement has no safe order: its size (guests x nodes x T binaries) makes
it a yardstick, not part of planning.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pvebalance.engine.exact import PlacementModel, lower_bound, placement_model, unsolved, why_stopped
from pvebalance.engine.fit import GIB, memory_limit
from pvebalance.engine.policy import Policy
from pvebalance.shared.models import ClusterSnapshot


@dataclass
class OrderedResult:
    status: str  # "optimal", "infeasible" (no plan of at most `steps` migrations), "node limit", ...
    migrations: int | None
    bound: int | None  # fewest migrations any plan of at most `steps` could have, as far as proven
    moves: list[tuple[int, str, str]] = field(default_factory=list)  # (vmid, source, target) in order
    steps: int = 0
    seconds: float = 0.0
    stopped_by: str | None = None


Term = tuple[int | None, float]  # x[g, n, t] as (its column, or None for a constant; the constant)


def ordered_minimum(snapshot: ClusterSnapshot, policy: Policy, steps: int, *, node_limit: int | None = None,
                    time_limit: float | None = 60.0) -> OrderedResult:
    """The plan with the fewest migrations among plans of at most `steps` migrations (see the module)."""
    started = time.monotonic()
    model = placement_model(snapshot, policy)
    state = model.state
    guests = sorted(model.candidates)
    targets = model.nodes
    if steps < 1:
        return OrderedResult("infeasible", None, None, steps=steps, seconds=time.monotonic() - started)
    home = {g: state.where[g] for g in guests}
    spots = {g: targets if home[g] in targets else [*targets, home[g]] for g in guests}
    middle = {(g, n, t): model.add_columns(1, 0.0, 1.0, integer=True)
              for t in range(1, steps) for g in guests for n in spots[g]}

    def at(g: int, n: str, t: int) -> Term:
        if t == 0:
            return None, float(home[g] == n)
        if t == steps:
            return model.var(g, n), 0.0  # None: no column (forbidden by a rule, or not a target)
        return middle[(g, n, t)], 0.0

    # each guest on one node between the steps; on the last, exact.py's own row says so
    for t in range(1, steps):
        for g in guests:
            model.row([(middle[(g, n, t)], 1.0) for n in spots[g]], 1.0, 1.0)
    # a guest never returns to a node that receives nothing (a drained one)
    for t in range(2, steps):
        for g in guests:
            if home[g] not in targets:
                model.row([(middle[(g, home[g], t)], 1.0), (middle[(g, home[g], t - 1)], -1.0)], -np.inf, 0.0)
    # arrivals: a[g, n, t] >= x[g, n, t] - x[g, n, t - 1]; continuous, the objective keeps them exact
    arrive: dict[tuple[int, str, int], int] = {}
    for t in range(1, steps + 1):
        for g in guests:
            for n in targets:
                now, before = at(g, n, t), at(g, n, t - 1)
                if now[0] is None or (before[0] is None and before[1] == 1.0):
                    continue  # it cannot be there after the step, or was there already before it
                a = arrive[(g, n, t)] = model.add_columns(1, 0.0, 1.0, integer=False)
                entries = [(a, 1.0), (now[0], -1.0)] + ([(before[0], 1.0)] if before[0] is not None else [])
                model.row(entries, -before[1], np.inf)
    per_step = {t: [col for (_, _, s), col in arrive.items() if s == t] for t in range(1, steps + 1)}
    for t in range(1, steps + 1):
        model.row([(col, 1.0) for col in per_step[t]], -np.inf, 1.0)  # one migration per step
        if t < steps:  # idle steps last
            model.row([(col, 1.0) for col in per_step[t]] + [(col, -1.0) for col in per_step[t + 1]], 0.0, np.inf)
    _room_rows(model, guests, at, arrive, steps)

    cost = np.zeros(model.width)
    for col in arrive.values():
        cost[col] = 1.0
    res, column = model.solve(cost, node_limit=node_limit, time_limit=time_limit)
    seconds = time.monotonic() - started
    stopped_by = why_stopped(res)
    bound = lower_bound(res, 0.0)
    x = res.x
    if x is None:
        return OrderedResult(unsolved(res), None, bound, [], steps, seconds, stopped_by)

    def value(term: Term) -> float:
        col, constant = term
        return constant if col is None else (float(x[column[col]]) if col in column else 0.0)

    moves: list[tuple[int, str, str]] = []
    where = dict(home)
    for t in range(1, steps + 1):
        for g in guests:
            node = next(n for n in spots[g] if value(at(g, n, t)) > 0.5)
            if node != where[g]:
                moves.append((g, where[g], node))
                where[g] = node
    proven = res.status == "optimal" or (bound is not None and bound >= len(moves))
    return OrderedResult("optimal" if proven else stopped_by or "stopped", len(moves), bound, moves, steps,
                         seconds, stopped_by)


def _room_rows(model: PlacementModel, guests: list[int], at: Callable[[int, str, int], Term],
               arrive: dict[tuple[int, str, int], int], steps: int) -> None:
    """At every step, each node that receives a guest holds what it had plus the guest within its
    memory limit (in GiB, as exact.py). A node above its limit in the snapshot only sheds until it is
    below (it never holds more than then): its row is lifted by that excess when nothing arrives."""
    state = model.state
    mem = {g: (state.guests[g].mem if state.guests[g].running else 0) / GIB for g in guests}
    for n in model.nodes:
        figures = state.loads[n].figures
        limit = memory_limit(figures, state.policy)
        room = (limit - figures.used_mem) / GIB + sum(mem[g] for g in guests if state.where[g] == n)
        over = max(0.0, (figures.used_mem - limit) / GIB)
        for t in range(1, steps + 1):
            entries: list[tuple[int, float]] = []
            held = 0.0
            for g in guests:
                col, constant = at(g, n, t - 1)
                if mem[g] and col is None:
                    held += mem[g] * constant
                elif mem[g] and col is not None:
                    entries.append((col, mem[g]))
                if (g, n, t) in arrive and mem[g] + over > 0:
                    entries.append((arrive[(g, n, t)], mem[g] + over))
            model.row(entries, -np.inf, room + over - held)
