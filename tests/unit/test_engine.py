"""The engine's plans, checked by replaying them step by step on the recorded clusters."""

from __future__ import annotations

import pytest

from pvebalance.engine import Policy, is_movable, plan_balance
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.models import ClusterSnapshot, Plan
from tests.helpers import REPO, SCENARIOS


def snapshot(name: str) -> ClusterSnapshot:
    return snapshot_from_api(load_dump(REPO / "pvebalance" / "scenarios" / f"{name}.json")["api"])


def replay(snap: ClusterSnapshot, plan: Plan, limit_pct: float = 95.0) -> dict[str, float]:
    """Apply the plan's moves in order on real memory use; fail on any step that overloads a node."""
    where = {g.vmid: g.node for g in snap.guests}
    guests = {g.vmid: g for g in snap.guests}
    used = {n.name: float(n.mem) for n in snap.nodes}
    cap = {n.name: float(n.maxmem) for n in snap.nodes}
    for i, m in enumerate(plan.migrations):
        assert where[m.vmid] == m.source, f"step {i}: guest {m.vmid} is not on {m.source}"
        mem = guests[m.vmid].mem if guests[m.vmid].running else 0
        used[m.source] -= mem
        used[m.target] += mem
        where[m.vmid] = m.target
        assert 100 * used[m.target] / cap[m.target] <= limit_pct + 1e-9, f"step {i}: {m.target} over {limit_pct}%"
    return {n: 100 * used[n] / cap[n] for n in used}


@pytest.mark.parametrize("name", SCENARIOS)
def test_plan_reaches_balanciness_without_overloading_any_step(name: str) -> None:
    snap = snapshot(name)
    plan = plan_balance(snap, Policy(balanciness=5))
    final = replay(snap, plan)
    balanced_nodes = [n.name for n in snap.nodes if n.online and not n.maintenance]
    spread = max(final[n] for n in balanced_nodes) - min(final[n] for n in balanced_nodes)
    assert spread <= 5.0 + 1e-6
    assert plan.after.spread_pp == pytest.approx(spread, abs=0.01)


@pytest.mark.parametrize("name", SCENARIOS)
def test_only_movable_guests_move_and_each_once(name: str) -> None:
    snap = snapshot(name)
    policy = Policy()
    plan = plan_balance(snap, policy)
    guests = {g.vmid: g for g in snap.guests}
    parked = {m.vmid for m in plan.migrations if "parked on" in m.detail}
    moved = [m.vmid for m in plan.migrations]
    assert all(moved.count(v) == (2 if v in parked else 1) for v in moved), "once; a parked guest twice"
    for m in plan.migrations:
        g = guests[m.vmid]
        assert is_movable(g, policy)
        assert not g.template and not g.lock and g.running
        assert not any(t.startswith("plb_ignore") for t in g.tags)


def test_dead_band_plans_nothing_when_already_balanced() -> None:
    snap = snapshot("all-on-one")
    plan = plan_balance(snap, Policy(balanciness=50))
    assert plan.migrations == []


def test_all_on_one_spreads_the_first_node() -> None:
    plan = plan_balance(snapshot("all-on-one"), Policy(balanciness=5))
    assert plan.before.spread_pp > 40
    assert {m.source for m in plan.migrations} == {"pve1"}
    assert {m.target for m in plan.migrations} == {"pve2", "pve3", "pve4"}
    assert all(m.reason.value == "balance" and m.online for m in plan.migrations)


def test_maintenance_node_is_emptied_of_running_movable_guests() -> None:
    snap = snapshot("maintenance")
    drained = {n.name for n in snap.nodes if n.maintenance}
    assert drained, "the scenario has a node in maintenance"
    plan = plan_balance(snap, Policy())
    policy = Policy()
    leaving = {g.vmid for g in snap.guests if g.node in drained and is_movable(g, policy)}
    assert leaving <= {m.vmid for m in plan.migrations if m.reason.value == "maintenance"}
    assert not any(m.target in drained for m in plan.migrations)


def test_cap_on_migrations_is_respected_and_said() -> None:
    plan = plan_balance(snapshot("all-on-one"), Policy(max_migrations=3))
    assert len(plan.migrations) == 3
    assert plan.notes == ["stopped at the cap of 3 migrations per plan"]


def test_cpu_mode_compares_cores_with_cores() -> None:
    snap = snapshot("all-on-one")
    plan = plan_balance(snap, Policy(method="cpu"))
    node = next(n for n in snap.nodes if n.name == "pve1")
    # the node reports a fraction of its cores: usage in percent is that fraction, not a sum of guest fractions
    assert plan.before.nodes["pve1"].percent == pytest.approx(100 * node.cpu, abs=0.01)
