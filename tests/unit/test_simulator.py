"""The simulator, driven through the real proxmoxer client over HTTPS."""

from __future__ import annotations

import time

import pytest
import requests
from proxmoxer import ProxmoxAPI, ResourceException

from pvebalance.shared.proxmox import UPID_RE, ProxmoxClient, ProxmoxError
from tests.helpers import SimFactory, api_settings


def raw_api(sim, **kw):  # type: ignore[no-untyped-def]
    ident, secret = next(iter(sim.tokens.items()))
    user, token = ident.split("!")
    return ProxmoxAPI(f"127.0.0.1:{sim.port}", user=user, token_name=token, token_value=secret,
                      verify_ssl=str(sim.cafile), **kw)


def wait_task(client: ProxmoxClient, upid: str, timeout: float = 10) -> dict:
    node = upid.split(":")[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/nodes/{node}/tasks/{upid}/status")
        if status["status"] == "stopped":
            return status
        time.sleep(0.02)
    raise AssertionError("task did not end")


def vm_node(client: ProxmoxClient, vmid: int) -> str:
    return next(r["node"] for r in client.get("/cluster/resources", type="vm") if r["vmid"] == vmid)


def test_ticket_login_and_csrf_protected_post(start_simulator: SimFactory) -> None:
    sim = start_simulator()
    api = ProxmoxAPI(f"127.0.0.1:{sim.port}", user="root@pam", password=sim.users["root@pam"],
                     verify_ssl=str(sim.cafile))
    assert api.version.get()["version"].startswith("9.")
    upid = api.nodes("pve1").qemu(100).migrate.post(target="pve2", online=1)
    assert UPID_RE.match(upid)
    # the same cookie without the CSRF token is refused for writes
    ticket = next(iter(sim.tickets))
    resp = requests.post(f"https://127.0.0.1:{sim.port}/api2/json/nodes/pve1/qemu/101/migrate",
                         data={"target": "pve2", "online": 1}, cookies={"PVEAuthCookie": ticket},
                         verify=str(sim.cafile), timeout=5)
    assert resp.status_code == 401 and "csrf" in resp.reason


def test_bad_credentials_are_401_as_pve_answers(start_simulator: SimFactory) -> None:
    sim = start_simulator()
    resp = requests.get(f"https://127.0.0.1:{sim.port}/api2/json/version", verify=str(sim.cafile), timeout=5)
    assert (resp.status_code, resp.reason, resp.content) == (401, "No ticket", b"")
    resp = requests.post(f"https://127.0.0.1:{sim.port}/api2/json/access/ticket",
                         data={"username": "root@pam", "password": "wrong"}, verify=str(sim.cafile), timeout=5)
    assert resp.status_code == 401 and resp.json()["data"] is None
    with pytest.raises(ProxmoxError, match=r"authentication failed for root@pam!pvebalance at 127\.0\.0\.1"):
        ProxmoxClient(api_settings(sim, token_secret="wrong")).get("/version")


def test_python_true_is_refused_like_pve(start_simulator: SimFactory) -> None:
    sim = start_simulator()
    with pytest.raises(ResourceException) as exc:
        raw_api(sim).nodes("pve1").qemu(100).migrate.post(target="pve2", online=True)
    assert exc.value.status_code == 400
    assert exc.value.errors == {"online": "type check ('boolean') failed - got 'True'"}


def test_unknown_path_is_501(start_simulator: SimFactory) -> None:
    sim = start_simulator()
    with pytest.raises(ResourceException) as exc:
        raw_api(sim).nodes("pve1").frobnicate.get()
    assert exc.value.status_code == 501
    assert "not implemented" in exc.value.content


def test_migration_is_a_task_that_locks_then_moves_the_guest(start_simulator: SimFactory) -> None:
    sim = start_simulator(time_scale=0.05, figure_lag=0, host_variation=0)  # figures exact and at once
    client = ProxmoxClient(api_settings(sim))
    before = {r["node"]: r["mem"] for r in client.get("/cluster/resources", type="node")}
    memhost = next(r["memhost"] for r in client.get("/cluster/resources", type="vm") if r["vmid"] == 118)
    upid = client.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True)
    m = UPID_RE.match(upid)
    assert m and m["type"] == "qmigrate" and m["id"] == "118" and m["user"] == "root@pam!pvebalance"
    assert client.get("/nodes/pve1/qemu/118/config")["lock"] == "migrate"
    with pytest.raises(ProxmoxError, match=r"VM is locked \(migrate\)"):
        client.post("/nodes/pve1/qemu/118/migrate", target="pve3", online=True)
    assert wait_task(client, upid)["exitstatus"] == "OK"
    assert vm_node(client, 118) == "pve2"
    after = {r["node"]: r["mem"] for r in client.get("/cluster/resources", type="node")}
    assert memhost > sim.cluster.guests[118].entry["mem"], "the host sees the guest's memory and QEMU's own"
    assert (after["pve1"], after["pve2"]) == (before["pve1"] - memhost, before["pve2"] + memhost)
    log = client.get(f"/nodes/pve1/tasks/{upid}/log")
    assert log[-1]["t"] == "TASK OK"
    with pytest.raises(ProxmoxError, match="does not exist"):
        client.get("/nodes/pve1/qemu/118/config")


def test_migration_duration_grows_with_memory(start_simulator: SimFactory) -> None:
    from pvebalance.simulator.tasks import migration_seconds

    sim = start_simulator()
    small, big = sim.cluster.guests[100], sim.cluster.guests[118]
    assert big.entry["mem"] > small.entry["mem"]
    assert migration_seconds(big, 0, True) > migration_seconds(small, 0, True)
    assert migration_seconds(small, 10 * 2**30, True) > migration_seconds(small, 0, True)


def test_faults_task_error_http_500_and_delay(start_simulator: SimFactory) -> None:
    sim = start_simulator()
    client = ProxmoxClient(api_settings(sim))
    requests.post(f"https://127.0.0.1:{sim.port}/_sim/faults", verify=str(sim.cafile), timeout=5,
                  json={"kind": "task_error", "vmid": 118, "message": "migration aborted"})
    upid = client.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True)
    status = wait_task(client, upid)
    assert status["exitstatus"] == "migration aborted"
    assert vm_node(client, 118) == "pve1"
    sim.faults.add({"kind": "http", "method": "GET", "path": "^/version$", "status": 500,
                    "message": "simulated outage", "count": 1})
    with pytest.raises(ProxmoxError) as exc:
        client.get("/version")
    assert exc.value.status == 500 and "simulated outage" in exc.value.message
    assert client.get("/version")["version"]
    sim.faults.add({"kind": "delay", "path": "^/version$", "seconds": 0.3, "count": 1})
    started = time.monotonic()
    client.get("/version")
    assert time.monotonic() - started >= 0.3


def test_container_needs_restart_mode(start_simulator: SimFactory) -> None:
    sim = start_simulator("homelab")
    client = ProxmoxClient(api_settings(sim))
    ct = next(g for g in sim.cluster.guests.values() if g.type == "lxc" and g.running)
    target = next(n for n in sim.cluster.nodes if n != ct.node)
    with pytest.raises(ProxmoxError, match="without --online or --restart"):
        client.post(f"/nodes/{ct.node}/lxc/{ct.vmid}/migrate", target=target)
    upid = client.post(f"/nodes/{ct.node}/lxc/{ct.vmid}/migrate", target=target, restart=True)
    assert ":vzmigrate:" in upid
    assert wait_task(client, upid)["exitstatus"] == "OK"
    lxc_list = client.get(f"/nodes/{target}/lxc")
    assert str(ct.vmid) in [e["vmid"] for e in lxc_list]  # PVE quirk: vmid is a string here


def test_rrd_series_average_is_the_current_usage(start_simulator: SimFactory) -> None:
    sim = start_simulator(host_variation=0)  # the host's own use holds still between the two reads
    client = ProxmoxClient(api_settings(sim))
    node = next(r for r in client.get("/cluster/resources", type="node") if r["node"] == "pve1")
    rows = client.get("/nodes/pve1/rrddata", timeframe="hour", cf="AVERAGE")
    assert len(rows) == 70
    assert sum(r["memused"] for r in rows) / len(rows) == pytest.approx(node["mem"], rel=1e-6)
    vm_rows = client.get("/nodes/pve1/qemu/100/rrddata", timeframe="hour", cf="AVERAGE")
    vm = next(r for r in client.get("/cluster/resources", type="vm") if r["vmid"] == 100)
    assert sum(r["cpu"] for r in vm_rows) / 70 == pytest.approx(vm["cpu"], rel=1e-6)


def test_host_failover_skips_a_dead_host(start_simulator: SimFactory) -> None:
    sim = start_simulator()
    client = ProxmoxClient(api_settings(sim, hosts=["127.0.0.1:1", f"127.0.0.1:{sim.port}"], timeout=2))
    assert client.get("/version")["version"]
    assert client.host == f"127.0.0.1:{sim.port}"


def test_task_list_shows_a_running_then_finished_migration_as_pve_does(start_simulator: SimFactory) -> None:
    sim = start_simulator(time_scale=0.05)
    client = ProxmoxClient(api_settings(sim))
    upid = client.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True)
    running = client.get("/nodes/pve1/tasks", vmid=118, source="all", typefilter="qmigrate")
    assert [(t["upid"], t["status"]) for t in running] == [(upid, "RUNNING")]
    assert "endtime" not in running[0]
    assert client.get("/nodes/pve1/tasks", vmid=118) == [], "the default source=archive lists finished tasks"
    assert client.get("/nodes/pve1/tasks", vmid=118, source="all", errors=1)[0]["upid"] == upid, "running isn't OK"
    wait_task(client, upid)
    (done,) = client.get("/nodes/pve1/tasks", vmid=118, source="all", typefilter="qmigrate")
    assert (done["upid"], done["status"], done["id"], done["type"]) == (upid, "OK", "118", "qmigrate")
    assert done["endtime"] >= done["starttime"]
    assert client.get("/nodes/pve1/tasks", vmid=118, source="all", errors=1) == []
    assert client.get("/nodes/pve1/tasks", vmid=100, source="all") == []
    assert client.get("/nodes/pve1/tasks", vmid=118, typefilter="vzmigrate") == []
    resp = requests.get(f"https://127.0.0.1:{sim.port}/api2/json/nodes/pve1/tasks?vmid=118",
                        headers={"Authorization": "PVEAPIToken={}={}".format(*next(iter(sim.tokens.items())))},
                        verify=str(sim.cafile), timeout=5)
    assert resp.json()["total"] == 1


def test_token_task_shows_user_and_tokenid_apart_as_pve_does(start_simulator: SimFactory) -> None:
    sim = start_simulator()
    client = ProxmoxClient(api_settings(sim))
    upid = client.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True)
    assert upid.endswith(":root@pam!pvebalance:")
    status = client.get(f"/nodes/pve1/tasks/{upid}/status")
    assert (status["user"], status["tokenid"]) == ("root@pam", "pvebalance")
    (entry,) = client.get("/nodes/pve1/tasks", vmid=118, source="all")
    assert (entry["user"], entry["tokenid"]) == ("root@pam", "pvebalance")


def test_ha_migration_counts_once_and_both_its_tasks_are_listed_on_the_source(start_simulator: SimFactory) -> None:
    sim = start_simulator("groups", time_scale=0.05)
    client = ProxmoxClient(api_settings(sim))
    # Both requests go in under the cluster lock, as two API calls would reach it: the first's
    # `ha-manager migrate` cannot run (and lock the VM) before the second is queued behind it. Over
    # HTTP that ordering was a race a slow machine lost (the second POST found the VM locked).
    with sim.cluster.lock:
        vm = sim.cluster.guests[123]
        request = sim.tasks.start_migration(vm, {"target": "pve5", "online": True}, "root@pam")
        again = sim.tasks.start_migration(vm, {"target": "pve6", "online": True}, "root@pam")
    assert ":hamigrate:123:" in request and ":hamigrate:123:" in again
    deadline = time.monotonic() + 5
    while sim.cluster.guests[123].node != "pve5" or sim.cluster.stats.running:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    tasks = client.get("/nodes/pve1/tasks", vmid=123, source="all")
    assert sorted((t["type"], t["user"], t["status"]) for t in tasks) == [
        ("hamigrate", "root@pam", "OK"), ("hamigrate", "root@pam", "OK"), ("qmigrate", "root@pam", "OK")]
    stats = sim.cluster.stats
    assert [(m["type"], m["source"], m["target"], m["ok"]) for m in stats.migrations] == [
        ("qmigrate", "pve1", "pve5", True)]
    assert (stats.max_concurrent, dict(stats.max_per_source), dict(stats.max_per_target)) == (
        1, {"pve1": 1}, {"pve5": 1})
    outcomes = {r["request_upid"]: r["outcome"] for r in stats.ha_requests}
    assert outcomes[request] == "migrating" and outcomes[again].startswith("ignored")


def test_peak_mem_ratio_rises_when_guests_land_on_a_node(start_simulator: SimFactory) -> None:
    sim = start_simulator(figure_lag=0, host_variation=0)  # the answers show the figures the peak is of
    client = ProxmoxClient(api_settings(sim))

    def ratio(node: str) -> float:
        e = next(r for r in client.get("/cluster/resources", type="node") if r["node"] == node)
        return float(e["mem"]) / float(e["maxmem"])

    start = sim.cluster.stats.peak_mem_ratio["pve2"]
    assert start == pytest.approx(ratio("pve2"))
    for vmid in (118, 121):
        wait_task(client, client.post(f"/nodes/pve1/qemu/{vmid}/migrate", target="pve2", online=True))
    landed = ratio("pve2")
    assert landed > start and sim.cluster.stats.peak_mem_ratio["pve2"] == pytest.approx(landed)
    wait_task(client, client.post("/nodes/pve2/qemu/118/migrate", target="pve3", online=True))
    assert ratio("pve2") < landed and sim.cluster.stats.peak_mem_ratio["pve2"] == pytest.approx(landed)
    assert sim.cluster.stats.peak_mem_ratio["pve1"] == pytest.approx(ratio("pve1") + (
        sim.cluster.guests[118].memhost + sim.cluster.guests[121].memhost) / 274877906944)
