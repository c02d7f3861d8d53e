"""What planned_dimensions.making_room keeps of the plans it asks for, judged with a planner that
hands back plans of given spreads (the engine's own plans are judged in test_dimensions.py): a
first plan cut short (room_first: its greedy stopped where a node full of memory held a dimension
apart) is made in full before it is compared, where no plan with memory brings every dimension
within its band; where one does, it is never made again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pvebalance.engine import Policy
from pvebalance.engine.planned_dimensions import Planned, making_room
from pvebalance.shared.config import BalancingSettings
from pvebalance.shared.models import ClusterSnapshot, DimensionUsage, Plan, UsageSummary
from tests.unit.test_dimensions import scenario


def plan(disk: float, memory: float | None = None) -> Plan:
    """A plan leaving disk (and memory, when balanced) this far apart."""
    spreads = {"disk": disk} | ({} if memory is None else {"memory": memory})
    summary = UsageSummary(spread_pp=disk, nodes={},
                           dimensions={d: DimensionUsage(spread_pp=s, nodes={}) for d, s in spreads.items()})
    bands = {"disk": 5.0} | ({} if memory is None else {"memory": 10.0})
    return Plan(method=",".join(spreads), mode="used", balanciness=5.0, bands=bands, before=summary, after=summary)


@dataclass
class Planner:
    """Hands back, for the plan without memory, `cut` (room_first) or `full`; for memory's bands in
    turn, the plans of `with_memory`; and records what it was asked."""

    cut: Plan
    full: Plan
    with_memory: list[Plan]
    asked: list[tuple[str, bool]] = field(default_factory=list)

    def __call__(self, snapshot: ClusterSnapshot, policy: Policy, room_first: bool) -> Planned:
        self.asked.append((policy.method, room_first))
        if "memory" not in policy.dimensions:
            return Planned(self.cut if room_first else self.full, "disk", room_first)
        made = self.with_memory[min(sum(m != "disk" for m, _ in self.asked) - 1, len(self.with_memory) - 1)]
        return Planned(made, "disk" if made.after.dimensions["disk"].spread_pp > 5 else None, False)


def making(planner: Planner) -> Plan:
    snap, _ = scenario("mid-300")
    policy = Policy.from_settings(BalancingSettings(method=["disk"], balanciness=5))
    return making_room(snap, policy, planner(snap, policy, True), planner)


@pytest.mark.parametrize(("cut", "full", "kept"), [
    (30.0, 8.0, "the first, made in full"),  # in full it is closer than any plan with memory
    (30.0, 25.0, "memory"),  # in full it is still further than the one with memory
])
def test_a_first_plan_cut_short_is_judged_as_made_in_full_where_none_with_memory_is_within(
        cut: float, full: float, kept: str) -> None:
    planner = Planner(plan(cut), plan(full), [plan(12.0, 9.0)])
    chosen = making(planner)
    assert ("disk", False) in planner.asked  # made in full, once it showed that none is within
    if kept == "memory":
        assert chosen.after.dimensions["disk"].spread_pp == 12.0
        assert chosen.notes[-1].startswith("memory held to ")
    else:
        assert chosen.after.dimensions["disk"].spread_pp == full and "memory" not in chosen.after.dimensions


def test_a_first_plan_cut_short_is_not_made_again_where_a_plan_with_memory_is_within() -> None:
    planner = Planner(plan(30.0), plan(8.0), [plan(4.0, 9.0)])
    chosen = making(planner)
    assert ("disk", False) not in planner.asked
    assert chosen.after.dimensions["disk"].spread_pp == 4.0
    assert chosen.notes == [chosen.notes[-1]] and chosen.notes[-1].endswith(
        "to make room: disk stayed above its band without it, its emptiest node full of memory")
