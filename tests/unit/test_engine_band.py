"""The band plan (pvebalance/engine/band.py) and the bench's shed+fill lower bound that judges it."""

from __future__ import annotations

import pytest

from bench.engine_bench import shed_fill_lower_bound
from pvebalance.engine import plan_balance
from pvebalance.engine.balance import _units
from pvebalance.engine.band import apply_in_order, band_plan, clone
from pvebalance.engine.exact import minimum_migrations
from pvebalance.engine.rules import build_constraints
from pvebalance.engine.search import balance_moves, units_by_node
from pvebalance.engine.state import PlanState
from tests.unit.test_engine_determinism import scenario


@pytest.mark.parametrize("name", ["all-on-one", "homelab", "mid-300", "tight", "large-5k"])
def test_the_band_plan_reaches_the_balance_in_a_safe_order(name: str) -> None:
    snap, policy = scenario(name)
    state = PlanState(snap, policy, build_constraints(snap, policy))
    band = band_plan(state, _units(state))
    assert band is not None
    done = clone(state)
    assert apply_in_order(done, band.moves)
    assert done.spread() <= policy.balanciness
    assert state.moves == []  # planned on a copy: the state it started from is as it was


def test_on_a_large_cluster_the_plan_is_the_band_plan_with_fewer_moves_than_the_greedy_one() -> None:
    snap, policy = scenario("large-5k")
    state = PlanState(snap, policy, build_constraints(snap, policy))
    units = _units(state)
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
    units = _units(state)
    whole = clone(state)
    balance_moves(whole, units_by_node(whole, units), [])
    assert len(whole.moves) > 2
    stopped = clone(state)
    balance_moves(stopped, units_by_node(stopped, units), [], until=lambda s: len(s.moves) >= 2)
    assert [(m.guest.vmid, m.target) for m in stopped.moves] == [(m.guest.vmid, m.target) for m in whole.moves[:2]]
