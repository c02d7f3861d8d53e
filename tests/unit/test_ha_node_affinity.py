"""PVE 9.2 HA node-affinity rules as PVE applies them: negative rules (strict: never; non-strict:
only when no other node is usable), priorities (a moved guest lands in its rule's top group of
usable nodes) and failback (a guest outside that group goes back to it; no move outside it).

Every plan is judged by tests/oracle_ha.py, which reads the rules from the raw API answers."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pvebalance.engine import Policy, plan_balance
from pvebalance.engine.rules import build_constraints
from pvebalance.engine.rules.ha_nodes import compile_rules, dropped_rules
from pvebalance.engine.state import PlanState
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.models import HaRule, Plan
from tests import oracle_ha
from tests.helpers import REPO


def ha_rules_api() -> dict[str, Any]:
    return copy.deepcopy(load_dump(REPO / "pvebalance" / "scenarios" / "ha-rules.json")["api"])


def node(api: dict[str, Any], name: str, **fields: Any) -> dict[str, Any]:
    entry = next(e for e in api["/cluster/resources"] if e.get("type") == "node" and e["node"] == name)
    entry.update(fields)
    return api


def steps(plan: Plan) -> list[tuple[int, str, str]]:
    return [(m.vmid, m.source, m.target) for m in plan.migrations]


def plan_of(api: dict[str, Any], policy: Policy | None = None) -> Plan:
    plan = plan_balance(snapshot_from_api(api), policy or Policy())
    assert oracle_ha.step_breaches(api, steps(plan)) == []
    unmet = {v for u in plan.unmet for v in u.vmids}
    assert set(oracle_ha.end_breaches(api, steps(plan))) <= unmet
    return plan


def test_a_strict_negative_rule_keeps_its_guests_off_its_nodes_and_the_plan_still_balances() -> None:
    """The held-out cluster's case: app1-3 on the full pve1, kept off the empty pve3 and pve4."""
    plan = plan_of(ha_rules_api())
    moved = {m.vmid: m.target for m in plan.migrations}
    assert {moved[v] for v in (201, 202, 203) if v in moved} <= {"pve1", "pve2", "pve5"}
    assert not [m for m in plan.migrations if m.vmid in (201, 202, 203) and m.target in ("pve3", "pve4")]
    assert plan.after.spread_pp <= 5.0 and plan.unmet == [] and plan.violations == []


def test_a_non_strict_negative_rule_is_never_a_balance_target_while_other_nodes_are_usable() -> None:
    plan = plan_of(ha_rules_api())
    assert [m.target for m in plan.migrations if m.vmid in (204, 205)] != []
    assert all(m.target != "pve5" for m in plan.migrations if m.vmid in (204, 205))


def test_a_non_strict_negative_rule_lets_its_guest_onto_the_node_when_no_other_is_usable() -> None:
    """pve1 drained, pve2-pve4 offline: pve5 is the only node left, "should not" gives way."""
    api = node(ha_rules_api(), "pve1", hastate="maintenance")
    for name in ("pve2", "pve3", "pve4"):
        node(api, name, status="offline")
    plan = plan_of(api)
    assert {(m.vmid, m.target) for m in plan.migrations if m.vmid in (204, 205)} == {(204, "pve5"), (205, "pve5")}


def test_a_guest_outside_its_top_priority_group_goes_back_with_failback_reason_ha_rule() -> None:
    plan = plan_of(ha_rules_api())
    (back,) = [m for m in plan.migrations if m.vmid == 207]
    assert (back.source, back.target, back.reason.value) == ("pve2", "pve1", "ha-rule")
    assert back.detail == "HA rule db-prefers-1-2: back to its highest-priority nodes pve1 (failback)"


def test_a_moved_guest_lands_only_in_the_top_group_of_usable_nodes() -> None:
    """pve1 (priority 2) in maintenance: db1 must leave it, and only pve2 (priority 1) may take it."""
    plan = plan_of(node(ha_rules_api(), "pve1", hastate="maintenance"))
    assert [(m.source, m.target) for m in plan.migrations if m.vmid == 206] == [("pve1", "pve2")]
    assert all(m.vmid != 207 for m in plan.migrations), "db2 is in its top group now (pve2)"


def test_failback_off_leaves_a_guest_on_a_lower_priority_node_but_moves_it_only_to_the_top() -> None:
    plan = plan_of(ha_rules_api())
    assert all(m.vmid != 208 for m in plan.migrations), "web1 (failback 0) stays on pve3"
    drained = plan_of(node(ha_rules_api(), "pve3", hastate="maintenance"))
    assert [m.target for m in drained.migrations if m.vmid == 208] == ["pve2"]


def test_failback_on_is_no_destination_below_pves_top_group() -> None:
    """pve1 ignored by the balancer: PVE still moves db2 back to pve1 itself, so a move of db2 to
    pve2's group would be undone. The plan makes none, and says why."""
    plan = plan_of(ha_rules_api(), Policy(ignore_nodes=frozenset({"pve1"})))
    assert all(m.vmid not in (206, 207) for m in plan.migrations)
    (unmet,) = [u for u in plan.unmet if 207 in u.vmids]
    assert unmet.rule == "HA rule db-prefers-1-2"
    assert unmet.reason == "PVE moves it to pve1 itself (failback): the balancer may not use that node"


@pytest.mark.parametrize(("target", "reason"), [
    ("pve3", "guest 201 must not run on pve3 (HA rule keep-off-3-4, strict)"),
    ("pve5", None),
])
def test_a_strict_negative_rule_refuses_its_nodes_in_words(target: str, reason: str | None) -> None:
    snap = snapshot_from_api(ha_rules_api())
    state = PlanState(snap, Policy(), build_constraints(snap, Policy()))
    assert state.refusal(frozenset({201}), target) == reason


def test_each_node_affinity_refusal_is_said_exactly() -> None:
    snap = snapshot_from_api(ha_rules_api())
    state = PlanState(snap, Policy(), build_constraints(snap, Policy()))
    assert state.refusal(frozenset({204}), "pve5") == (
        "guest 204 should not run on pve5 (HA rule avoid-5): pve1,pve2,pve3,pve4 may take it")
    assert state.refusal(frozenset({206}), "pve2") == (
        "guest 206 may run only on pve1 (HA rule db-prefers-1-2: pve2 has a lower priority; PVE would move it back)")
    assert state.refusal(frozenset({206}), "pve4") == "guest 206 may run only on pve1 (HA rule db-prefers-1-2)"
    assert state.refusal(frozenset({208}), "pve5") == "guest 208 may run only on pve2,pve3 (HA rule web-on-2-3)"
    assert state.refusal(frozenset({208}), "pve3") is None, "where it runs stays allowed (failback off)"


def rule(name: str, resources: list[str], nodes: dict[str, int], **fields: Any) -> HaRule:
    return HaRule(rule=name, type="node-affinity", resources=resources, nodes=nodes, **fields)


def test_rules_pve_rejects_are_dropped_as_pve_drops_them() -> None:
    cluster = ["pve1", "pve2", "pve3"]
    rules = [rule("a", ["vm:1", "vm:2"], {"pve1": 0}), rule("b", ["vm:2"], {"pve2": 0}),
             rule("all", ["vm:3"], {"pve1": 0, "pve2": 0, "pve3": 0}, affinity="negative"),
             rule("prio", ["vm:4"], {"pve1": 1}, affinity="negative"),
             rule("off", ["vm:5"], {"pve1": 0}, disabled=True),
             rule("ok", ["vm:6"], {"pve3": 0}, affinity="negative", strict=True)]
    assert dropped_rules(rules, cluster) == {
        "a": "resource 'vm:2' is already used in another node affinity rule",
        "b": "resource 'vm:2' is already used in another node affinity rule",
        "all": "negative node affinity rule must not specify all cluster nodes",
        "prio": "negative node affinity rule must not specify node priorities"}
    compiled = compile_rules(rules, cluster)
    assert set(compiled) == {"vm:6"}
    assert dict(compiled["vm:6"].priority) == {"pve1": 0, "pve2": 0}


def test_a_non_strict_rule_adds_the_other_nodes_below_every_named_one() -> None:
    compiled = compile_rules([rule("p", ["ct:7"], {"pve1": 2, "pve2": 1})], ["pve1", "pve2", "pve3"])
    assert dict(compiled["ct:7"].priority) == {"pve1": 2, "pve2": 1, "pve3": -1}
    negative = compile_rules([rule("n", ["vm:8"], {"pve3": 0}, affinity="negative")], ["pve1", "pve2", "pve3"])
    assert dict(negative["vm:8"].priority) == {"pve1": 0, "pve2": 0, "pve3": -1}


def test_an_ignored_resource_is_no_rules() -> None:
    api = ha_rules_api()
    for e in api["/cluster/ha/resources"]:
        if e["sid"] == "vm:207":
            e["state"] = "ignored"
    next(e for e in api["/cluster/resources"] if e.get("vmid") == 207)["hastate"] = "ignored"
    plan = plan_of(api)
    assert all(m.reason.value != "ha-rule" for m in plan.migrations if m.vmid == 207)
