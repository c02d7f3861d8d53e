"""The bench's lower bound for memory and CPU at once (bench/dimensions_bench.box_lower_bound): it
must never exceed a proven two-dimension minimum, or a ratio to it would flatter no plan and shame
a good one."""

from __future__ import annotations

import pytest

from bench.dimensions_bench import ISSUE_MINIMA, box_lower_bound
from pvebalance.engine import Policy
from pvebalance.shared.apidump import load_dump, operator_pools, snapshot_from_api
from pvebalance.shared.config import BalancingSettings
from tests.helpers import REPO


@pytest.mark.parametrize(("name", "minimum"), sorted(ISSUE_MINIMA.items()))
def test_box_bound_never_exceeds_the_proven_two_dimension_minimum(name: str, minimum: int) -> None:
    doc = load_dump(REPO / "scenarios" / f"{name}.json")
    snapshot = snapshot_from_api(doc["api"], cluster=doc["name"])
    policy = Policy.from_settings(BalancingSettings(pools=operator_pools(doc), method=["memory", "cpu"], balanciness=5))
    assert 0 < box_lower_bound(snapshot, policy) <= minimum
