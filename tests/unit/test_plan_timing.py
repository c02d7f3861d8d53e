"""A plan's expected time (pvebalance/engine/timing.py, schedule.py): its moves over the nodes' migration links under
the migrator's limits; migrations out of one node share its link; the engine's model agrees with the
simulator's; `balancing.objective` prefers the plan that finishes first."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from pvebalance.cli import app
from pvebalance.engine import Policy, plan_balance, timing
from pvebalance.engine.rules import build_constraints
from pvebalance.engine.schedule import plan_seconds, prefer
from pvebalance.engine.state import Move
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.config import BalancingSettings, MigratorSettings
from pvebalance.shared.models import ClusterSnapshot, GuestState, GuestType, MigrationReason, NodeState
from pvebalance.simulator import links as sim_links
from tests.helpers import REPO

GIB = 2**30
ONE_BY_ONE = MigratorSettings(max_parallel_cluster=1, poll_interval=1.0)
TWO_PER_SOURCE = MigratorSettings(max_parallel_cluster=2, max_parallel_per_source=2, poll_interval=1.0)
AFTER = 0.5 + timing.PREFLIGHT_SECONDS  # a slot frees half a poll interval and a pre-flight after its task


def vm(vmid: int, node: str, mem_gib: float) -> GuestState:
    return GuestState(vmid=vmid, name=f"vm{vmid}", type=GuestType.QEMU, node=node, mem=int(mem_gib * GIB),
                      maxmem=int(mem_gib * GIB))


def move(g: GuestState, target: str) -> Move:
    return Move(g, float(g.mem), g.node, target, MigrationReason.BALANCE, "")


def test_two_copies_out_of_one_node_share_its_link() -> None:
    copies = [timing.Copy("pve1", "pve2", 8 * GIB), timing.Copy("pve1", "pve3", 8 * GIB)]
    # one after the other: 2 s of PVE's own, 8 s at 1 GiB a second (10 Gbit/s), then the slot frees
    assert timing.finish_times(copies, [[], []], ONE_BY_ONE) == [(0, 10), (10 + AFTER, 20 + AFTER)]
    # at once, out of one node: half the link each, 16 s; only PVE's own part overlaps
    assert timing.finish_times(copies, [[], []], TWO_PER_SOURCE) == [(0, 18), (0, 18)]
    # between disjoint pairs, each has its links to itself
    apart = [timing.Copy("pve1", "pve2", 8 * GIB), timing.Copy("pve3", "pve4", 8 * GIB)]
    assert timing.finish_times(apart, [[], []], TWO_PER_SOURCE) == [(0, 10), (0, 10)]
    # a move waits for the move it depends on (the planner's depends_on), whatever the limits
    assert timing.finish_times(apart, [[], [0]], TWO_PER_SOURCE)[1] == (10 + AFTER, 20 + AFTER)
    # a faster link, per node: 25 Gbit/s on both ends moves 2.5 GiB a second
    fast = TWO_PER_SOURCE.model_copy(update={"link_gbit_nodes": {"pve1": 25, "pve2": 25}})
    assert timing.finish_times(copies[:1], [[]], fast) == [(0, pytest.approx(2 + 8 / 2.5))]


def test_when_one_copy_ends_the_other_takes_the_whole_link() -> None:
    copies = [timing.Copy("pve1", "pve2", 4 * GIB), timing.Copy("pve1", "pve3", 8 * GIB)]
    [(_, short), (_, long)] = timing.finish_times(copies, [[], []], TWO_PER_SOURCE)
    # both copy at 0.5 GiB/s from 2 s: the short one's 4 GiB are through at 10 s, then the long one's
    # 4 GiB left go at 1 GiB/s: 14 s
    assert (short, long) == (pytest.approx(10), pytest.approx(14))


def test_the_engines_link_model_agrees_with_the_simulators() -> None:
    """Written apart (the simulator never imports the engine): same rate per Gbit/s, same fair shares."""
    assert timing.link_rate(10) == sim_links.link_rate(10) == 1 * GIB
    rng = random.Random(7)
    nodes = [f"pve{i}" for i in range(1, 6)]
    gbit = {n: rng.choice([1, 10, 25]) for n in nodes}
    for _ in range(200):
        pairs = [rng.sample(nodes, 2) for _ in range(rng.randint(1, 8))]
        engine = timing.fair_rates({i: timing.Copy(s, t, 1) for i, (s, t) in enumerate(pairs)},
                                   lambda side: timing.link_rate(gbit[side[0]]))
        simulator = sim_links.fair_rates({i: (s, t, None) for i, (s, t) in enumerate(pairs)},
                                         lambda side: sim_links.link_rate(gbit[side[0]]))
        assert engine == pytest.approx(simulator)
        # max-min fair, checked by its definition: no side over-used, and each flow has a bottleneck, a
        # full side on which no flow gets more than it does
        used = {(n, end): sum(r for i, r in engine.items() if pairs[i][end] == n) for n in nodes for end in (0, 1)}
        assert all(u <= timing.link_rate(gbit[n]) * (1 + 1e-9) for (n, _), u in used.items())
        for i, rate in engine.items():
            assert any(used[(pairs[i][end], end)] >= timing.link_rate(gbit[pairs[i][end]]) * (1 - 1e-9)
                       and all(r <= rate * (1 + 1e-9) for j, r in engine.items() if pairs[j][end] == pairs[i][end])
                       for end in (0, 1))


def test_a_plans_expected_time_is_its_moves_one_after_another_when_all_leave_one_node() -> None:
    """all-on-one with the default limits (one migration per source): the oracle adds up, from the plan's own
    figures, each move's PVE part, its GiB at 1 GiB a second and the migrator's gap before the next move."""
    doc = load_dump(REPO / "pvebalance" / "scenarios" / "all-on-one.json")
    limits = MigratorSettings()
    plan = plan_balance(snapshot_from_api(doc["api"]), replace(Policy(), migrator=limits))
    assert {m.source for m in plan.migrations} == {"pve1"} and limits.max_parallel_per_source == 1
    after = limits.poll_interval / 2 + timing.PREFLIGHT_SECONDS
    oracle = sum(limits.setup_seconds + m.gib_moved + after for m in plan.migrations) - after
    assert plan.expected_seconds == pytest.approx(oracle, abs=0.1)


def snapshot(guests: list[GuestState]) -> ClusterSnapshot:
    nodes = [NodeState(name=n, maxmem=100 * GIB, mem=30 * GIB, maxcpu=16) for n in ("pve1", "pve2", "pve3", "pve4")]
    return ClusterSnapshot(nodes=nodes, guests=guests)


def test_between_plans_of_as_many_migrations_the_one_that_finishes_first_wins() -> None:
    a, b, c = vm(101, "pve1", 8), vm(102, "pve1", 8), vm(103, "pve3", 8)
    snap = snapshot([a, b, c])
    policy = Policy(migrator=MigratorSettings(max_parallel_cluster=2, max_parallel_per_source=2))
    constraints = build_constraints(snap, policy)
    same_source = [move(a, "pve2"), move(b, "pve4")]  # both out of pve1: they share its link
    disjoint = [move(a, "pve2"), move(c, "pve4")]  # pve1 -> pve2 and pve3 -> pve4 at once
    assert plan_seconds(disjoint, policy, constraints) < plan_seconds(same_source, policy, constraints)
    assert prefer(disjoint, same_source, policy, constraints)
    assert not prefer(same_source, disjoint, policy, constraints)
    # fewest migrations first by default, however long: one move of 8 GiB beats two of 1 GiB
    small = [vm(104, "pve1", 1), vm(105, "pve3", 1)]
    snap2 = snapshot([a, *small])
    two_small = [move(small[0], "pve2"), move(small[1], "pve4")]
    assert prefer([move(a, "pve2")], two_small, policy, build_constraints(snap2, policy))
    # objective time: the plan that finishes first, among plans of about as many migrations
    timed = replace(policy, objective="time")
    assert prefer(two_small, [move(a, "pve2")], timed, build_constraints(snap2, timed))


def test_objective_comes_from_the_settings() -> None:
    assert Policy().objective == "migrations"
    assert Policy.from_settings(BalancingSettings(objective="time")).objective == "time"


def test_plan_json_and_table_show_the_expected_time_and_gib() -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["plan", "--scenario", "all-on-one", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["gib_moved"] == pytest.approx(sum(m["gib_moved"] for m in doc["migrations"]), abs=0.05)
    assert doc["expected_seconds"] > 60
    table = runner.invoke(app, ["plan", "--scenario", "all-on-one"], env={"COLUMNS": "200"})
    minutes, seconds = divmod(round(doc["expected_seconds"]), 60)
    assert f"17 migrations, {doc['gib_moved']:.1f} GiB copied, expected to finish in {minutes} min {seconds} s" \
        in table.output
