"""The objects alive before a plan are left out of the collector's full passes while it is made
(engine/heap.py), and handed back however it ends."""

from __future__ import annotations

import gc

import pytest

from pvebalance.engine import Policy, plan_balance
from pvebalance.engine.heap import alive_before_frozen
from pvebalance.shared.config import BalancingSettings
from pvebalance.shared.scenario import load_scenario


def test_a_plan_is_made_with_what_was_alive_frozen_and_thaws_it_after() -> None:
    seen: list[int] = []

    @alive_before_frozen
    def plan(alive: list[object]) -> str:
        seen.append(gc.get_freeze_count())
        return "made"

    assert gc.get_freeze_count() == 0
    assert plan([object() for _ in range(100)]) == "made"
    assert seen[0] > 100  # the list and its objects, beside everything else alive
    assert gc.get_freeze_count() == 0


def test_a_plan_that_fails_thaws_what_it_froze() -> None:
    @alive_before_frozen
    def plan() -> None:
        raise ValueError("a malformed snapshot")

    with pytest.raises(ValueError, match="malformed"):
        plan()
    assert gc.get_freeze_count() == 0


def test_plan_balance_thaws_and_plans_as_it_would_unfrozen() -> None:
    snapshot = load_scenario("homelab").snapshot
    policy = Policy.from_settings(BalancingSettings(method=["memory", "cpu"], balanciness=5.0))
    frozen = plan_balance(snapshot, policy)
    assert gc.get_freeze_count() == 0
    unfrozen = plan_balance.__wrapped__(snapshot, policy)  # type: ignore[attr-defined]
    assert [(m.vmid, m.target) for m in frozen.migrations] == [(m.vmid, m.target) for m in unfrozen.migrations]
    assert frozen.migrations
