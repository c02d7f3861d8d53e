"""The rules operators asked ProxLB for, kept by whole plans: vCPUs against cores (#340), `host` CPU
guests between equal CPU models, pins in any case, wildcard exclusions, PVE 9.2's per-resource HA
auto-rebalance flag, the adaptive cooldown and no return, read from the API answers and the job store."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from redis import Redis

from pvebalance.engine import Policy, plan_balance
from pvebalance.engine.exact import minimum_migrations
from pvebalance.engine.policy import PastMove
from pvebalance.engine.rules import build_constraints
from pvebalance.services.collector.collector import Collector
from pvebalance.services.planner.planner import Planner
from pvebalance.shared import keys
from pvebalance.shared.apidump import DumpError, load_dump, parse_cputype, snapshot_from_api
from pvebalance.shared.config import BalancingSettings, Settings
from pvebalance.shared.jobs import JobState, JobStatusEvent
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import ClusterSnapshot, Plan
from pvebalance.shared.proxmox import ProxmoxClient
from tests.helpers import REPO, SimFactory, api_settings


def scenario(name: str) -> ClusterSnapshot:
    return snapshot_from_api(load_dump(REPO / "pvebalance" / "scenarios" / f"{name}.json")["api"])


def changed(snap: ClusterSnapshot, vmids: set[int] | None = None, nodes: set[str] | None = None,
            guest: dict[str, Any] | None = None, node: dict[str, Any] | None = None) -> ClusterSnapshot:
    return snap.model_copy(update={
        "guests": [g.model_copy(update=guest or {}) if vmids and g.vmid in vmids else g for g in snap.guests],
        "nodes": [n.model_copy(update=node or {}) if nodes and n.name in nodes else n for n in snap.nodes]})


def ends(snap: ClusterSnapshot, plan: Plan) -> dict[int, str]:
    return {g.vmid: g.node for g in snap.guests} | {m.vmid: m.target for m in plan.migrations}


# --- what the snapshot carries -------------------------------------------------------------------

@pytest.mark.parametrize(("value", "cputype"), [
    ("host", "host"), ("cputype=host,flags=+aes", "host"), ("x86-64-v2-AES,flags=+pcid", "x86-64-v2-AES"),
    ("flags=+aes,cputype=kvm64", "kvm64"), ("", None), (None, None),
])
def test_the_cpu_type_is_read_from_a_vm_configs_cpu_property(value: str | None, cputype: str | None) -> None:
    assert parse_cputype(value) == cputype


def test_the_snapshot_carries_cpu_models_vcpus_cpu_types_and_the_ha_auto_rebalance_flags() -> None:
    snap = scenario("operator-rules")
    nodes = {n.name: n for n in snap.nodes}
    guests = {g.vmid: g for g in snap.guests}
    assert nodes["PVE-A"].cpu_model == "AMD EPYC 7302P 16-Core Processor"
    assert nodes["pve-small"].maxcpu == 8
    assert (guests[410].vcpus, guests[410].maxcpu) == (16, 16)  # cores 8 x sockets 2
    assert (guests[420].cputype, guests[421].cputype, guests[400].cputype) == ("host", "host", "x86-64-v2-AES")
    assert snap.ha_auto_rebalance and snap.ha_auto_rebalance_off == [431, 433]


@pytest.mark.parametrize(("config", "vcpus"), [
    ({"cores": 4, "sockets": 2}, 8), ({"cores": "6"}, 6), ({"sockets": 2}, 2), ({"cores": 4, "vcpus": 2}, 4),
    ({}, None),
])
def test_a_vms_vcpus_are_sockets_times_cores(config: dict[str, Any], vcpus: int | None) -> None:
    api = {"/cluster/resources": [{"type": "node", "node": "pve1", "status": "online", "cpu": 0.1, "maxcpu": 8,
                                   "mem": 1, "maxmem": 2**34},
                                  {"type": "qemu", "vmid": 100, "node": "pve1", "maxcpu": 3}],
           "/nodes/pve1/qemu/100/config": config}
    assert snapshot_from_api(api).guests[0].vcpus == vcpus


@pytest.mark.parametrize(("path", "answer", "message"), [
    ("/nodes/pve1/qemu/100/config", {"cores": "many"}, "/nodes/pve1/qemu/100/config: cores: not an integer ('many')"),
    ("/cluster/ha/resources", [{"sid": "vm:100", "auto-rebalance": "sometimes"}],
     "/cluster/ha/resources[0] (resource vm:100): auto-rebalance: not 0 or 1 ('sometimes')"),
    ("/nodes/pve1/status", {"cpuinfo": "fast"}, "/nodes/pve1/status: cpuinfo: not an object ('fast')"),
])
def test_a_malformed_answer_of_the_new_kinds_is_one_line_naming_it(path: str, answer: Any, message: str) -> None:
    api = {"/cluster/resources": [{"type": "node", "node": "pve1", "status": "online", "cpu": 0.1, "maxcpu": 8,
                                   "mem": 1, "maxmem": 2**34},
                                  {"type": "qemu", "vmid": 100, "node": "pve1", "maxcpu": 3}],
           path: answer}
    with pytest.raises(DumpError) as err:
        snapshot_from_api(api)
    assert str(err.value) == message


# --- the rules, kept by whole plans --------------------------------------------------------------

def test_a_vm_never_goes_to_a_node_with_fewer_cores_than_its_vcpus() -> None:
    snap = scenario("all-on-one")
    wide = {g.vmid for g in snap.guests if g.running}
    unruled = plan_balance(snap, Policy())
    assert {m.target for m in unruled.migrations} >= {"pve3", "pve4"}, "without the rule, they would go there"
    snap = changed(changed(snap, wide, guest={"vcpus": 16}), nodes={"pve3", "pve4"}, node={"maxcpu": 8})
    plan = plan_balance(snap, Policy(exact_seconds=0))
    assert plan.migrations and plan.violations == []
    assert {m.target for m in plan.migrations} == {"pve2"}
    exact = minimum_migrations(snap, Policy())
    assert set(exact.placement.values()) <= {"pve1", "pve2"}


def test_host_cpu_vms_move_only_between_nodes_of_their_cpu_model() -> None:
    snap = scenario("all-on-one")
    snap = changed(snap, {g.vmid for g in snap.guests}, guest={"cputype": "host"})
    snap = changed(changed(snap, nodes={"pve1", "pve3"}, node={"cpu_model": "EPYC 7302P"}), nodes={"pve2", "pve4"},
                   node={"cpu_model": "Xeon Gold 6338"})
    plan = plan_balance(snap, Policy(exact_seconds=0))
    assert plan.migrations and plan.violations == []
    assert {m.target for m in plan.migrations} == {"pve3"}


def test_host_cpu_vms_stay_on_a_node_whose_cpu_model_is_unknown() -> None:
    snap = scenario("all-on-one")
    snap = changed(snap, {g.vmid for g in snap.guests}, guest={"cputype": "host"})
    assert plan_balance(snap, Policy()).migrations == []


def test_pins_match_node_names_in_any_case() -> None:
    snap = scenario("operator-rules")  # 402 is on pve-b, tagged plb_pin_pve-a; the node is PVE-A
    plan = plan_balance(snap, Policy())
    pin_moves = [(m.vmid, m.source, m.target, m.detail) for m in plan.migrations if m.reason.value == "pin"]
    assert pin_moves == [  # 400 and 401 swap between two full nodes through pve-b (a parking move)
        (401, "PVE-D", "pve-b", "plb_pin tags: parked on pve-b to make room on PVE-D for 400"),
        (402, "pve-b", "PVE-A", "plb_pin tags: may run only on PVE-A"),
        (400, "Pve-C", "PVE-D", "plb_pin tags: may run only on PVE-D"),
        (401, "pve-b", "Pve-C", "leaves parking on pve-b for Pve-C")]
    assert [m.batch for m in plan.migrations if m.reason.value == "pin"] == [0, 0, 1, 2]
    assert ends(snap, plan)[403] == "pve-b", "plb_pin_pve-b holds already"


def test_guests_excluded_by_a_name_pattern_stay_put() -> None:
    snap = scenario("all-on-one")
    policy = Policy.from_settings(BalancingSettings(ignore_guests=["VM10*", 125]))
    assert policy.ignore_guests == frozenset({125})
    moved = {m.vmid for m in plan_balance(snap, policy).migrations}
    excluded = {g.vmid for g in snap.guests if g.name.startswith("vm10")} | {125}
    assert moved and not moved & excluded
    assert {m.vmid for m in plan_balance(snap, Policy()).migrations} & excluded, "they would move otherwise"


def test_with_pve_auto_rebalance_on_only_resources_flagged_1_are_left_to_it() -> None:
    snap = scenario("operator-rules")
    fixed = build_constraints(snap, Policy()).fixed
    assert {v: fixed.get(v) for v in (430, 431, 432, 433)} == {
        430: "Proxmox HA auto-rebalance manages it", 431: None, 432: "Proxmox HA auto-rebalance manages it", 433: None}
    plan = plan_balance(snap, Policy())
    assert {430, 432}.isdisjoint(m.vmid for m in plan.migrations)
    no_auto = snap.model_copy(update={"ha_auto_rebalance": False})
    assert build_constraints(no_auto, Policy()).fixed.get(430) is None, "with PVE's auto-rebalance off, ours too"


def test_operator_rules_scenario_keeps_every_rule() -> None:
    snap = scenario("operator-rules")
    plan = plan_balance(snap, Policy())
    where = ends(snap, plan)
    assert plan.violations == []
    assert plan.after.spread_pp <= 5
    assert where[410] != "pve-small"
    assert {where[420], where[421]} <= {"PVE-A", "pve-b"} and where[422] in {"Pve-C", "PVE-D"}
    # the pinned swap of 400 and 401 between two full nodes is made through a parking move on a third node
    assert (where[400], where[401], plan.unmet) == ("PVE-D", "Pve-C", [])
    assert [m.vmid for m in plan.migrations if "parked on" in m.detail] == [401]
    # the exact model's 6-move placements (three tried, each cut from the next solve) all need the swap
    # between two full nodes first: none has a safe order, so the plan keeps the parking move (7)
    assert plan.notes[0] == ("the exact solver found 3 placements with fewer migrations, but no safe order "
                             "for any")


def hours_ago(hours: float) -> float:
    return NOW - hours * 3600


NOW = 1_800_000_000.0


def test_no_plan_sends_a_guest_back_to_a_node_it_left_within_24_hours() -> None:
    snap = scenario("all-on-one")
    base = plan_balance(snap, Policy(exact_seconds=0))
    back = {m.vmid: m.target for m in base.migrations}
    # every guest the plan moves came from where it would go, 3 h ago (its cooldown is over), or by a detour
    history = {v: (PastMove(t, "pve1", hours_ago(3), 20),) for v, t in back.items()}
    detour = min(back)
    history[detour] = (PastMove(back[detour], "pve9", hours_ago(6), 20), PastMove("pve9", "pve1", hours_ago(5), 20))
    plan = plan_balance(snap, Policy(history=history, now=NOW, exact_seconds=0))
    assert plan.migrations and plan.violations == []
    assert all(m.target != back.get(m.vmid) for m in plan.migrations)
    drained = plan_balance(snap, Policy(history=history, now=NOW, maintenance_nodes=frozenset({"pve1"})))
    assert drained.unmet == [] and drained.violations == [], "leaving a drained node comes first"


def succeeded(store_redis: Redis, vmid: int, source: str, target: str, at: float, duration: float) -> None:
    event = JobStatusEvent(job_id=f"migrate-x-{vmid}-{at}", plan_id="x", vmid=vmid, source=source, target=target,
                           state=JobState.SUCCEEDED, at=datetime.fromtimestamp(at, UTC), duration_s=duration)
    store_redis.xadd(keys.EVENT_STREAM, {"event": event.model_dump_json()}, id=f"{int(at * 1000)}-0")


def test_the_planner_plans_with_the_guests_recent_moves_from_the_job_store(fake_redis: Redis) -> None:
    snap = scenario("all-on-one")
    base = plan_balance(snap, Policy())
    first, second = (m.vmid for m in base.migrations[:2])
    targets = {m.vmid: m.target for m in base.migrations}
    now = time.time()
    succeeded(fake_redis, first, "pve4", "pve3", now - 30 * 3600, 10)  # older than 24 h: not counted
    succeeded(fake_redis, first, "pve3", "pve2", now - 5 * 3600, 10)
    succeeded(fake_redis, second, targets[second], "pve1", now - 3 * 3600, 10)  # free, but not back there
    succeeded(fake_redis, first, "pve2", "pve1", now - 90 * 60, 10)  # twice in 24 h: waits 120 min
    settings = Settings(balancing={"enable": False})
    plan = Planner(fake_redis, settings).handle(snap.model_copy(update={"taken_at": datetime.now(UTC)}))
    assert plan is not None and plan.migrations
    assert first not in {m.vmid for m in plan.migrations}
    assert all(m.target != targets[second] for m in plan.migrations if m.vmid == second)
    recent = JobStore(fake_redis).finished_since(now - 24 * 3600)
    assert [(e.vmid, e.source) for e in recent] == [(first, "pve3"), (second, targets[second]), (first, "pve2")]
    fixed = build_constraints(snap, Policy.from_settings(settings.balancing, recent_moves=recent, now=now)).fixed
    assert fixed[first] == "moved 2 times in 24 h: waits 120 min after its last move (adaptive cooldown)"


def test_the_collector_reads_node_cpu_models_only_when_a_host_cpu_vm_needs_them(start_simulator: SimFactory,
                                                                                fake_redis: Redis) -> None:
    sim = start_simulator("operator-rules")
    snap = Collector(ProxmoxClient(api_settings(sim)), fake_redis).snapshot()
    assert {n.name: n.cpu_model for n in snap.nodes}["Pve-C"] == "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"
    assert {g.vmid: g.cputype for g in snap.guests}[421] == "host"
    plain = start_simulator("all-on-one")
    Collector(ProxmoxClient(api_settings(plain))).snapshot()
    assert not [r for r in plain.cluster.stats.requests if r.endswith("/status") and "/nodes/" in r]
