"""The ordered exact minimum (bench/exact_ordered.py) beside the placement minimum (pvebalance/engine/exact.py):
a swap between two full nodes is 2 migrations as a placement but 3 as a plan (a parking move on a
third node with room), and no plan at all without such a node."""

from __future__ import annotations

import pytest

from bench.exact_ordered import ordered_minimum
from pvebalance.engine import Policy
from pvebalance.engine.exact import minimum_migrations
from pvebalance.engine.fit import GuestFigures, fits, snapshot_figures
from pvebalance.shared.models import ClusterSnapshot, GuestState, GuestType, NodeState

GIB = 2**30
# the band is left out (any spread will do): these cases are about room and order only
POLICY = Policy(balanciness=100)
PIN_B, PIN_A, FIXED = ["plb_pin_pveB"], ["plb_pin_pveA"], ["plb_ignore"]

Guest = tuple[int, str, int, list[str]]  # vmid, node, GiB in use, tags


def cluster(nodes: dict[str, int], guests: list[Guest]) -> ClusterSnapshot:
    """Nodes of `nodes[name]` GiB each, their memory in use that of their guests."""
    used = {name: sum(gib for _, at, gib, _ in guests if at == name) for name in nodes}
    return ClusterSnapshot(
        nodes=[NodeState(name=n, maxmem=size * GIB, mem=used[n] * GIB, maxcpu=8) for n, size in nodes.items()],
        guests=[GuestState(vmid=vmid, name=f"vm{vmid}", type=GuestType.QEMU, node=node, mem=gib * GIB,
                           maxmem=gib * GIB, maxcpu=1, tags=tags) for vmid, node, gib, tags in guests])


# pveA and pveB at 14 of 16 GiB (limit 95 %: 15.2): vm100 (8 GiB) must go to pveB, vm200 (8 GiB) to pveA
SWAP: list[Guest] = [(100, "pveA", 8, PIN_B), (101, "pveA", 6, FIXED), (200, "pveB", 8, PIN_A), (201, "pveB", 6, FIXED)]
PARK_200 = [(200, "pveB", "pveC"), (100, "pveA", "pveB"), (200, "pveC", "pveA")]
PARK_100 = [(100, "pveA", "pveC"), (200, "pveB", "pveA"), (100, "pveC", "pveB")]
DIRECT = [(100, "pveA", "pveB"), (200, "pveB", "pveA")]

CASES = [
    # a third node with room: the swap takes a parking move, one of the two guests moves twice
    ({"pveA": 16, "pveB": 16, "pveC": 16}, SWAP, 2, 3, [PARK_200, PARK_100]),
    # the third node has no room for either guest: no plan at all, while the placement needs 2
    ({"pveA": 16, "pveB": 16, "pveC": 16}, [*SWAP, (300, "pveC", 14, FIXED)], 2, None, []),
    # room for the swap on both nodes: the placement's order is a plan, the two minimums agree
    ({"pveA": 32, "pveB": 32, "pveC": 16}, SWAP, 2, 2, [DIRECT, DIRECT[::-1]]),
    # pveA is above its limit (16 of 16 GiB): it takes vm200 only once vm100 has left it
    ({"pveA": 16, "pveB": 32}, [(100, "pveA", 8, PIN_B), (101, "pveA", 8, FIXED), (200, "pveB", 4, PIN_A),
                                (201, "pveB", 4, FIXED)], 2, 2, [DIRECT]),
]
IDS = ["swap-two-full-nodes-third-with-room", "swap-two-full-nodes-third-full", "swap-with-room",
       "over-limit-node-sheds-first"]


def replay(snap: ClusterSnapshot, moves: list[tuple[int, str, str]]) -> list[str]:
    """What is wrong with the moves as a sequence: a guest not where the move starts, or a target
    without room at that step (`fit.fits`, as the engine and verify ask it)."""
    figures = snapshot_figures(snap)
    guests = {g.vmid: g for g in snap.guests}
    where = {g.vmid: g.node for g in snap.guests}
    problems = []
    for step, (vmid, source, target) in enumerate(moves, 1):
        arriving = GuestFigures.of([guests[vmid]])
        if where[vmid] != source:
            problems.append(f"step {step}: {vmid} is on {where[vmid]}, not {source}")
        if (why := fits(arriving, figures[target], POLICY)) is not None:
            problems.append(f"step {step}: {why}")
        figures[target] = figures[target].arrive(arriving)
        figures[source] = figures[source].leave(arriving)
        where[vmid] = target
    return problems


@pytest.mark.parametrize(("nodes", "guests", "placement", "ordered", "plans"), CASES, ids=IDS)
def test_the_ordered_minimum_counts_the_moves_a_safe_order_needs(
        nodes: dict[str, int], guests: list[Guest], placement: int, ordered: int | None,
        plans: list[list[tuple[int, str, str]]]) -> None:
    snap = cluster(nodes, guests)
    exact = minimum_migrations(snap, POLICY, node_limit=None, time_limit=None)
    assert (exact.status, exact.migrations) == ("optimal", placement)
    result = ordered_minimum(snap, POLICY, steps=4, time_limit=None)
    if ordered is None:
        assert (result.status, result.migrations, result.moves) == ("infeasible", None, [])
        return
    assert (result.status, result.migrations, result.bound) == ("optimal", ordered, ordered)
    assert result.moves in plans
    assert replay(snap, result.moves) == []


@pytest.mark.parametrize(("steps", "status", "migrations"), [(1, "infeasible", None), (2, "infeasible", None),
                                                             (3, "optimal", 3), (6, "optimal", 3)])
def test_a_plan_of_at_most_steps_migrations_or_none(steps: int, status: str, migrations: int | None) -> None:
    """Fewer steps than the swap through a parking spot needs: no plan; more: the spare steps idle."""
    result = ordered_minimum(cluster({"pveA": 16, "pveB": 16, "pveC": 16}, SWAP), POLICY, steps=steps,
                             time_limit=None)
    assert (result.status, result.migrations, result.steps) == (status, migrations, steps)


def test_the_last_step_keeps_the_balance_band() -> None:
    """With the band asked for (balanciness 5 of the default policy), the same swap and a third
    node that is empty can never be balanced: the ordered model, like the placement, finds no plan."""
    snap = cluster({"pveA": 16, "pveB": 16, "pveC": 16}, SWAP)
    assert minimum_migrations(snap, Policy(), node_limit=None, time_limit=None).status == "infeasible"
    assert ordered_minimum(snap, Policy(), steps=4, time_limit=None).status == "infeasible"
