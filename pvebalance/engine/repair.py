"""The one way a broken rule is repaired, whatever its family: the family says what is broken and
where the guests may go (`rules.Fix`), this carries it out on the plan's state or says why not.
When no node has room for a direct move, the guests in the way are parked on a third node
(parking.py) before the rule is given up."""

from __future__ import annotations

from collections.abc import Iterable

from pvebalance.shared.models import Unmet

from .parking import park_and_repair
from .rules import Fix
from .state import PlanState


def repair(state: PlanState, fixes: Iterable[Fix], unmet: list[Unmet]) -> None:
    """Make each fix in turn (a family makes the next one from the state the last one left); a rule
    that cannot be repaired goes to `unmet`, with the reason."""
    for fix in fixes:
        why = fix.stuck if fix.stuck is not None else _carry_out(state, fix)
        if why is not None and why == fix.no_room:  # no direct move has room: through a third node
            why = park_and_repair(state, fix)
        if why is not None and fix.required:
            unmet.append(Unmet(rule=fix.rule, vmids=list(fix.named), reason=why))


def _carry_out(state: PlanState, fix: Fix) -> str | None:
    """Move the fix's unit, or say why it cannot be moved."""
    if fix.nodes is not None:
        for node in fix.nodes:
            moving = frozenset(v for v in fix.unit if state.where[v] != node)
            if state.movable(moving) and state.allows(fix.unit, node) and state.fits(moving, node) \
                    and state.budget_left(len(moving)):
                state.move(moving, node, fix.reason, fix.detail(node))
                return None
        return fix.no_room
    if not state.movable(fix.unit):
        return fix.cannot_move
    if not state.budget_left(len(fix.unit)):
        return "migration cap reached"
    target = state.best_target(fix.unit)
    if target is None:
        return fix.no_room
    state.move(fix.unit, target, fix.reason, fix.detail(target))
    return None
