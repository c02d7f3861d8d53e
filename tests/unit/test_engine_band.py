"""The band plan (pvebalance/engine/band.py) and the bench's shed+fill lower bound that judges it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench.engine_bench import shed_fill_lower_bound
from pvebalance.engine import band_box, plan_balance
from pvebalance.engine.band import apply_in_order, band_plan, clone
from pvebalance.engine.exact import minimum_migrations
from pvebalance.engine.rules import build_constraints
from pvebalance.engine.search import balance_moves, movable_units, units_by_node
from pvebalance.engine.state import PlanState
from tests.unit.test_dimensions import policy_for
from tests.unit.test_engine_determinism import scenario


@pytest.mark.parametrize("name", ["all-on-one", "homelab", "mid-300", "tight", "large-5k"])
def test_the_band_plan_reaches_the_balance_in_a_safe_order(name: str) -> None:
    snap, policy = scenario(name)
    state = PlanState(snap, policy, build_constraints(snap, policy))
    band = band_plan(state, movable_units(state))
    assert band is not None
    done = clone(state)
    assert apply_in_order(done, band.moves)
    assert done.spread() <= policy.balanciness
    assert state.moves == []  # planned on a copy: the state it started from is as it was


def test_on_a_large_cluster_the_plan_is_the_band_plan_with_fewer_moves_than_the_greedy_one() -> None:
    snap, policy = scenario("large-5k")
    state = PlanState(snap, policy, build_constraints(snap, policy))
    units = movable_units(state)
    band = band_plan(state, units)
    assert band is not None
    greedy = clone(state)
    balance_moves(greedy, units_by_node(greedy, units), [])
    plan = plan_balance(snap, policy)
    assert len(plan.migrations) == len(band.moves) < len(greedy.moves)
    assert plan.violations == []


@pytest.mark.parametrize("name", ["all-on-one", "homelab", "tight"])
def test_the_shed_fill_bound_never_passes_the_exact_minimum(name: str) -> None:
    snap, policy = scenario(name)
    exact = minimum_migrations(snap, policy, node_limit=None, time_limit=None)
    assert exact.status == "optimal" and exact.migrations is not None
    assert 0 < shed_fill_lower_bound(snap, policy) <= exact.migrations


@pytest.mark.parametrize("name", ["mid-300", "large-5k", "xl-10k"])
def test_the_shed_fill_bound_never_passes_the_plan(name: str) -> None:
    snap, policy = scenario(name)
    assert 0 < shed_fill_lower_bound(snap, policy) <= len(plan_balance(snap, policy).migrations)


def test_the_greedy_stops_at_the_first_move_after_which_its_caller_would_make_the_plan_again() -> None:
    """`until` (a room-first plan's greedy finish: balance._balance) ends the run right after the
    move that meets it, the moves before kept; without it the same run goes on."""
    snap, policy = scenario("homelab")
    state = PlanState(snap, policy, build_constraints(snap, policy))
    units = movable_units(state)
    whole = clone(state)
    balance_moves(whole, units_by_node(whole, units), [])
    assert len(whole.moves) > 2
    stopped = clone(state)
    balance_moves(stopped, units_by_node(stopped, units), [], until=lambda s: len(s.moves) >= 2)
    assert [(m.guest.vmid, m.target) for m in stopped.moves] == [(m.guest.vmid, m.target) for m in whole.moves[:2]]


class _Forgetful(dict[Any, Any]):
    """A memo that keeps nothing: every look made in full."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def test_a_box_fill_that_found_nothing_looks_again_only_at_what_is_new_to_it_and_chooses_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """band_box remembers a look for a node below the box that found nothing (`filler`,
    `choose_in_pool`) while only that node has changed, by taking load: the next look passes over the
    units seen then. xl-10k with memory and disk (where looks of both kinds find units new to them):
    the box plan is the one made with every look in full, move for move, with fewer units ranked."""
    snap, _ = scenario("xl-10k")
    policy = policy_for("xl-10k", method=["memory", "disk"])
    ranked: list[int] = []
    full_ranking = band_box._ranked

    def counting(box: band_box.Box, n: str, loads: np.ndarray, *rest: Any, **options: Any) -> list[int]:
        ranked.append(len(loads))
        return full_ranking(box, n, loads, *rest, **options)

    def box_moves() -> list[tuple[list[int], str]]:
        state = PlanState(snap, policy, build_constraints(snap, policy))
        plan = band_plan(state, movable_units(state))
        assert plan is not None
        return [(sorted(vmids), target) for vmids, target in plan.moves]

    monkeypatch.setattr(band_box, "_ranked", counting)
    remembered = box_moves()
    with_memo = sum(ranked)
    ranked.clear()
    made = band_box.Box.__init__

    def forgetful(box: band_box.Box, *args: Any) -> None:
        made(box, *args)
        box.unfilled, box.unpooled = _Forgetful(), _Forgetful()

    monkeypatch.setattr(band_box.Box, "__init__", forgetful)
    assert box_moves() == remembered
    assert with_memo < sum(ranked)
