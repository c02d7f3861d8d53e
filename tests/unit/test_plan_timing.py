"""A plan's expected time (pvebalance/engine/timing.py, schedule.py): its moves over the nodes' migration links under
the migrator's limits; migrations out of one node share its link; the engine's model agrees with the
simulator's; `balancing.objective` prefers the plan that finishes first; the queue order of moves that
share a link keeps it busy (engine/order.py)."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import OrderedDict
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from pvebalance.cli import app
from pvebalance.engine import Policy, order, plan_balance, timing
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


# --- the queue order of moves that share a link (engine/order.py) ---------------------------------------------

TWO_SLOTS = MigratorSettings(max_parallel_cluster=2, max_parallel_per_source=2, max_parallel_per_target=2,
                             poll_interval=1.0)


def out_of_pve1(gib: list[float]) -> list[timing.Copy]:
    """Moves out of pve1 to three targets in turn, as a drain queues them (longest first)."""
    return [timing.Copy("pve1", f"pve{2 + k % 3}", int(g * GIB)) for k, g in enumerate(gib)]


def played(copies: list[timing.Copy], queue: list[int], limits: MigratorSettings) -> float:
    return timing.makespan([copies[i] for i in queue], [[] for _ in queue], limits)


def random_batch(seed: int, moves: int) -> tuple[list[timing.Copy], MigratorSettings]:
    """Long and short copies out of one or two nodes, longest first, on 2 or 3 slots."""
    rng = random.Random(seed)
    sources = ["pve1"] if rng.random() < 0.6 else ["pve1", "pve2"]
    gib = sorted((rng.choice([rng.uniform(0.3, 2.5), rng.uniform(2.5, 12)]) for _ in range(moves)), reverse=True)
    copies = [timing.Copy(rng.choice(sources), rng.choice(["pve3", "pve4", "pve5"]), int(g * GIB)) for g in gib]
    slots = rng.choice([2, 3])
    return copies, MigratorSettings(max_parallel_cluster=slots, max_parallel_per_source=slots,
                                    max_parallel_per_target=slots, poll_interval=rng.choice([0.1, 1.0]))


@pytest.fixture
def fresh_searches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every search runs again instead of being remembered from an earlier test."""
    monkeypatch.setattr(order, "_cache", OrderedDict())


@pytest.mark.usefixtures("fresh_searches")
def test_two_slots_sharing_a_link_keep_it_busy_where_longest_first_leaves_it_idle() -> None:
    """Two guests of 8 GiB and four of 1 GiB out of pve1, two at a time. Longest first, both long copies
    share the link and end together, then both slots spend PVE's fixed part (2 s) and the migrator's gap
    (0.7 s) while the link idles, and again for the short ones. The order found puts every fixed part
    after the first beside another move's copy: the link carries its 20 GiB without a pause, the least
    any order can take."""
    copies = out_of_pve1([8, 8, 1, 1, 1, 1])
    longest_first = played(copies, list(range(6)), TWO_SLOTS)
    found = played(copies, order.shortest_order(copies, TWO_SLOTS), TWO_SLOTS)
    link_alone = TWO_SLOTS.setup_seconds + 20  # 10 Gbit/s: 1 GiB a second
    assert found == pytest.approx(link_alone)
    assert longest_first > link_alone + 5


@pytest.mark.usefixtures("fresh_searches")
@pytest.mark.parametrize("seed", range(12))
def test_the_order_found_finishes_no_later_than_longest_first(seed: int) -> None:
    copies, limits = random_batch(seed, moves=12 + seed)
    queue = order.shortest_order(copies, limits)
    assert sorted(queue) == list(range(len(copies)))
    assert played(copies, queue, limits) <= played(copies, list(range(len(copies))), limits) + 1e-9


@pytest.mark.usefixtures("fresh_searches")
@pytest.mark.parametrize(("seed", "moves", "within"),
                         [(s, 6, 1.0) for s in range(6)] + [(s, 7, 1.01) for s in range(3)])
def test_the_order_found_for_a_small_batch_is_the_best_there_is(seed: int, moves: int, within: float) -> None:
    """Checked against every order: up to 6 moves the search tries them all too (each play cut off once it
    cannot win: a wrong cut would lose the best); 7 moves are annealed, within 1 % of the best."""
    copies, limits = random_batch(100 + seed, moves)
    best = min(played(copies, list(queue), limits) for queue in itertools.permutations(range(moves)))
    assert played(copies, order.shortest_order(copies, limits), limits) <= within * best + 1e-9


@pytest.mark.parametrize("seed", range(20))
def test_a_play_is_cut_off_only_once_it_cannot_end_before_its_cutoff(seed: int) -> None:
    copies, limits = random_batch(200 + seed, moves=10)
    queue = list(range(10))
    random.Random(seed).shuffle(queue)
    end = timing.Play(copies, [[]] * 10, limits).run(queue)
    assert timing.Play(copies, [[]] * 10, limits).run(queue, cutoff=end + 1e-6) == end
    assert timing.Play(copies, [[]] * 10, limits).run(queue, cutoff=end) == math.inf


def test_the_order_search_reads_no_clock_and_finds_the_same_order_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded by work, not time: a loaded machine gets the same plan (test_engine_determinism runs it under load)."""
    copies, limits = random_batch(7, moves=30)
    first = order.shortest_order(copies, limits)

    def no_clock() -> float:
        raise AssertionError("the order search read a clock")

    for name in ("time", "monotonic", "perf_counter", "process_time"):
        monkeypatch.setattr(f"time.{name}", no_clock)
    for _ in range(2):
        monkeypatch.setattr(order, "_cache", OrderedDict())
        assert order.shortest_order(copies, limits) == first


@pytest.mark.usefixtures("fresh_searches")
@pytest.mark.parametrize("work", [0, 2_000, 10_000, 40_000])
def test_the_order_search_stops_once_its_work_is_spent(monkeypatch: pytest.MonkeyPatch, work: int) -> None:
    """The work is events played: past it a search finishes at most the plays it has begun (the first of
    the queue as given and of each order it built, and one try)."""
    copies, limits = random_batch(3, moves=40)
    events = 0
    step = timing.Play.step

    def counted(play: timing.Play, until: float = math.inf) -> None:
        nonlocal events
        events += 1
        step(play, until)

    monkeypatch.setattr(timing.Play, "step", counted)
    timing.makespan(copies, [[]] * 40, limits)
    one_play, events = events, 0
    order.shortest_order(copies, limits, work)
    assert events <= work + 8 * one_play
