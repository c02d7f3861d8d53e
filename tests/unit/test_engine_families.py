"""Rule families: each reads its rules, the plan repairs what they find broken, the exact model keeps
them, and a family added to the registry is obeyed with no other change."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import pytest
from pydantic import ValidationError

from pvebalance.engine import Policy, plan_balance
from pvebalance.engine.exact import minimum_migrations
from pvebalance.engine.load import DIMENSIONS
from pvebalance.engine.rules import FAMILIES, Family, build_constraints
from pvebalance.engine.rules import registry as registry_module
from pvebalance.engine.rules.kinds import NodeRule
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.config import BalancingSettings
from pvebalance.shared.models import ClusterSnapshot, HaRule, MigrationReason
from tests.helpers import REPO

Change = Callable[[ClusterSnapshot], ClusterSnapshot]


def all_on_one() -> ClusterSnapshot:
    return snapshot_from_api(load_dump(REPO / "pvebalance" / "scenarios" / "all-on-one.json")["api"])


def guests(changes: dict[int, dict[str, object]]) -> Change:
    def change(snap: ClusterSnapshot) -> ClusterSnapshot:
        moved = [g.model_copy(update=changes[g.vmid]) if g.vmid in changes else g for g in snap.guests]
        return snap.model_copy(update={"guests": moved})
    return change


def ha_rule(**fields: object) -> Change:
    def change(snap: ClusterSnapshot) -> ClusterSnapshot:
        return snap.model_copy(update={"ha_rules": [HaRule(rule="r1", **fields)]})  # type: ignore[arg-type]
    return change


def both(first: Change, second: Change) -> Change:
    return lambda snap: second(first(snap))


def family(name: str) -> Family:
    return next(f for f in FAMILIES if f.name == name)


# (family, how all-on-one is changed so that it breaks one of the family's rules, policy)
CASES: list[tuple[str, Change, Policy]] = [
    ("maintenance", guests({}), Policy(maintenance_nodes=frozenset({"pve1"}))),
    ("pins", guests({100: {"tags": ["plb_pin_pve3"]}, 101: {"tags": ["plb_pin_pve3"]}}), Policy()),
    ("ha-node-affinity", ha_rule(type="node-affinity", resources=["vm:100", "vm:101"], nodes={"pve4": 1}), Policy()),
    ("affinity", guests({100: {"tags": ["plb_affinity_app"], "node": "pve2"},
                         101: {"tags": ["plb_affinity_app"], "node": "pve3"},
                         102: {"tags": ["plb_affinity_app"]}}), Policy()),
    ("ha-resource-affinity", both(guests({100: {"node": "pve2"}, 101: {"node": "pve3"}}),
                                  ha_rule(type="resource-affinity", affinity="positive",
                                          resources=["vm:100", "vm:101"])), Policy()),
    ("ha-resource-affinity", ha_rule(type="resource-affinity", affinity="negative", resources=["vm:100", "vm:101"]),
     Policy()),
    ("anti-affinity", guests({100: {"tags": ["plb_anti_affinity_x"]}, 101: {"tags": ["plb_anti_affinity_x"]}}),
     Policy()),
]
IDS = ["maintenance", "pins", "ha-node-affinity", "affinity", "ha-positive", "ha-negative", "anti-affinity"]


@pytest.mark.parametrize(("name", "change", "policy"), CASES, ids=IDS)
def test_each_family_finds_its_rule_broken_before_the_plan(name: str, change: Change, policy: Policy) -> None:
    snap = change(all_on_one())
    book = build_constraints(snap, policy)
    where = {g.vmid: g.node for g in snap.guests}
    assert family(name) in book.families
    assert any(b.required for b in family(name).check(book, where, {g.vmid: g for g in snap.guests}))


@pytest.mark.parametrize(("name", "change", "policy"), CASES, ids=IDS)
def test_each_family_has_its_rule_kept_by_the_plan(name: str, change: Change, policy: Policy) -> None:
    snap = change(all_on_one())
    plan = plan_balance(snap, policy)
    where = {g.vmid: g.node for g in snap.guests} | {m.vmid: m.target for m in plan.migrations}
    book = build_constraints(snap, policy)
    assert plan.unmet == []
    assert not [b for b in family(name).check(book, where, {g.vmid: g for g in snap.guests}) if b.required]


@pytest.mark.parametrize(("name", "change", "policy"), CASES, ids=IDS)
def test_each_family_has_its_rule_kept_by_the_exact_model(name: str, change: Change, policy: Policy) -> None:
    snap = change(all_on_one())
    result = minimum_migrations(snap, policy)
    where = {g.vmid: g.node for g in snap.guests} | result.placement
    book = build_constraints(snap, policy)
    assert result.migrations is not None
    assert not [b for b in family(name).check(book, where, {g.vmid: g for g in snap.guests}) if b.required]


def test_a_guest_in_groups_of_two_families_moves_with_both() -> None:
    snap = guests({100: {"tags": ["plb_affinity_app"], "node": "pve2"}, 101: {"tags": ["plb_affinity_app"]},
                   102: {"node": "pve3"}})(all_on_one())
    snap = snap.model_copy(update={"ha_rules": [HaRule(rule="r1", type="resource-affinity", affinity="positive",
                                                       resources=["vm:101", "vm:102"])]})
    plan = plan_balance(snap, Policy())
    where = {g.vmid: g.node for g in snap.guests} | {m.vmid: m.target for m in plan.migrations}
    assert len({where[100], where[101], where[102]}) == 1


class _NotOnPve2(NodeRule):
    """A family as a new module would add it: no guest may run on pve2."""

    name = "not-on-pve2"
    reason = MigrationReason.PIN

    def restrictions(self, snapshot: ClusterSnapshot, policy: Policy) -> Iterator[tuple[int, Iterable[str], str]]:
        for g in snapshot.guests:
            yield g.vmid, [n.name for n in snapshot.nodes if n.name != "pve2"], "not on pve2"


def test_a_family_added_to_the_registry_is_obeyed_by_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "FAMILIES", (*FAMILIES, _NotOnPve2()))
    plan = plan_balance(all_on_one(), Policy())
    assert plan.violations == []
    assert {m.target for m in plan.migrations} == {"pve3", "pve4"}
    others = {n: u.percent for n, u in plan.after.nodes.items() if n != "pve2"}
    assert max(others.values()) - min(others.values()) <= 5, "balanced over the nodes it may use"


def test_the_settings_accept_exactly_the_dimensions_of_the_dimension_table() -> None:
    """DIMENSIONS is the one list: every name in it is a method, a band and a threshold key; no other is."""
    for name in DIMENSIONS:
        settings = BalancingSettings(method=name, balanciness={name: 3}, threshold={name: 80})
        assert Policy.from_settings(settings).dimensions == (name,)
    assert BalancingSettings(method=list(DIMENSIONS)).method == list(DIMENSIONS)
    for wrong in ({"method": "ram"}, {"balanciness": {"ram": 3}}, {"threshold": {"ram": 80}}):
        with pytest.raises(ValidationError, match="unknown dimension 'ram'"):
            BalancingSettings(**wrong)
