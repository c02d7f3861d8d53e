"""Every reason a guest may not move, and every reason a node may not receive a guest, in the exact
words a plan, a log or an operator sees.

Each case changes the all-on-one cluster (four 32-core, 256 GiB nodes, every guest on pve1) in one
way and reads the reason back: for guests from the rule book (`Constraints.fixed`), for nodes from
`PlanState.refusal`, which must say "no" exactly when `allows` or `fits` does.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pvebalance.engine import Policy
from pvebalance.engine.policy import PastMove
from pvebalance.engine.rules import build_constraints
from pvebalance.engine.state import PlanState
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.config import PoolRule
from pvebalance.shared.models import ClusterSnapshot, GuestType, HaRule, MigrationReason
from tests.helpers import REPO

Change = Callable[[ClusterSnapshot], ClusterSnapshot]
NOW = 1_800_000_000.0
HOUR = 3600.0


def all_on_one() -> ClusterSnapshot:
    return snapshot_from_api(load_dump(REPO / "pvebalance" / "scenarios" / "all-on-one.json")["api"])


def guest(vmid: int, **fields: object) -> Change:
    def change(snap: ClusterSnapshot) -> ClusterSnapshot:
        return snap.model_copy(update={"guests": [g.model_copy(update=fields) if g.vmid == vmid else g
                                                  for g in snap.guests]})
    return change


def node(which: str, **fields: object) -> Change:
    def change(snap: ClusterSnapshot) -> ClusterSnapshot:
        return snap.model_copy(update={"nodes": [n.model_copy(update=fields) if n.name == which else n
                                                 for n in snap.nodes]})
    return change


def renamed(old: str, new: str) -> Change:
    """A node renamed, with the guests on it."""
    def change(snap: ClusterSnapshot) -> ClusterSnapshot:
        return snap.model_copy(update={
            "nodes": [n.model_copy(update={"name": new}) if n.name == old else n for n in snap.nodes],
            "guests": [g.model_copy(update={"node": new}) if g.node == old else g for g in snap.guests]})
    return change


def cluster(**fields: object) -> Change:
    return lambda snap: snap.model_copy(update=fields)


def each(*changes: Change) -> Change:
    def change(snap: ClusterSnapshot) -> ClusterSnapshot:
        for c in changes:
            snap = c(snap)
        return snap
    return change


def moved(*moves: tuple[str, str, float, float]) -> dict[int, tuple[PastMove, ...]]:
    """Guest 100's history: (source, target, hours ago, duration in seconds), oldest first."""
    return {100: tuple(PastMove(s, t, NOW - ago * HOUR, d) for s, t, ago, d in moves)}


NOTHING = each()

# (what is changed, the policy, the reason guest 100 may not move; None: it may)
GUEST_CASES = [
    (NOTHING, Policy(), None),
    (guest(100, template=True), Policy(), "template"),
    (guest(100, lock="backup"), Policy(), "locked (backup)"),
    (guest(100, tags=["plb_ignore_dev"]), Policy(), "plb_ignore tag"),
    (NOTHING, Policy(ignore_guests=frozenset({100})), "excluded in the config"),
    (NOTHING, Policy(ignore_guests_by_name=frozenset({"vm100"})), "excluded in the config (vm100)"),
    (NOTHING, Policy(ignore_guests_by_name=frozenset({"VM10?"})), "excluded in the config (VM10?)"),
    (guest(100, name="veeam-proxy-1"), Policy(ignore_guests_by_name=frozenset({"veeam-*"})),
     "excluded in the config (veeam-*)"),
    (NOTHING, Policy(ignore_guests_by_name=frozenset({"veeam-*"})), None),
    (NOTHING, Policy(ignore_nodes=frozenset({"pve1"})), "its node pve1 is ignored"),
    (guest(100, type=GuestType.LXC), Policy(balance_types=frozenset({GuestType.QEMU})), "lxc not in balance_types"),
    (NOTHING, Policy(cooldown=frozenset({100})), "moved recently (cooldown)"),
    (NOTHING, Policy(history=moved(("pve2", "pve1", 0.5, 30)), now=NOW),
     "moved once in 24 h: waits 60 min after its last move (adaptive cooldown)"),
    (guest(100, hastate="migrate"), Policy(), "HA state migrate"),
    (guest(100, local_resources=["hostpci0"]), Policy(), "uses local devices (hostpci0)"),
    (each(guest(100, hastate="started"), cluster(ha_auto_rebalance=True)), Policy(),
     "Proxmox HA auto-rebalance manages it"),
    (each(guest(100, hastate="started"), cluster(ha_auto_rebalance=True, ha_auto_rebalance_off=[100])), Policy(),
     None),
    (each(guest(100, hastate="started"), cluster(ha_auto_rebalance=True)), Policy(leave_ha_to_crs=False), None),
]
GUEST_IDS = ["may move", "template", "locked", "plb_ignore tag", "excluded vmid", "excluded name",
             "excluded name pattern, any case", "excluded wildcard", "wildcard not matching", "ignored node",
             "type not balanced", "cooldown", "adaptive cooldown", "HA busy", "local devices",
             "HA auto-rebalance flag 1", "HA auto-rebalance flag 0", "HA left to us by the config"]


@pytest.mark.parametrize(("change", "policy", "reason"), GUEST_CASES, ids=GUEST_IDS)
def test_each_reason_a_guest_may_not_move_is_said_exactly(change: Change, policy: Policy,
                                                          reason: str | None) -> None:
    book = build_constraints(change(all_on_one()), policy)
    assert book.fixed.get(100) == reason


# Adaptive cooldown: (history of guest 100, cooldown and cap in minutes, the reason; None: it may move)
COOLDOWN_CASES = [
    (moved(("pve2", "pve1", 0.98, 30)), 60, 360, "moved once in 24 h: waits 60 min after its last move "
                                                 "(adaptive cooldown)"),
    (moved(("pve2", "pve1", 1.02, 30)), 60, 360, None),
    (moved(("pve2", "pve1", 1.5, 2 * HOUR)), 60, 360, "moved once in 24 h: waits 120 min after its last move "
                                                      "(adaptive cooldown)"),
    (moved(("pve3", "pve2", 5, 30), ("pve2", "pve1", 1.98, 30)), 60, 360,
     "moved 2 times in 24 h: waits 120 min after its last move (adaptive cooldown)"),
    (moved(("pve3", "pve2", 5, 30), ("pve2", "pve1", 2.02, 30)), 60, 360, None),
    (moved(("pve4", "pve3", 9, 30), ("pve3", "pve2", 6, 30), ("pve2", "pve1", 3.98, 30)), 60, 360,
     "moved 3 times in 24 h: waits 240 min after its last move (adaptive cooldown)"),
    (moved(("pve4", "pve3", 12, 30), ("pve3", "pve2", 9, 30), ("pve2", "pve3", 8, 30), ("pve3", "pve1", 5.98, 30)),
     60, 360, "moved 4 times in 24 h: waits 360 min after its last move (adaptive cooldown)"),
    (moved(("pve4", "pve3", 12, 30), ("pve3", "pve2", 9, 30), ("pve2", "pve3", 8, 30), ("pve3", "pve1", 6.02, 30)),
     60, 360, None),
    (moved(("pve3", "pve2", 25, 30), ("pve2", "pve1", 1.5, 30)), 60, 360, None),
    (moved(("pve2", "pve1", 0.2, 30)), 15, 360, "moved once in 24 h: waits 15 min after its last move "
                                                "(adaptive cooldown)"),
    (moved(("pve2", "pve1", 0.3, 30)), 15, 360, None),
]
COOLDOWN_IDS = ["once, within", "once, after", "a long migration waits its duration", "twice, within",
                "twice, after", "three times", "four times: capped", "four times: after the cap",
                "a move older than 24 h does not count", "a shorter cooldown, within",
                "a shorter cooldown, after"]


@pytest.mark.parametrize(("history", "cooldown", "cap", "reason"), COOLDOWN_CASES, ids=COOLDOWN_IDS)
def test_adaptive_cooldown_doubles_with_each_move_in_24_hours_up_to_the_cap(
        history: dict[int, tuple[PastMove, ...]], cooldown: float, cap: float, reason: str | None) -> None:
    policy = Policy(history=history, now=NOW, cooldown_minutes=cooldown, cooldown_cap_minutes=cap)
    assert build_constraints(all_on_one(), policy).fixed.get(100) == reason


def test_adaptive_cooldown_never_holds_a_guest_on_a_node_being_drained() -> None:
    policy = Policy(history=moved(("pve2", "pve1", 0.5, 30)), now=NOW, maintenance_nodes=frozenset({"pve1"}))
    assert 100 not in build_constraints(all_on_one(), policy).fixed


def state_of(change: Change, policy: Policy) -> PlanState:
    snap = change(all_on_one())
    return PlanState(snap, policy, build_constraints(snap, policy))


def full(name: str) -> Change:
    """The node's memory all but used up."""
    return node(name, mem=250 * 2**30)


# (what is changed, the policy, the node asked to take guest 100, the reason it refuses; None: it takes it)
NODE_CASES = [
    (NOTHING, Policy(), "pve2", None),
    (NOTHING, Policy(), "pve9", "pve9 is not a node of the cluster, or its figures are impossible"),
    (node("pve2", problem="maxmem is 0"), Policy(), "pve2",
     "pve2 is not a node of the cluster, or its figures are impossible"),
    (NOTHING, Policy(ignore_nodes=frozenset({"pve2"})), "pve2", "pve2 is ignored (proxmox_cluster.ignore_nodes)"),
    (NOTHING, Policy(maintenance_nodes=frozenset({"pve2"})), "pve2", "pve2 is being drained (maintenance)"),
    (node("pve2", maintenance=True), Policy(), "pve2", "pve2 is being drained (maintenance)"),
    (node("pve2", online=False), Policy(), "pve2", "pve2 is offline"),
    (guest(100, tags=["plb_pin_pve3"]), Policy(), "pve2", "guest 100 may run only on pve3 (plb_pin tags)"),
    (guest(100, tags=["plb_pin_pve3"]), Policy(), "pve3", None),
    (each(renamed("pve3", "PVE3"), guest(100, tags=["plb_pin_pve3"])), Policy(), "PVE3", None),
    (NOTHING, Policy(pools={"db": PoolRule(pin=["PVE3"])}), "pve2", None),
    (cluster(pools={"db": [100]}), Policy(pools={"db": PoolRule(pin=["PVE3"])}), "pve2",
     "guest 100 may run only on pve3 (pool db pin)"),
    (cluster(ha_rules=[HaRule(rule="r1", type="node-affinity", resources=["vm:100"], nodes={"pve4": 1})]),
     Policy(), "pve2", "guest 100 may run only on pve4 (HA rule r1)"),
    (each(guest(100, tags=["plb_anti_affinity_db"]), guest(101, tags=["plb_anti_affinity_db"], node="pve2")),
     Policy(), "pve2", "tag:plb_anti_affinity_db: guest 100 must not share pve2 with 101"),
    (each(guest(101, node="pve2"),
          cluster(ha_rules=[HaRule(rule="apart", type="resource-affinity", affinity="negative",
                                   resources=["vm:100", "vm:101"])])),
     Policy(), "pve2", "ha:apart: guest 100 must not share pve2 with 101"),
    (each(guest(100, vcpus=16), node("pve2", maxcpu=8)), Policy(), "pve2",
     "pve2 has 8 cores, fewer than the 16 vCPUs of guest 100"),
    (each(guest(100, vcpus=8), node("pve2", maxcpu=8)), Policy(), "pve2", None),
    (each(guest(100, vcpus=16, type=GuestType.LXC), node("pve2", maxcpu=8)), Policy(), "pve2", None),
    (each(guest(100, cputype="host"), node("pve1", cpu_model="EPYC"), node("pve2", cpu_model="Xeon"),
          node("pve3", cpu_model="EPYC")), Policy(), "pve2",
     "guest 100 may run only on pve1,pve3 (CPU type host on EPYC)"),
    (each(guest(100, cputype="host"), node("pve1", cpu_model="EPYC"), node("pve3", cpu_model="EPYC")), Policy(),
     "pve3", None),
    (each(guest(100, cputype="host"), node("pve2", cpu_model="EPYC")), Policy(), "pve2",
     "guest 100 may run only on pve1 (CPU type host, and the CPU model of pve1 is unknown)"),
    (each(guest(100, cputype="x86-64-v2-AES"), node("pve2", cpu_model="Xeon")), Policy(), "pve2", None),
    (NOTHING, Policy(history=moved(("pve2", "pve1", 3, 30)), now=NOW), "pve2",
     "guest 100 left pve2 within 24 h: it does not go back (no return)"),
    (NOTHING, Policy(history=moved(("pve2", "pve3", 5, 30), ("pve3", "pve1", 3, 30)), now=NOW), "pve3",
     "guest 100 left pve3 within 24 h: it does not go back (no return)"),
    (NOTHING, Policy(history=moved(("pve2", "pve3", 5, 30), ("pve3", "pve1", 3, 30)), now=NOW), "pve2",
     "guest 100 left pve2 within 24 h: it does not go back (no return)"),
    (NOTHING, Policy(history=moved(("pve2", "pve3", 5, 30), ("pve3", "pve1", 3, 30)), now=NOW), "pve4", None),
    (NOTHING, Policy(history=moved(("pve2", "pve1", 25, 30)), now=NOW), "pve2", None),
    (full("pve2"), Policy(), "pve2", "pve2 would use 98.3%, above max_node_usage 95%"),
    (each(guest(101, node="pve2", maxcpu=30)), Policy(cpu_overcommit=1), "pve2",
     "pve2 would run 34 vCPUs on 32 cores, above cpu_overcommit 1"),
]
NODE_IDS = ["takes it", "unknown node", "impossible figures", "ignored node", "maintenance in the config",
            "HA maintenance", "offline", "pin", "pinned node", "pin in another case", "pool pin, not a member",
            "pool pin in another case", "HA node-affinity", "anti-affinity", "HA negative affinity",
            "fewer cores than vCPUs", "as many cores as vCPUs", "containers may have more cores than a node",
            "host CPU: another model", "host CPU: the same model", "host CPU: own model unknown",
            "another CPU type", "A->B->A", "A->B->C->A: C", "A->B->C->A: B", "A->B->C->A: another node",
            "left more than 24 h ago", "no room", "vCPU overcommit"]


@pytest.mark.parametrize(("change", "policy", "target", "reason"), NODE_CASES, ids=NODE_IDS)
def test_each_reason_a_node_may_not_receive_a_guest_is_said_exactly(change: Change, policy: Policy, target: str,
                                                                    reason: str | None) -> None:
    state = state_of(change, policy)
    unit = frozenset({100})
    assert state.refusal(unit, target) == reason
    says_yes = state.allows(unit, target) and (target not in state.loads or state.fits(unit, target))
    assert says_yes == (reason is None), "refusal and allows/fits agree"


def test_the_per_target_cap_is_said_once_the_node_took_its_share() -> None:
    state = state_of(NOTHING, Policy(max_migrations_per_target=1))
    assert state.refusal(frozenset({100}), "pve2") is None
    state.move([101], "pve2", MigrationReason.BALANCE, "")
    assert state.refusal(frozenset({100}), "pve2") == (
        "pve2 already receives 1 guests in this plan (max_migrations_per_target 1)")
    assert not state.allows(frozenset({100}), "pve2")


def test_a_rule_family_without_words_of_its_own_still_says_which_rules_refuse() -> None:
    from pvebalance.engine.rules.maintenance import Maintenance

    state = state_of(NOTHING, Policy(maintenance_nodes=frozenset({"pve2"})))
    assert Maintenance().refusal(state, frozenset({100}), "pve2") == "the maintenance rules forbid it"
