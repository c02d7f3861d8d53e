"""Which dimensions a plan balances besides those asked for: a dimension no node offers anything in
is left out (`offered`), and memory is balanced too where a node full of it holds another
dimension apart (`making_room`). balance.plan_balance asks both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

from pvebalance.shared.models import ClusterSnapshot, Plan

from .load import DIMENSIONS
from .policy import Policy
from .rules import build_constraints
from .state import PlanState, band_width


class Planned(NamedTuple):
    """What balance._plan_balance hands back."""

    plan: Plan
    room_held: str | None  # the dimension that stays above its band because its emptiest node is full of memory
    cut_short: bool  # so held, handed back before the plans that let a dimension go or its greedy's end (room_first)


Planner = Callable[[ClusterSnapshot, Policy, bool], Planned]  # balance._plan_balance(snapshot, policy, room_first)


def offered(state: PlanState, notes: list[str]) -> tuple[Policy, bool]:
    """The state's policy without the balanced dimensions no node offers anything in (local disk
    where every guest disk is on shared storage), and whether none was left. Such a dimension has no
    percentages to balance, and a node offering nothing in a dimension is no target: kept, it would
    leave the plan no target at all, not even for a pin. The notes say which. With none left,
    nothing is balanced and the rules' moves are judged by memory, the default."""
    policy = state.policy
    staying = [n for n in state.online if n not in state.draining]
    present = [d for i, d in enumerate(state.dims) if any(state.loads[n].capacity[i] > 0 for n in staying)]
    if not staying or len(present) == len(state.dims):
        return policy, False
    for dim in state.dims:
        if dim not in present:
            notes.append(f"{dim} not balanced: {DIMENSIONS[dim].offered}")
    if policy.method == "weighted" and present:  # the blend without them, each weight as it was
        return replace(policy, weights={d: w if d in present else 0.0 for d, w in policy.weights.items()}), False
    return replace(policy, method=",".join(present or ["memory"])), not present


# Memory's band when it is balanced only to make room (making_room): the spread it began with, then
# half of it, then its own band, until the dimensions asked for are within theirs. The first keeps
# memory no wider than it was with the fewest moves; it was enough for mid-300 with disk and xl-10k
# with cpu,disk, half of it for large-5k and xl-10k with disk.
ROOM_BANDS = (1.0, 0.5)


def making_room(snapshot: ClusterSnapshot, policy: Policy, first: Planned, planned: Planner) -> Plan:
    """A plan that leaves a dimension above its band because its emptiest node is full of memory
    (explain.room_held: it takes nothing until memory leaves it) made again with memory balanced too,
    held to ROOM_BANDS of its spread and then its own band; the closest to the bands asked for wins
    (the plan as it was, where none is closer), with a note that says so. `first` was made with
    room_first, as is each attempt but the last: the one kept is made in full if it was cut short,
    and where none is within, `first` is judged as made in full."""
    plan, cut_short = first.plan, first.cut_short
    memory = replace(policy, method="memory")
    began = PlanState(snapshot, memory, build_constraints(snapshot, memory)).spread()
    own = policy.band("memory")
    bands = sorted({max(began * f, own) for f in ROOM_BANDS} | {own}, reverse=True)
    tried = [(first, policy)]
    for k, band in enumerate(bands):
        last = k == len(bands) - 1
        roomier = replace(policy, method=f"{policy.method},memory", bands={**policy.bands, "memory": band})
        tried.append((planned(snapshot, roomier, not last), roomier))
        best = _closest([p.plan for p, _ in tried], plan.bands)
        if not _above(tried[best][0].plan, plan.bands) or tried[-1][0].room_held is None:
            break
    if cut_short and _above(tried[best][0].plan, plan.bands):
        # none within: the plan without memory, cut short, is judged as made in full
        tried[0] = (planned(snapshot, policy, False), policy)
        best = _closest([p.plan for p, _ in tried], plan.bands)
    (kept, _, kept_cut_short), kept_policy = tried[best]
    if kept_cut_short:
        kept = planned(snapshot, kept_policy, False).plan
    if best:
        kept.notes.append(f"memory held to {kept_policy.band('memory'):.1f} pp as well, to make room: "
                          f"{first.room_held} stayed above its band without it, its emptiest node full of memory")
    return kept


def _above(plan: Plan, bands: dict[str, float]) -> list[str]:
    """The dimensions of `bands` the plan leaves above their band (as shown: to 0.1 pp)."""
    return [d for d, b in bands.items() if round(plan.after.dimensions[d].spread_pp, 1) > b
            and not any(n.startswith(f"no node above the {d} threshold") for n in plan.notes)]


def _closest(plans: list[Plan], bands: dict[str, float]) -> int:
    """Which of the plans is closest to `bands` (`_closer` than each before it; the first on ties)."""
    best = 0
    for k in range(1, len(plans)):
        if _closer(plans[k], plans[best], bands):
            best = k
    return best


def _closer(plan: Plan, than: Plan, bands: dict[str, float]) -> bool:
    """Fewer of `bands`' dimensions above their band, or as many and less excess (the sum of squares,
    in bands), and no rule unmet that `than` meets."""
    def excess(p: Plan) -> tuple[int, float]:
        over = [max(round(p.after.dimensions[d].spread_pp, 1) - b, 0.0) / band_width(b) for d, b in bands.items()]
        return len(_above(p, bands)), round(sum(x * x for x in over), 6)

    met = {(u.rule, tuple(u.vmids)) for u in than.unmet}
    broken = [u for u in plan.unmet if not u.rule.startswith("balance ") and (u.rule, tuple(u.vmids)) not in met]
    return not broken and excess(plan) < excess(than)
