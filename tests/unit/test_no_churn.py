"""No churn, the engine's side (issue 20, item 5): within the cooldown after guests moved from A to B,
no plan sends load back against that flow (out of B, or into A) while the gap between the two nodes is
within the figures' noise (twice balanciness); a wider gap, the cooldown's end, a rule to repair and a
move along the flow still move guests.

The cluster: three 100 GiB nodes with no host memory and guests of 1 GiB each, so a node's usage in
percent is its number of guests. What counts as "against the flow" is read here from the raw history,
not from the engine's rule book."""

from __future__ import annotations

from pvebalance.engine import Policy, plan_balance
from pvebalance.engine.policy import PastMove
from pvebalance.engine.rules import build_constraints
from pvebalance.engine.state import PlanState
from pvebalance.shared.models import ClusterSnapshot, GuestState, GuestType, Plan
from pvebalance.shared.models import NodeState as Node

GIB = 2**30
NOW = 1_800_000_000.0
MOVED = 900  # the guest the last plan moved, from pve1 to pve2


def cluster(counts: dict[str, int]) -> ClusterSnapshot:
    """`counts` guests of 1 GiB on each node; guest 900 is one of pve2's."""
    guests, vmid = [], 100
    for node, count in counts.items():
        for i in range(count):
            number = MOVED if node == "pve2" and i == 0 else vmid
            vmid += number != MOVED
            guests.append(GuestState(vmid=number, name=f"vm{number}", type=GuestType.QEMU, node=node, maxmem=2 * GIB,
                                     mem=GIB, maxcpu=1))
    nodes = [Node(name=n, maxmem=100 * GIB, mem=c * GIB, maxcpu=64) for n, c in counts.items()]
    return ClusterSnapshot(nodes=nodes, guests=guests)


def after_a_move(minutes_ago: float) -> Policy:
    """Guest 900 went from pve1 to pve2 `minutes_ago` (the default cooldown: 60 min)."""
    return Policy(history={MOVED: (PastMove("pve1", "pve2", NOW - minutes_ago * 60, 20.0),)}, now=NOW)


def against_the_flow(plan: Plan, policy: Policy) -> list[tuple[int, str, str]]:
    """Moves out of a node that received guests, or into one that gave guests, within the cooldown."""
    recent = [m for moves in policy.history.values() for m in moves if NOW - m.at < policy.cooldown_minutes * 60]
    gave, took = {m.source for m in recent}, {m.target for m in recent}
    return [(m.vmid, m.source, m.target) for m in plan.migrations if m.source in took or m.target in gave]


def test_within_the_cooldown_a_gap_within_the_noise_sends_no_load_back() -> None:
    # pve2 took guest 900 ten minutes ago and is now 7 pp above pve1: above balanciness 5, within 2 x 5
    snap = cluster({"pve1": 40, "pve2": 47, "pve3": 44})
    assert against_the_flow(plan_balance(snap, Policy()), after_a_move(10)), \
        "the premise: without the history, a plan sends load from pve2 back to pve1"
    plan = plan_balance(snap, after_a_move(10))
    assert plan.before.spread_pp == 7.0
    assert against_the_flow(plan, after_a_move(10)) == []
    assert plan.migrations == [] and plan.violations == []


def test_a_gap_wider_than_the_noise_is_a_real_change_and_load_flows_back() -> None:
    snap = cluster({"pve1": 34, "pve2": 47, "pve3": 44})  # 13 pp: more than twice balanciness
    plan = plan_balance(snap, after_a_move(10))
    assert ("pve2", "pve1") in {(m.source, m.target) for m in plan.migrations}
    assert plan.after.spread_pp <= 5.0 and plan.violations == []
    assert MOVED not in {m.vmid for m in plan.migrations}, "the guest itself still waits out its cooldown"


def test_after_the_cooldown_load_may_flow_back_but_never_the_guest_itself_within_24_hours() -> None:
    snap = cluster({"pve1": 40, "pve2": 47, "pve3": 44})
    policy = after_a_move(61)
    plan = plan_balance(snap, policy)
    assert ("pve2", "pve1") in {(m.source, m.target) for m in plan.migrations}
    assert plan.after.spread_pp <= 5.0
    assert all(m.target != "pve1" for m in plan.migrations if m.vmid == MOVED)


def test_a_move_along_the_flow_is_made() -> None:
    # the last plan stopped short (pve1 still the fullest): moving on from pve1 to pve2 undoes nothing
    snap = cluster({"pve1": 47, "pve2": 40, "pve3": 44})
    plan = plan_balance(snap, after_a_move(10))
    assert plan.migrations and {(m.source, m.target) for m in plan.migrations} <= {("pve1", "pve2"), ("pve3", "pve2")}
    assert plan.after.spread_pp <= 5.0


def test_a_guest_that_breaks_its_pin_is_repaired_against_the_flow() -> None:
    snap = cluster({"pve1": 40, "pve2": 47, "pve3": 44})
    pinned = next(g for g in snap.guests if g.node == "pve2" and g.vmid != MOVED)
    snap = snap.model_copy(update={"guests": [g.model_copy(update={"tags": ["plb_pin_pve1"]}) if g is pinned else g
                                              for g in snap.guests]})
    plan = plan_balance(snap, after_a_move(10))
    assert [(m.vmid, m.source, m.target) for m in plan.migrations] == [(pinned.vmid, "pve2", "pve1")]
    assert plan.unmet == [] and plan.violations == []


def test_guests_on_a_drained_node_leave_against_the_flow() -> None:
    snap = cluster({"pve1": 40, "pve2": 47, "pve3": 44})
    policy = after_a_move(10)
    plan = plan_balance(snap, Policy(history=policy.history, now=NOW, maintenance_nodes=frozenset({"pve2"})))
    assert sorted(m.vmid for m in plan.migrations) == sorted(g.vmid for g in snap.guests if g.node == "pve2")
    assert "pve1" in {m.target for m in plan.migrations}
    assert plan.unmet == [] and plan.violations == []


def test_the_refusal_says_why_in_words() -> None:
    snap = cluster({"pve1": 40, "pve2": 47, "pve3": 44})
    policy = after_a_move(10)
    state = PlanState(snap, policy, build_constraints(snap, policy))
    other = next(g.vmid for g in snap.guests if g.node == "pve2" and g.vmid != MOVED)
    assert state.refusal(frozenset({other}), "pve1") == (
        f"guest {other} would move load from pve2 to pve1 against the moves of the last 60 min while pve2 is "
        "not fuller by more than twice balanciness: within the figures' noise (no return)")
    assert state.refusal(frozenset({other}), "pve3") is not None, "pve2 took guests: it gives none within the noise"
    free = next(g.vmid for g in snap.guests if g.node == "pve3")
    assert state.refusal(frozenset({free}), "pve2") is None, "into the node that took guests: along the flow"
