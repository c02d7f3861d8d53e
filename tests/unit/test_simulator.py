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
    sim = start_simulator(time_scale=0.05)
    client = ProxmoxClient(api_settings(sim))
    before = {r["node"]: r["mem"] for r in client.get("/cluster/resources", type="node")}
    upid = client.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True)
    m = UPID_RE.match(upid)
    assert m and m["type"] == "qmigrate" and m["id"] == "118" and m["user"] == "root@pam!pvebalance"
    assert client.get("/nodes/pve1/qemu/118/config")["lock"] == "migrate"
    with pytest.raises(ProxmoxError, match=r"VM is locked \(migrate\)"):
        client.post("/nodes/pve1/qemu/118/migrate", target="pve3", online=True)
    assert wait_task(client, upid)["exitstatus"] == "OK"
    assert vm_node(client, 118) == "pve2"
    after = {r["node"]: r["mem"] for r in client.get("/cluster/resources", type="node")}
    assert after["pve1"] < before["pve1"] and after["pve2"] > before["pve2"]
    assert after["pve1"] + after["pve2"] == before["pve1"] + before["pve2"]
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
    sim = start_simulator()
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
