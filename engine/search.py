"""The balance phase: moves that bring node usage together, fewest and smallest first.

Each step takes the move (of a guest, or of a whole affinity group) that lowers the variance of
node usage the most, among moves every rule allows and whose target has room at that step. Ties go
to fewer migrations, then less data copied. Only the most and least loaded nodes are tried first;
when none of their moves helps, every pair of nodes is tried before giving up.
"""

from __future__ import annotations

from collections import defaultdict

from pvebalance.shared.models import MigrationReason

from .state import PlanState

_SOURCES_TRIED = 3
_TARGETS_TRIED = 4


def balance_moves(state: PlanState, units: list[frozenset[int]], notes: list[str]) -> None:
    by_node: dict[str, list[frozenset[int]]] = defaultdict(list)
    for unit in units:
        by_node[state.where[next(iter(unit))]].append(unit)
    policy = state.policy
    while state.spread() > policy.balanciness:
        best = _best_move(state, by_node, narrow=True) or _best_move(state, by_node, narrow=False)
        if best is None:
            notes.append(
                f"spread {state.spread():.1f} pp stays above balanciness {policy.balanciness}: no move that the "
                "rules allow lowers it safely"
                + (f" by at least min_gain {policy.min_gain}" if policy.min_gain else "")
            )
            return
        unit, source, target = best
        if not state.budget_left(len(unit)):
            return
        before = state.spread()
        by_node[source].remove(unit)
        count = state.move(unit, target, MigrationReason.BALANCE, "")
        together = f" (with its affinity group of {len(unit)})" if len(unit) > 1 else ""
        for move in state.moves[len(state.moves) - count:]:
            move.detail = f"spread {before:.1f} -> {state.spread():.1f} pp{together}"


def _best_move(
    state: PlanState, by_node: dict[str, list[frozenset[int]]], narrow: bool
) -> tuple[frozenset[int], str, str] | None:
    loads, targets = state.loads, state.targets
    ranked = sorted(targets, key=lambda n: loads[n].percent)
    sources = ranked[::-1][:_SOURCES_TRIED] if narrow else ranked[::-1]
    receivers = ranked[:_TARGETS_TRIED] if narrow else ranked
    count = len(targets)
    total = sum(loads[n].percent for n in targets)
    total_sq = sum(loads[n].percent ** 2 for n in targets)
    variance = total_sq / count - (total / count) ** 2
    best: tuple[float, int, int] | None = None
    choice: tuple[frozenset[int], str, str] | None = None
    for s in sources:
        p_s = loads[s].percent
        for unit in by_node.get(s, ()):
            load = state.load_of(unit)
            if load <= 0:
                continue
            new_s = p_s - 100.0 * load / loads[s].capacity
            for t in receivers:
                p_t = loads[t].percent
                if t == s or p_t >= p_s:
                    continue
                new_t = p_t + 100.0 * load / loads[t].capacity
                new_total = total - p_s - p_t + new_s + new_t
                new_sq = total_sq - p_s**2 - p_t**2 + new_s**2 + new_t**2
                delta = new_sq / count - (new_total / count) ** 2 - variance
                if delta > -max(state.policy.min_gain, 1e-9):
                    continue
                key = (delta, len(unit), sum(state.guests[v].mem + state.guests[v].local_disk for v in unit))
                if best is not None and key >= best:
                    continue
                if state.allows(unit, t) and state.fits(unit, t):
                    best, choice = key, (unit, s, t)
    return choice
