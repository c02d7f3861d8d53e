"""Parking moves: repair a rule whose guests block each other, through a third node with room.

A's guest must go to B (a pin, an HA node rule, a group to join) while B is full of a guest that
must leave B anyway, or that may live elsewhere; no direct move fits. As ProxLB's CP-SAT add-on does,
the guests in the way go to a third node C with room (parking), A's guest takes their place on B, and
a parked guest that no rule lets stay on C moves on to where the rules want it (often A, which A's
guest just left). Each step is checked like every other move (`allows` where the guest ends, `fits`
at that step), so the moves keep every node under its limit in the order they are made; the plan's
batches keep that order (a guest's second move comes after its first).

A guest may park only where it breaks no rule it does not already break where it is: parking never
makes a placement worse, even for the few moments it lasts.
"""

from __future__ import annotations

from .band import clone
from .rules import Fix
from .search import Sizer
from .state import PlanState

_MOST_PARKED = 4  # guests moved out of the way for one repair: more is no longer a swap


def park_and_repair(state: PlanState, fix: Fix) -> str | None:
    """Carry out `fix` by parking the guests in its way; None when done, else why it cannot be."""
    unit = fix.unit
    wanted = fix.nodes if fix.nodes is not None else tuple(state.targets)
    reasons = []
    for node in wanted:
        moving = frozenset(v for v in unit if state.where[v] != node)
        if not moving or not state.movable(moving) or not state.allows(unit, node) \
                or not state.budget_left(len(moving)):
            continue
        steps = _plan_swap(state, fix, moving, node)
        if isinstance(steps, str):
            reasons.append(steps)
            continue
        for vmids, target, detail in steps:  # replayed on the real state, as planned on the copy
            state.move(vmids, target, fix.reason, detail)
        return None
    return reasons[0] if reasons else fix.no_room


def _plan_swap(state: PlanState, fix: Fix, moving: frozenset[int],
               node: str) -> list[tuple[frozenset[int], str, str]] | str:
    """The moves (on a copy of the state) that park guests off `node`, bring `moving` there and
    re-home the parked guests; or why there are none."""
    trial = clone(state)
    steps: list[tuple[frozenset[int], str, str]] = []
    parked: list[tuple[frozenset[int], str]] = []
    names = ",".join(map(str, sorted(moving)))
    for blocker in _blockers(trial, moving, node):
        if trial.fits(moving, node) or len(parked) >= _MOST_PARKED:
            break
        spot = _parking_spot(trial, blocker, node)
        if spot is None:
            continue
        detail = f"{fix.rule}: parked on {spot} to make room on {node} for {names}"
        steps.append((blocker, spot, detail))
        trial.move(blocker, spot, fix.reason, detail)
        parked.append((blocker, spot))
    if not parked or not trial.fits(moving, node):
        return (f"{fix.no_room}; no guest on {node} could be parked on a third node with room "
                f"to make room for {names}")
    steps.append((moving, node, fix.detail(node)))
    trial.move(moving, node, fix.reason, fix.detail(node))
    for blocker, spot in parked:
        if trial.allows(blocker, spot):
            continue  # it may stay where it was parked
        home = _home(trial, blocker, spot)
        if home is None:
            return f"{fix.no_room}; guests parked on {spot} would have nowhere to go after"
        detail = f"leaves parking on {spot} for {home}"
        steps.append((blocker, home, detail))
        trial.move(blocker, home, fix.reason, detail)
    if not trial.budget_left(0):
        return "migration cap reached"
    return steps


def _blockers(state: PlanState, moving: frozenset[int], node: str) -> list[frozenset[int]]:
    """Units on `node` that could leave it for the repair: whole, not fixed, not moved yet, running;
    the ones that must leave anyway first (they break a rule there), then the largest."""
    seen: set[int] = set()
    found = []
    for vmid in sorted(v for v, at in state.where.items() if at == node):
        unit = state.c.unit(vmid)
        if vmid in seen or unit & moving:
            continue
        seen |= unit
        if all(state.where[v] == node and state.guests[v].running for v in unit) and state.movable(unit):
            found.append(unit)
    size = Sizer(state).size
    return sorted(found, key=lambda u: (state.allows(u, node), -size(state.load_of(u)), min(u)))


def _no_worse(state: PlanState, unit: frozenset[int], spot: str) -> bool:
    """The unit on `spot` breaks no rule it does not break where it is now."""
    here = state.where[min(unit)]
    return spot in state.targets and all(
        f.allows(state, unit, spot) or not f.allows(state, unit, here) for f in state.c.families)


def _parking_spot(state: PlanState, unit: frozenset[int], node: str) -> str | None:
    """The node, other than `node`, that takes the unit with room and least load after."""
    load = state.load_of(unit)
    means = state.means()
    best: tuple[float, str] | None = None
    for t in state.targets:
        if t == node or not _no_worse(state, unit, t) or not state.fits(unit, t):
            continue
        key = (state.ending(t, load, means), t)
        if best is None or key < best:
            best = key
    return best[1] if best else None


def _home(state: PlanState, unit: frozenset[int], spot: str) -> str | None:
    return state.best_target(unit, exclude=spot)
