"""The search a few nodes at a time (engine/node_subsets.py, issue 19): where the local search stops
above the minimum, it finds a plan with fewer migrations, balanced by the independent checker and
safe at every step; where the exact model proved its plan the fewest, it is not run at all."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from pvebalance.engine import balance as balance_module
from pvebalance.engine import exact_phase, node_subsets, plan_balance
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.models import ClusterSnapshot, Plan
from tests import heldout_plans
from tests.heldout_plans import BAND, both, cluster
from tests.helpers import REPO
from tests.oracle_balance import Move, spreads_after
from tests.unit.test_rules import replay_checking_rules

pytestmark = pytest.mark.long  # minutes in all: run first (tests/conftest.py)

def assert_balanced_and_safe(api: dict[str, Any], snap: ClusterSnapshot, planned: Plan) -> None:
    """Both spreads within the band by the independent checker, and every rule and the room on each
    target held at every step (test_rules' replay), nothing left unmet."""
    spreads = spreads_after(api, [Move(m.vmid, m.source, m.target) for m in planned.migrations])
    assert max(spreads.values()) <= BAND + 1e-6, spreads
    replay_checking_rules(snap, both(), planned)
    assert planned.violations == [] and planned.unmet == []


@pytest.mark.parametrize("seed", [17])  # the id, the seed: its tests run together (conftest.work_unit)
def test_a_few_nodes_at_a_time_finds_fewer_migrations_than_the_local_search_balanced_and_safe(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Held-out seed 17 (6 nodes, 108 guests: past the whole model's gate): the local search ends at
    21 migrations, the search a few nodes at a time at 19, the minimum the independent checker
    proves (tests/unit/test_dimensions_heldout.py)."""
    snap, api = cluster(seed)
    planned = heldout_plans.planned(seed)
    monkeypatch.setattr(balance_module, "SUBSETS_MAX_WORK", 0)
    monkeypatch.setattr(balance_module, "SHORT_SUBSETS_MAX_WORK", 0)
    without = plan_balance(snap, both())
    assert len(planned.migrations) < len(without.migrations)
    assert any(n.startswith("exact solver over a few nodes at a time") for n in planned.notes)
    assert_balanced_and_safe(api, snap, planned)


# Each part of the search that takes a held-out seed to the minimum the independent checker proves,
# where the search without it stops above: (seed, the module and knob that turn the part off, its value
# then, migrations with the part, without it; the id starts with the seed: conftest.work_unit). Seeds
# 14, 137, 120, 325, 182, 289, 122 and 403 are proven in test_dimensions_heldout.py. The 3-node solves'
# 30 HiGHS nodes from 7 nodes (WIDER_CLUSTER_NODE_LIMIT) had their seed here, 65 (8 nodes: 25 without
# them, 23 its minimum, proven by the bench in 151 s at 120,000 nodes); since session 22 the 5- and
# 6-node passes reach 23 without them, so no seed shows that part now (docs/benchmarks.md). So had the
# search's second start from the heuristics' plan (node_subsets.SECOND_START_SOLVES), 106 (6 nodes: 20
# without it, 19 its minimum); since session 25 the whole model searched again after the search, capped
# below its 20, finds 19 as well (the second start's own path is still tested below).
PARTS = [
    # 7 nodes, 56 guests: 3 nodes at a time end at 17 (18 from the whole model's plan alone); the
    # 4-node passes after them reach 15
    pytest.param(14, node_subsets, "WIDER_FROM", 99, 15, 17, id="14-4-nodes-at-a-time-on-7-nodes"),
    # 6 nodes, 102 guests: the 3-node passes find nothing below 20; the 4-node passes (from 6 nodes
    # since session 21) reach 19
    pytest.param(137, node_subsets, "WIDER_FROM", 99, 19, 20, id="137-4-nodes-at-a-time-on-6-nodes"),
    # 7 nodes, 77 guests: the 3- and 4-node passes end at 17; 5 nodes at a time after them, 15
    pytest.param(325, node_subsets, "FURTHER", (), 15, 17, id="325-5-nodes-at-a-time-on-7-nodes"),
    # 8 nodes, 88 guests: the 5-node passes end at 20; 6 nodes at a time after them, 19
    pytest.param(182, node_subsets, "FURTHER", tuple(p for p in node_subsets.FURTHER if p.span < 6), 19, 20,
                 id="182-6-nodes-at-a-time-on-8-nodes"),
    # 7 nodes, 105 guests: every 6-node model of the 15-migration plan ends at 10 HiGHS nodes with
    # neither a placement nor a proof; with the 6-node passes' own node limit, one finds 14
    pytest.param(289, node_subsets, "FURTHER",
                 tuple(p._replace(node_limit=node_subsets.NODE_LIMIT) for p in node_subsets.FURTHER),
                 14, 15, id="289-6-node-solves-searched-past-10-highs-nodes"),
    # 6 nodes, 102 guests: the 3- and 4-node passes end at 16; the one 5-node model that frees the
    # fewest guests, 15
    pytest.param(122, node_subsets, "FURTHER", tuple(p for p in node_subsets.FURTHER if p.least > 6), 15, 16,
                 id="122-5-nodes-at-a-time-on-6-nodes-the-smallest-model"),
    # 7 nodes, 133 guests (past the whole model's first gate): the search 3 to 6 nodes at a time ends
    # at 37; with the whole model after it, 36. (223, the seed this part was made for, 25 -> 22, is
    # reached by the 5-node passes too since session 22; 288, 28 -> 27, is the other seed it gains on.)
    pytest.param(120, exact_phase, "FEW_NODES", 0, 36, 37, id="120-few-nodes-the-whole-model-after-the-search"),
    # 5 nodes, 75 guests: the heuristics' 18, which neither the uncapped whole model (unproven) nor the
    # search a few nodes at a time improves; the whole model again, capped below 18, 17 (so 510 on 6
    # nodes, 17 -> 16: test_dimensions_heldout)
    pytest.param(403, exact_phase, "AGAIN_NODES_AT_MOST", 0, 17, 18,
                 id="403-the-whole-model-again-capped-below-the-plan"),
]


@pytest.mark.parametrize(("seed", "module", "knob", "off", "found", "without"), PARTS)
def test_each_part_of_the_search_takes_a_held_out_seed_to_its_minimum_balanced_and_safe(
        seed: int, module: ModuleType, knob: str, off: object, found: int, without: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    snap, api = cluster(seed)
    planned = heldout_plans.planned(seed)  # made as test_dimensions_heldout makes it
    monkeypatch.setattr(module, knob, off)
    assert (len(planned.migrations), len(plan_balance(snap, both()).migrations)) == (found, without)
    assert_balanced_and_safe(api, snap, planned)


def test_past_the_searchs_size_its_first_solves_take_a_dense_cluster_within_1_05x_of_its_minimum(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Held-out seed 2001 drawn at 6 nodes and 300 guests (3,600 of model size: past SUBSETS_MAX_WORK,
    within SHORT_SUBSETS_MAX_WORK): the local search ends at 72 migrations, where the checker proves 65
    (test_dimensions_heldout); the search's first solves, one for each MOVES_A_SOLVE of those 72 moves
    (14, within SHORT_SUBSETS_SOLVES), reach 67."""
    snap, api = cluster(2001, 6, 300)
    solves: list[frozenset[str]] = []
    one_solve = node_subsets._one_solve

    def counted(*args: Any, **kwargs: Any) -> dict[int, str] | None:
        solves.append(args[4])  # the neighbourhood's nodes
        return one_solve(*args, **kwargs)

    monkeypatch.setattr(node_subsets, "_one_solve", counted)
    planned = plan_balance(snap, both())
    assert len(solves) == min(balance_module.SHORT_SUBSETS_SOLVES, 72 // balance_module.MOVES_A_SOLVE) == 14
    assert {len(nodes) for nodes in solves} == {3}  # the 3-node pass: the budget ends within it
    monkeypatch.setattr(balance_module, "SHORT_SUBSETS_MAX_WORK", 0)
    assert (len(planned.migrations), len(plan_balance(snap, both()).migrations)) == (67, 72)
    assert any(n == "exact solver over a few nodes at a time: 67 migrations instead of 72" for n in planned.notes)
    assert_balanced_and_safe(api, snap, planned)


@pytest.mark.parametrize("seed", [106])  # as above
def test_a_plan_from_the_second_start_tells_its_own_path_not_the_one_left(seed: int) -> None:
    """Seed 106 (PARTS): the notes say the search took 24 migrations to 19, and nothing of the whole
    model's 20 that the plan did not keep."""
    notes = heldout_plans.planned(seed).notes
    assert "exact solver over a few nodes at a time: 19 migrations instead of 24" in notes
    assert not any(n.startswith("exact solver:") for n in notes), notes


@pytest.mark.parametrize("name", ["homelab", "all-on-one", "maintenance"])
def test_not_run_where_the_exact_model_proved_its_plan_the_fewest(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_: Any) -> None:
        raise AssertionError("the search a few nodes at a time ran after a proven plan")

    monkeypatch.setattr(node_subsets, "fewer_by_subsets", never)
    doc = load_dump(REPO / "pvebalance" / "scenarios" / f"{name}.json")
    plan = plan_balance(snapshot_from_api(doc["api"], cluster=name), both())
    assert any(n.startswith("exact solver:") for n in plan.notes)
    assert plan.unmet == []


@pytest.mark.parametrize("name", ["groups", "operator-rules"])
def test_the_whole_model_is_not_searched_after_it_on_clusters_of_5_or_6_nodes(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """groups (6 nodes) and operator-rules (5) have models past the whole model's first gate: the
    search a few nodes at a time runs, but not the whole model after it (exact_phase.few_nodes_model,
    7-8 nodes only), whose root would cost them up to 2 s for the same plan (docs/benchmarks.md)."""
    def never(*_: Any) -> None:
        raise AssertionError("the whole model was searched after the search a few nodes at a time")

    monkeypatch.setattr(balance_module, "whole_then_subsets", never)
    doc = load_dump(REPO / "pvebalance" / "scenarios" / f"{name}.json")
    snap = snapshot_from_api(doc["api"], cluster=name)
    assert len(snap.nodes) in (5, 6)
    plan = plan_balance(snap, both())
    assert plan.unmet == [] and plan.migrations
    monkeypatch.setattr(exact_phase, "FEW_NODES_FROM", 5)  # from 5 nodes on, it would be
    with pytest.raises(AssertionError, match="the whole model was searched"):
        plan_balance(snap, both())


def test_where_nothing_before_it_balances_both_the_elastic_search_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Held-out seed 13 with the whole model's second gate shut (balance.EXACT_MAX_WORK_UNBALANCED:
    the exact model is then not built where the heuristics leave a dimension above its band): the
    search a few nodes at a time with elastic bands brings both within 5 pp, safe at every step,
    where without it the plan gives a dimension up."""
    snap, api = cluster(13)
    monkeypatch.setattr(balance_module, "EXACT_MAX_WORK_UNBALANCED", 0)
    planned = plan_balance(snap, both())
    assert any(n.startswith("exact solver over a few nodes at a time") and n.endswith("above its band")
               for n in planned.notes), planned.notes
    assert_balanced_and_safe(api, snap, planned)
    monkeypatch.setattr(balance_module, "SUBSETS_MAX_WORK", 0)
    monkeypatch.setattr(balance_module, "SHORT_SUBSETS_MAX_WORK", 0)
    without = plan_balance(snap, both())
    assert [u.rule for u in without.unmet if u.rule.startswith("balance ")], without.unmet
