"""A Policy is the validated settings in the engine's terms, with the settings' defaults and no others."""

from __future__ import annotations

from typing import Any

import pytest

from pvebalance.engine import Policy
from pvebalance.shared.config import BalancingSettings, PoolRule, ProxmoxClusterSettings, ResourceReserve
from pvebalance.shared.models import GuestType


def test_a_bare_policy_is_the_policy_of_an_empty_config() -> None:
    assert Policy() == Policy.from_settings(BalancingSettings(), ProxmoxClusterSettings())


def test_a_policy_changed_in_one_field_keeps_the_settings_defaults_in_the_others() -> None:
    changed = Policy(balanciness=9)
    assert changed.exact_seconds == BalancingSettings().exact_seconds
    assert changed.max_node_usage == BalancingSettings().max_node_usage


def test_policies_do_not_share_their_default_dicts() -> None:
    first, second = Policy(), Policy()
    first.pools["ci"] = PoolRule(type="anti-affinity")
    assert second.pools == {}


@pytest.mark.parametrize(
    ("balancing", "cluster", "field", "expected"),
    [
        ({"exact_seconds": 7}, {}, "exact_seconds", 7.0),
        ({"balance_types": ["vm"]}, {}, "balance_types", frozenset({GuestType.QEMU})),
        ({"ignore_guests": [101, "web"]}, {}, "ignore_guests", frozenset({101})),
        ({"ignore_guests": [101, "web"]}, {}, "ignore_guests_by_name", frozenset({"web"})),
        ({"method": "cpu", "threshold": {"cpu": 70, "memory": 80}}, {}, "thresholds", {"cpu": 70.0, "memory": 80.0}),
        # the keys of before `threshold` (one per dimension) are still read, as its entries
        ({"method": "cpu", "cpu_threshold": 70, "memory_threshold": 80}, {}, "thresholds",
         {"cpu": 70.0, "memory": 80.0}),
        ({"method": ["memory", "cpu"]}, {}, "dimensions", ("memory", "cpu")),
        ({"method": "memory,cpu"}, {}, "dimensions", ("memory", "cpu")),
        ({"method": "weighted", "weights": {"memory": 2, "cpu": 0}}, {}, "dimensions", ("memory",)),
        ({"method": ["cpu", "memory"], "balanciness": {"memory": 4}}, {}, "bands", {"memory": 4.0}),
        ({"node_resource_reserve": {"defaults": {"memory": 4}}}, {}, "reserve",
         {"defaults": ResourceReserve(memory=4)}),
        ({}, {"maintenance_nodes": ["pve1"]}, "maintenance_nodes", frozenset({"pve1"})),
        ({}, {"ignore_nodes": ["pve9"]}, "ignore_nodes", frozenset({"pve9"})),
    ],
)
def test_each_setting_reaches_the_policy(balancing: dict[str, Any], cluster: dict[str, Any], field: str,
                                         expected: object) -> None:
    policy = Policy.from_settings(BalancingSettings(**balancing), ProxmoxClusterSettings(**cluster))
    assert getattr(policy, field) == expected
