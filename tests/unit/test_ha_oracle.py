"""Every bundled scenario's plan, judged by the independent HA node-affinity oracle (tests/oracle_ha.py),
and the oracle itself shown to catch each kind of breach."""

from __future__ import annotations

import pytest

from pvebalance.engine import Policy, plan_balance
from pvebalance.shared.apidump import load_dump, operator_pools, snapshot_from_api
from pvebalance.shared.config import BalancingSettings
from tests import oracle_ha
from tests.helpers import REPO, SCENARIOS


@pytest.mark.parametrize("name", SCENARIOS)
def test_no_plan_step_breaks_a_node_affinity_rule(name: str) -> None:
    doc = load_dump(REPO / "pvebalance" / "scenarios" / f"{name}.json")
    policy = Policy.from_settings(BalancingSettings(pools=operator_pools(doc)))
    plan = plan_balance(snapshot_from_api(doc["api"]), policy)
    steps = [(m.vmid, m.source, m.target) for m in plan.migrations]
    assert oracle_ha.step_breaches(doc["api"], steps) == []
    left = oracle_ha.end_breaches(doc["api"], steps)
    unmet = {v for u in plan.unmet for v in u.vmids}
    assert set(left) <= unmet, [left[v] for v in sorted(set(left) - unmet)]


def test_the_bundled_ha_scenario_binds_guests_with_every_kind_of_rule() -> None:
    bound = oracle_ha.bound_guests(load_dump(REPO / "pvebalance" / "scenarios" / "ha-rules.json")["api"])
    kinds = {(b.rule, b.strict, b.negative, b.failback) for b in bound.values()}
    assert kinds == {("keep-off-3-4", True, True, True), ("avoid-5", False, True, True),
                     ("db-prefers-1-2", False, False, True), ("web-on-2-3", True, False, False)}


@pytest.mark.parametrize(("step", "words"), [
    ((201, "pve1", "pve3"), "HA rule keep-off-3-4: a strict negative rule keeps it off pve3"),
    ((204, "pve1", "pve5"), "HA rule avoid-5: a non-strict negative rule keeps it off pve5 while "
                            "['pve1', 'pve2', 'pve3', 'pve4'] are usable"),
    ((206, "pve1", "pve2"), "HA rule db-prefers-1-2: pve2 is outside its highest-priority usable nodes ['pve1']"),
    ((208, "pve3", "pve5"), "HA rule web-on-2-3: a strict rule does not list pve5"),
    ((100, "pve2", "pve3"), "guest 100 is on pve1, not pve2"),
])
def test_the_oracle_names_each_kind_of_broken_step(step: tuple[int, str, str], words: str) -> None:
    api = load_dump(REPO / "pvebalance" / "scenarios" / "ha-rules.json")["api"]
    (breach,) = oracle_ha.step_breaches(api, [step])
    assert breach.startswith("step 0: ") and breach.endswith(words), breach


def test_the_oracle_finds_a_guest_left_where_pve_would_move_it() -> None:
    api = load_dump(REPO / "pvebalance" / "scenarios" / "ha-rules.json")["api"]
    assert oracle_ha.end_breaches(api, []) == {
        207: "guest 207 ends on pve2, outside ['pve1'] (HA rule db-prefers-1-2, failback)"}
    assert oracle_ha.end_breaches(api, [(207, "pve2", "pve1")]) == {}
    assert oracle_ha.step_breaches(api, [(207, "pve2", "pve1"), (208, "pve3", "pve2")]) == []
