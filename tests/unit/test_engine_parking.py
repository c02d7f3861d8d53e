"""Rules that only a cycle of moves repairs: A's guest must go to B, B's guest to A, and neither node
has room for the other's guest. The plan parks B's guest on a third node with room, and says why not
when there is none."""

from __future__ import annotations

from pvebalance.engine import Policy, plan_balance
from pvebalance.engine.exact import minimum_migrations
from pvebalance.engine.rules import build_constraints
from pvebalance.engine.verify import find_violations
from pvebalance.shared.models import ClusterSnapshot, GuestState, GuestType, NodeState

GIB = 2**30


def guest(vmid: int, node: str, gib: int, tags: list[str]) -> GuestState:
    return GuestState(vmid=vmid, name=f"vm{vmid}", type=GuestType.QEMU, node=node, mem=gib * GIB,
                      maxmem=gib * GIB, maxcpu=1, tags=tags)


def swap_cluster(third_node_used_gib: int) -> ClusterSnapshot:
    """pveA and pveB at 14 of 16 GiB: vm100 (8 GiB, on pveA) is pinned to pveB and vm200 (8 GiB, on
    pveB) to pveA; 6 GiB on each never move. pveC has `third_node_used_gib` in use, by a guest that
    never moves."""
    guests = [
        guest(100, "pveA", 8, ["plb_pin_pveB"]),
        guest(101, "pveA", 6, ["plb_ignore"]),
        guest(200, "pveB", 8, ["plb_pin_pveA"]),
        guest(201, "pveB", 6, ["plb_ignore"]),
    ]
    if third_node_used_gib:
        guests.append(guest(300, "pveC", third_node_used_gib, ["plb_ignore"]))
    used = {"pveA": 14, "pveB": 14, "pveC": third_node_used_gib}
    nodes = [NodeState(name=n, maxmem=16 * GIB, mem=gib * GIB, maxcpu=8) for n, gib in used.items()]
    return ClusterSnapshot(nodes=nodes, guests=guests)


def pin_rule(snap: ClusterSnapshot, vmid: int) -> str:
    """The name a plan gives the pin of a guest (the pin family's, read from the rule book)."""
    tables = build_constraints(snap, Policy()).restrictions.values()
    (rule,) = [table[vmid].rule for table in tables if vmid in table]
    return rule


def test_a_swap_blocked_by_room_is_made_through_a_parking_move_on_the_third_node() -> None:
    snap = swap_cluster(third_node_used_gib=0)
    policy = Policy()
    plan = plan_balance(snap, policy)
    steps = [(m.vmid, m.source, m.target, m.batch) for m in plan.migrations]
    assert steps == [(200, "pveB", "pveC", 0), (100, "pveA", "pveB", 1), (200, "pveC", "pveA", 2)]
    assert plan.migrations[0].detail == f"{pin_rule(snap, 100)}: parked on pveC to make room on pveB for 100"
    assert plan.migrations[2].detail == "leaves parking on pveC for pveA"
    assert plan.unmet == []
    assert plan.violations == []
    assert find_violations(snap, plan, policy, build_constraints(snap, policy)) == []


def test_a_swap_with_no_third_node_with_room_is_reported_unmet_with_the_reason() -> None:
    snap = swap_cluster(third_node_used_gib=14)
    plan = plan_balance(snap, Policy())
    assert plan.migrations == []
    assert plan.violations == []
    assert {(u.rule, tuple(u.vmids)) for u in plan.unmet} == {(pin_rule(snap, 100), (100,)),
                                                             (pin_rule(snap, 200), (200,))}
    reasons = {u.reason for u in plan.unmet}
    assert reasons == {
        "must run on pveB: none may take it now; no guest on pveB could be parked on a third node with room "
        "to make room for 100",
        "must run on pveA: none may take it now; no guest on pveA could be parked on a third node with room "
        "to make room for 200",
    }


def test_a_guest_parks_only_where_it_breaks_no_rule_it_did_not_break_before() -> None:
    """pveC is the least loaded node with room, but vm200 must not share a node with vm300 there
    (anti-affinity, kept where vm200 is now): it parks on pveD, the other node with room."""
    snap = swap_cluster(third_node_used_gib=1)
    tagged = [g.model_copy(update={"tags": [*g.tags, "plb_anti_affinity_x"]}) if g.vmid in (200, 300) else g
              for g in snap.guests]
    tagged.append(guest(400, "pveD", 4, ["plb_ignore"]))
    nodes = [*snap.nodes, NodeState(name="pveD", maxmem=16 * GIB, mem=4 * GIB, maxcpu=8)]
    snap = snap.model_copy(update={"guests": tagged, "nodes": nodes})
    plan = plan_balance(snap, Policy())
    steps = [(m.vmid, m.source, m.target, m.batch) for m in plan.migrations]
    assert steps == [(200, "pveB", "pveD", 0), (100, "pveA", "pveB", 1), (200, "pveD", "pveA", 2)]
    assert plan.unmet == []
    assert plan.violations == []


def trade_cluster() -> ClusterSnapshot:
    """Three nodes of 100 GiB at 70, 50 and 60 GiB in use. vm100 (20 GiB, on pveA) and vm200 (10 GiB, on
    pveB) are kept apart; the rest never moves. Only their trade brings every node to 60 GiB: vm100 to
    pveB, vm200 to pveA, one of them by way of pveC."""
    guests = [
        guest(100, "pveA", 20, ["plb_anti_affinity_x"]),
        guest(101, "pveA", 50, ["plb_ignore"]),
        guest(200, "pveB", 10, ["plb_anti_affinity_x"]),
        guest(201, "pveB", 40, ["plb_ignore"]),
        guest(300, "pveC", 60, ["plb_ignore"]),
    ]
    used = {"pveA": 70, "pveB": 50, "pveC": 60}
    nodes = [NodeState(name=n, maxmem=100 * GIB, mem=gib * GIB, maxcpu=8) for n, gib in used.items()]
    return ClusterSnapshot(nodes=nodes, guests=guests)


def test_the_exact_model_counts_the_parking_move_of_two_guests_kept_apart_that_trade_nodes() -> None:
    snap = trade_cluster()
    found = minimum_migrations(snap, Policy(), time_limit=None, count_only=True)
    assert {v: n for v, n in found.placement.items() if v in (100, 200)} == {100: "pveB", 200: "pveA"}
    assert (found.status, found.migrations) == ("optimal", 3)  # the trade's two and the parking move
    plan = plan_balance(snap, Policy())
    assert len(plan.migrations) == 3
    assert [m.vmid for m in plan.migrations if "parked on pveC" in m.detail] in ([100], [200])
    assert plan.after.spread_pp == 0.0 and plan.unmet == [] and plan.violations == []
