"""The simulator behaves like a busy PVE 9 cluster: memory on both nodes during a live migration,
lagging node figures, memhost, workers and latency, HA affinity on hamigrate, WARNINGS, manager_status."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from pvebalance.shared.proxmox import ProxmoxClient, ProxmoxError
from tests.helpers import SimFactory, api_settings
from tests.unit.test_simulator import wait_task


def node_mem(client: ProxmoxClient) -> dict[str, int]:
    return {r["node"]: r["mem"] for r in client.get("/cluster/resources", type="node")}


def test_a_live_migration_holds_memory_on_both_nodes_until_it_ends(start_simulator: SimFactory) -> None:
    sim = start_simulator(time_scale=0.15, figure_lag=0, host_variation=0, switchover_pause=2.0)
    client = ProxmoxClient(api_settings(sim))
    before = node_mem(client)
    memhost = sim.cluster.guests[118].memhost
    upid = client.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True)
    during = node_mem(client)
    assert during["pve2"] == before["pve2"] + memhost, "the target holds the guest from the start"
    assert during["pve1"] == before["pve1"], "the source holds it until the end"
    assert sim.cluster.stats.as_json()["peak_mem_ratio"]["pve2"] == pytest.approx(
        during["pve2"] / sim.cluster.nodes["pve2"].entry["maxmem"])
    states, source_mem = set(), set()
    while True:
        try:  # read first; they count if the task still runs afterwards
            state, mem = client.get("/nodes/pve1/qemu/118/status/current")["qmpstatus"], node_mem(client)["pve1"]
        except ProxmoxError:  # it ended in between: the guest is gone from pve1
            break
        if client.get(f"/nodes/pve1/tasks/{upid}/status")["status"] != "running":
            break
        states.add(state)
        source_mem.add(mem)
        time.sleep(0.02)
    assert states == {"running", "paused"}, "paused briefly at the switch-over"
    assert source_mem == {before["pve1"]}, "the source holds the guest's memory to the end"
    after = node_mem(client)
    assert (after["pve1"], after["pve2"]) == (before["pve1"] - memhost, before["pve2"] + memhost)
    log = [line["t"] for line in client.get(f"/nodes/pve1/tasks/{upid}/log")]
    assert any("starting VM 118 on remote node 'pve2'" in t for t in log) and log[-1] == "TASK OK"


def test_a_failed_live_migration_frees_the_target(start_simulator: SimFactory) -> None:
    sim = start_simulator(time_scale=0.05, figure_lag=0, host_variation=0)
    client = ProxmoxClient(api_settings(sim))
    before = node_mem(client)
    sim.faults.add({"kind": "task_error", "vmid": 118, "message": "migration aborted"})
    wait_task(client, client.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True))
    assert node_mem(client) == before


def test_node_figures_lag_behind_the_guests(start_simulator: SimFactory) -> None:
    sim = start_simulator(time_scale=0.1, figure_lag=10, host_variation=0, live_memory=False)  # 1 s
    client = ProxmoxClient(api_settings(sim))
    before = node_mem(client)
    wait_task(client, client.post("/nodes/pve1/qemu/100/migrate", target="pve2", online=True))
    assert next(r["node"] for r in client.get("/cluster/resources", type="vm") if r["vmid"] == 100) == "pve2"
    assert node_mem(client) == before, "the guest moved at once, the node figures not yet"
    assert client.get("/nodes/pve2/status")["memory"]["used"] == before["pve2"]
    time.sleep(1.1)
    memhost = sim.cluster.guests[100].memhost
    assert node_mem(client) == {**before, "pve1": before["pve1"] - memhost, "pve2": before["pve2"] + memhost}


def test_the_hosts_own_memory_use_varies_within_its_bounds(start_simulator: SimFactory) -> None:
    sim = start_simulator(time_scale=0.01, figure_lag=0, host_variation=0.2)  # a 1.2 s wave
    client = ProxmoxClient(api_settings(sim))
    base = sim.cluster.nodes["pve2"].mem_overhead
    seen = set()
    for _ in range(12):
        seen.add(node_mem(client)["pve2"])
        time.sleep(0.05)
    assert len(seen) > 1
    assert all(0.8 * base - 1 <= mem <= 1.2 * base + 1 for mem in seen), "pve2 runs no guests"


def test_memhost_is_on_running_vms_only(start_simulator: SimFactory) -> None:
    sim = start_simulator("homelab")
    entries = {r["vmid"]: r for r in ProxmoxClient(api_settings(sim)).get("/cluster/resources", type="vm")}
    running_vms = [e for e in entries.values() if e["type"] == "qemu" and e["status"] == "running"]
    assert running_vms and all(e["memhost"] > e["mem"] for e in running_vms)
    assert entries[122]["status"] == "stopped" and entries[122]["memhost"] == 0
    assert all("memhost" not in e for e in entries.values() if e["type"] == "lxc")


def test_a_stopped_vm_migrated_online_ends_with_a_warning(start_simulator: SimFactory) -> None:
    sim = start_simulator("homelab")
    client = ProxmoxClient(api_settings(sim))
    upid = client.post("/nodes/pve1/qemu/122/migrate", target="pve2", online=True)
    assert wait_task(client, upid)["exitstatus"] == "WARNINGS: 1"
    log = [line["t"] for line in client.get(f"/nodes/pve1/tasks/{upid}/log")]
    assert any("VM isn't running. Doing offline migration instead." in t for t in log)
    assert log[-1] == "TASK WARNINGS: 1"
    assert sim.cluster.guests[122].node == "pve2"
    (entry,) = client.get("/nodes/pve1/tasks", vmid=122, errors=1)
    assert entry["status"] == "WARNINGS: 1", "a warning is listed with errors=1, as PVE does"


def wait_for(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_ha_migration_onto_a_negative_affinity_partner_ends_failed_with_pves_text(
        start_simulator: SimFactory) -> None:
    sim = start_simulator("groups", time_scale=0.05)  # rule lb-apart: vm:123 and vm:124 negative
    client = ProxmoxClient(api_settings(sim))
    sim.cluster.move_guest(sim.cluster.guests[124], "pve2")
    check = client.get("/nodes/pve1/qemu/123/migrate", target="pve2")
    assert "pve2" not in check["allowed_nodes"]
    assert check["not_allowed_nodes"]["pve2"]["blocking-ha-resources"] == [
        {"sid": "vm:124", "cause": "resource-affinity"}]
    upid = client.post("/nodes/pve1/qemu/123/migrate", target="pve2", online=True)
    assert ":hamigrate:123:" in upid
    status = wait_task(client, upid)
    assert status["exitstatus"] == "command 'ha-manager migrate vm:123 pve2' failed: exit code 255"
    log = [line["t"] for line in client.get(f"/nodes/pve1/tasks/{upid}/log")]
    assert any(t.endswith("- resource 'vm:124' on target node 'pve2' in negative affinity with resource 'vm:123'")
               for t in log)
    assert log[-1] == "TASK ERROR: command 'ha-manager migrate vm:123 pve2' failed: exit code 255"
    time.sleep(0.1)
    assert sim.cluster.guests[123].node == "pve1" and sim.cluster.stats.migrations == []


def test_ha_migration_moves_positive_affinity_partners_along(start_simulator: SimFactory) -> None:
    sim = start_simulator("groups", time_scale=0.05)
    c = sim.cluster
    c.ha_resources.append({"sid": "vm:100", "type": "vm", "state": "started"})
    c.guests[100].entry["hastate"] = "started"
    c.ha_rules.append({"rule": "web-with-lb", "type": "resource-affinity", "resources": "vm:100,vm:123",
                       "affinity": "positive", "disable": 0})
    client = ProxmoxClient(api_settings(sim))
    assert client.get("/nodes/pve1/qemu/123/migrate", target="pve5")["dependent-ha-resources"] == ["vm:100"]
    upid = client.post("/nodes/pve1/qemu/123/migrate", target="pve5", online=True)
    assert wait_task(client, upid)["exitstatus"] == "OK"
    wait_for(lambda: c.guests[123].node == c.guests[100].node == "pve5" and not c.stats.running)
    moved = {(m["vmid"], m["user"], m["target"], m["ok"]) for m in c.stats.migrations}
    assert moved == {(123, "root@pam", "pve5", True), (100, "root@pam", "pve5", True)}
    assert [r["along_with"] for r in c.stats.ha_requests if r["vmid"] == 100] == ["vm:123"]


def test_manager_status_answers_in_pves_shape(start_simulator: SimFactory) -> None:
    sim = start_simulator("groups")
    client = ProxmoxClient(api_settings(sim))
    sim.cluster.nodes["pve3"].entry["hastate"] = "maintenance"
    status = client.get("/cluster/ha/status/manager_status")
    ms = status["manager_status"]
    assert ms["master_node"] == "pve1" and ms["node_status"]["pve3"] == "maintenance"
    assert ms["node_status"]["pve2"] == "online" and ms["node_request"] == {"pve3": {"maintenance": 1}}
    assert ms["service_status"]["vm:123"]["node"] == "pve1" and ms["service_status"]["vm:123"]["state"] == "started"
    assert status["quorum"]["quorate"] == "1" and status["lrm_status"]["pve3"]["mode"] == "maintenance"


def test_requests_beyond_a_nodes_workers_wait(start_simulator: SimFactory) -> None:
    sim = start_simulator(latency_ms=100, jitter=0, workers=1)
    settings = api_settings(sim)

    def read(path: str) -> None:
        ProxmoxClient(settings).get(path)

    def at_once(paths: list[str]) -> float:
        threads = [threading.Thread(target=read, args=(p,)) for p in paths]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.monotonic() - started

    sim.cluster.stats.requests_waited = 0
    # one node each: served side by side, nobody waits
    at_once([f"/nodes/{n}/status" for n in ("pve1", "pve2", "pve3", "pve4")])
    assert sim.cluster.stats.requests_waited == 0
    # four on one node with one worker: one after another, at 100 ms each
    assert at_once(["/nodes/pve2/status"] * 4) >= 0.4
    assert sim.cluster.stats.requests_waited >= 1
    assert ProxmoxClient(settings).get("/version")  # a cluster-wide call is served by the first node


@pytest.mark.parametrize("bad", [{"latency_ms": -1}, {"workers": -2}, {"jitter": 1.5}, {"host_variation": 1.0},
                                 {"figure_lag": -5}])
def test_impossible_realism_settings_are_refused_in_one_line(bad: dict[str, Any]) -> None:
    from pvebalance.simulator.realism import Realism

    with pytest.raises(ValueError, match=r"^simulator realism: "):
        Realism(**bad)
