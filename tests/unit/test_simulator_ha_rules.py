"""The simulator's HA stack keeps PVE 9.2's node-affinity rules as PVE does: `ha-manager migrate` onto
a node a rule keeps the guest off dies with PVE's words, the HA migrate API answers the blocker, the
CRM moves a guest back to its rule's top group (failback), and the engine's plan for the bundled
`ha-rules` cluster runs through it without a refusal or a move the CRM undoes."""

from __future__ import annotations

import time
from typing import Any

from pvebalance.engine import Policy, plan_balance
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.proxmox import ProxmoxClient
from tests.helpers import REPO, SimFactory, api_settings
from tests.unit.test_simulator import wait_task


def wait_for(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_hamigrate_onto_a_node_a_strict_negative_rule_forbids_dies_with_pves_words(
        start_simulator: SimFactory) -> None:
    sim = start_simulator("ha-rules", time_scale=0.05)
    client = ProxmoxClient(api_settings(sim))
    check = client.get("/nodes/pve1/qemu/201/migrate")
    assert check["not_allowed_nodes"]["pve3"]["blocking-ha-resources"] == [{"sid": "vm:201", "cause": "node-affinity"}]
    assert "pve5" in check["allowed_nodes"] and "pve3" not in check["allowed_nodes"]
    upid = client.post("/nodes/pve1/qemu/201/migrate", target="pve3", online=True)
    assert ":hamigrate:201:" in upid
    assert wait_task(client, upid)["exitstatus"] == "command 'ha-manager migrate vm:201 pve3' failed: exit code 255"
    log = [line["t"] for line in client.get(f"/nodes/pve1/tasks/{upid}/log")]
    assert [t[20:] for t in log[1:4]] == ["cannot migrate resource 'vm:201' to node 'pve3':", "",
                                          "- resource 'vm:201' on target node 'pve3'"]
    time.sleep(0.1)
    assert sim.cluster.guests[201].node == "pve1" and sim.cluster.stats.migrations == []
    assert [r["outcome"] for r in sim.cluster.stats.ha_requests] == ["refused: node affinity"]


def test_with_failback_on_a_node_below_the_top_group_is_refused_and_with_it_off_allowed(
        start_simulator: SimFactory) -> None:
    sim = start_simulator("ha-rules", time_scale=0.05)
    client = ProxmoxClient(api_settings(sim))
    blocked = {n for n, why in client.get("/nodes/pve1/qemu/206/migrate")["not_allowed_nodes"].items()
               if why.get("blocking-ha-resources")}
    assert blocked == {"pve2", "pve3", "pve4", "pve5"}, "db1: only pve1 (priority 2) while it is usable"
    blocked = {n for n, why in client.get("/nodes/pve1/qemu/204/migrate")["not_allowed_nodes"].items()
               if why.get("blocking-ha-resources")}
    assert blocked == {"pve5"}, "batch1: the non-strict negative rule's node, while others are usable"
    web = client.get("/nodes/pve3/qemu/208/migrate")
    assert web["allowed_nodes"] == ["pve2"], "web1 (failback 0): its strict rule's nodes"


def test_the_ha_migrate_api_answers_the_blocker_and_moves_nothing(start_simulator: SimFactory) -> None:
    sim = start_simulator("ha-rules", time_scale=0.05)
    client = ProxmoxClient(api_settings(sim))
    answer = client.post("/cluster/ha/resources/vm:201/migrate", node="pve4")
    assert answer == {"sid": "vm:201", "requested-node": "pve4",
                      "blocking-resources": [{"sid": "vm:201", "cause": "node-affinity"}]}
    assert client.post("/cluster/ha/resources/201/migrate", node="pve5") == {"sid": "vm:201", "requested-node": "pve5"}
    wait_for(lambda: sim.cluster.guests[201].node == "pve5" and not sim.cluster.stats.running)
    assert [(m["vmid"], m["target"]) for m in sim.cluster.stats.migrations] == [(201, "pve5")]


def test_ha_status_shows_failback_auto_rebalance_and_the_armed_state(start_simulator: SimFactory) -> None:
    sim = start_simulator("ha-rules")
    status = ProxmoxClient(api_settings(sim)).get("/cluster/ha/status/current")
    services = {e["sid"]: e for e in status if e["type"] == "service"}
    assert {sid: e["failback"] for sid, e in services.items()} == {
        f"vm:{v}": int(v != 208) for v in range(201, 209)}
    assert {e["auto-rebalance"] for e in services.values()} == {1}
    (fencing,) = [e for e in status if e["type"] == "fencing"]
    assert fencing["armed-state"] == "armed"


def test_the_crm_moves_a_guest_back_to_its_top_group_and_leaves_failback_off_alone(
        start_simulator: SimFactory) -> None:
    sim = start_simulator("ha-rules", time_scale=0.01)
    c = sim.cluster
    (upid,) = sim.tasks.crm.round()  # db2 waits on pve2 (priority 1) for pve1 (priority 2)
    assert ":qmigrate:207:root@pam:" in upid
    wait_for(lambda: c.guests[207].node == "pve1" and not c.stats.running)
    assert [(r["vmid"], r["target"], r["outcome"]) for r in c.stats.ha_requests] == [
        (207, "pve1", "moved by the CRM: failback")]
    assert sim.tasks.crm.round() == [], "web1 (failback 0) stays on its lower-priority pve3"


def test_the_crm_fails_back_a_round_after_the_top_node_leaves_maintenance(start_simulator: SimFactory) -> None:
    sim = start_simulator("ha-rules", time_scale=0.01)
    c = sim.cluster
    client = ProxmoxClient(api_settings(sim))
    c.guests[207].entry["node"] = "pve1"  # both databases on pve1, where they belong
    sim.control("POST", "/_sim/nodes/pve1/maintenance", {"enable": True})
    wait_for(lambda: client.get("/version") and c.guests[206].node == "pve2" == c.guests[207].node
             and not c.stats.running)
    c.reset_stats()
    sim.control("POST", "/_sim/nodes/pve1/maintenance", {"enable": False})
    wait_for(lambda: client.get("/version") and c.guests[206].node == "pve1" == c.guests[207].node
             and not c.stats.running)
    assert sorted((r["vmid"], r["outcome"]) for r in c.stats.ha_requests if r["vmid"] in (206, 207)) == [
        (206, "moved by the CRM: failback"), (207, "moved by the CRM: failback")]


def test_the_engines_plan_runs_through_the_simulated_ha_stack_with_no_refusal_and_no_failback(
        start_simulator: SimFactory) -> None:
    doc = load_dump(REPO / "pvebalance" / "scenarios" / "ha-rules.json")
    plan = plan_balance(snapshot_from_api(doc["api"]), Policy())
    assert any(m.vmid in range(201, 209) for m in plan.migrations)
    sim = start_simulator("ha-rules", time_scale=0.01)
    c = sim.cluster
    client = ProxmoxClient(api_settings(sim))
    for m in plan.migrations:
        kind = "qemu" if m.type.value == "qemu" else "lxc"
        mode = {"online": True} if kind == "qemu" else {"restart": True}
        upid = client.post(f"/nodes/{m.source}/{kind}/{m.vmid}/migrate", target=m.target, **mode)
        assert wait_task(client, upid)["exitstatus"] == "OK", (m.vmid, m.target)
        wait_for(lambda m=m: c.guests[m.vmid].node == m.target and not c.stats.running)
    assert [r for r in c.stats.ha_requests if r["outcome"] != "migrating"] == []
    assert sim.tasks.crm.round() == [], "the CRM finds every HA guest where its rule wants it"
    assert {v: g.node for v, g in c.guests.items()} == {
        **{g["vmid"]: g["node"] for g in doc["api"]["/cluster/resources"] if g.get("type") in ("qemu", "lxc")},
        **{m.vmid: m.target for m in plan.migrations}}
