"""PVE 9.2's HA answers as the balancer reads them: each resource's `failback`, the CRS options (the
auto-rebalance threshold and margin in percent; auto-rebalance acts only under the static or dynamic
scheduler), and one clear line for a malformed value."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from pvebalance.engine import Policy
from pvebalance.engine.rules import build_constraints
from pvebalance.shared.apianswers import DumpError, read_options
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from tests.helpers import REPO


def api_of(name: str) -> dict[str, Any]:
    return copy.deepcopy(load_dump(REPO / "pvebalance" / "scenarios" / f"{name}.json")["api"])


def test_failback_is_read_per_resource_with_pves_default_on() -> None:
    api = api_of("groups")
    assert snapshot_from_api(api).ha_failback_off == []
    api["/cluster/ha/resources"][2]["failback"] = 0
    api["/cluster/ha/resources"][0]["failback"] = "1"
    assert snapshot_from_api(api).ha_failback_off == [125]


def test_a_failback_that_is_not_0_or_1_is_one_line_naming_the_resource() -> None:
    api = api_of("groups")
    api["/cluster/ha/resources"][2]["failback"] = "sometimes"
    with pytest.raises(DumpError, match=re.escape(
            "/cluster/ha/resources[2] (resource vm:125): failback: not 0 or 1 ('sometimes')")):
        snapshot_from_api(api)


@pytest.mark.parametrize(("crs", "threshold", "margin"), [
    ("ha=static,ha-auto-rebalance=1", 30.0, 10.0),
    ("ha=dynamic,ha-auto-rebalance=1,ha-auto-rebalance-threshold=40,ha-auto-rebalance-margin=5", 40.0, 5.0),
    ({"ha": "static", "ha-auto-rebalance": 1, "ha-auto-rebalance-threshold": 0.3}, 0.3, 10.0),
])
def test_the_auto_rebalance_threshold_and_margin_are_percent(crs: Any, threshold: float, margin: float) -> None:
    options = read_options({"crs": crs}).crs
    assert options is not None
    assert (options.ha_auto_rebalance_threshold, options.ha_auto_rebalance_margin) == (threshold, margin)


@pytest.mark.parametrize(("crs", "line"), [
    ("ha=static,ha-auto-rebalance-threshold=130",
     "/cluster/options: crs.ha-auto-rebalance-threshold: must be less than or equal to 100 ('130')"),
    ("ha=static,ha-auto-rebalance-margin=-1",
     "/cluster/options: crs.ha-auto-rebalance-margin: must be greater than or equal to 0 ('-1')"),
])
def test_a_percent_out_of_range_is_one_line(crs: str, line: str) -> None:
    with pytest.raises(DumpError, match=re.escape(line)):
        read_options({"crs": crs})


@pytest.mark.parametrize(("scheduler", "rebalances"), [("basic", False), ("static", True), ("dynamic", True)])
def test_pves_auto_rebalance_counts_only_under_the_static_or_dynamic_scheduler(scheduler: str,
                                                                                rebalances: bool) -> None:
    """pve-ha-manager's load_balance returns at once under `basic`: HA guests are the balancer's then."""
    api = api_of("operator-rules")
    api["/cluster/options"] = {"crs": {"ha": scheduler, "ha-auto-rebalance": 1}}
    snap = snapshot_from_api(api)
    assert snap.ha_auto_rebalance is rebalances
    fixed = build_constraints(snap, Policy()).fixed
    assert {v: fixed.get(v) for v in (430, 431)} == {
        430: "Proxmox HA auto-rebalance manages it" if rebalances else None,
        431: None}, "vm:431's own auto-rebalance flag is 0: the balancer's either way"
