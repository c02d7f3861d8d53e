"""The simulator's fault injection, locks and record, driven over HTTPS through the real client.

A fault-injection suite checks a migration pipeline against the simulator's own record, so these
tests pin that the faults look as they would from a real PVE (or the proxy in front of it), and
that the record says exactly what happened.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

from pvebalance.shared.proxmox import ProxmoxClient, ProxmoxError
from pvebalance.simulator.server import Simulator
from tests.helpers import SimFactory, api_settings


def raw(sim: Simulator, method: str, path: str, **kw: Any) -> requests.Response:
    """One HTTPS request with the simulator's API token, answer unparsed."""
    ident, secret = next(iter(sim.tokens.items()))
    return requests.request(method, f"https://127.0.0.1:{sim.port}{path}", verify=str(sim.cafile), timeout=5,
                            headers={"Authorization": f"PVEAPIToken={ident}={secret}"}, **kw)


def control(sim: Simulator, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    resp = requests.request(method, f"https://127.0.0.1:{sim.port}/_sim/{path}", json=body or {},
                            verify=str(sim.cafile), timeout=5)
    resp.raise_for_status()
    return resp.json()["data"]


def wait_task(client: ProxmoxClient, upid: str, timeout: float = 10) -> dict[str, Any]:
    node = upid.split(":")[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status: dict[str, Any] = client.get(f"/nodes/{node}/tasks/{upid}/status")
        if status["status"] == "stopped":
            return status
        time.sleep(0.02)
    raise AssertionError("task did not end")


def wait_for(check: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# --- locks -------------------------------------------------------------------------------------


def test_second_migrate_of_a_migrating_container_gets_a_task_that_fails_ct_is_locked(
        start_simulator: SimFactory) -> None:
    sim = start_simulator("homelab", time_scale=0.5)  # CT 109 takes 1 s
    client = ProxmoxClient(api_settings(sim))
    first = client.post("/nodes/pve1/lxc/109/migrate", target="pve3", restart=True)
    wait_for(lambda: client.get("/nodes/pve1/lxc/109/config").get("lock") == "migrate")
    second = client.post("/nodes/pve1/lxc/109/migrate", target="pve2", restart=True)  # no synchronous check
    assert ":vzmigrate:109:" in second
    assert wait_task(client, second)["exitstatus"] == "CT is locked (migrate)"
    log = client.get(f"/nodes/pve1/tasks/{second}/log")
    assert log[-1]["t"] == "TASK ERROR: CT is locked (migrate)"
    assert wait_task(client, first)["exitstatus"] == "OK"
    assert sim.cluster.guests[109].node == "pve3" and sim.cluster.guests[109].lock is None
    stats = control(sim, "GET", "stats")
    assert [(m["upid"], m["ok"]) for m in stats["migrations"]] == [(second, False), (first, True)]
    assert stats["max_concurrent"] == 1, "the refused task never ran as a migration"


def test_locked_container_task_fails_with_its_lock_and_keeps_it(start_simulator: SimFactory) -> None:
    sim = start_simulator("homelab")
    client = ProxmoxClient(api_settings(sim))
    control(sim, "POST", "guests/109/lock", {"lock": "backup"})
    upid = client.post("/nodes/pve1/lxc/109/migrate", target="pve3", restart=True)
    assert wait_task(client, upid)["exitstatus"] == "CT is locked (backup)"
    assert client.get("/nodes/pve1/lxc/109/config")["lock"] == "backup"


def test_second_migrate_of_a_migrating_vm_is_refused_with_500_and_no_task(start_simulator: SimFactory) -> None:
    sim = start_simulator(time_scale=0.1)
    client = ProxmoxClient(api_settings(sim))
    client.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True)
    with pytest.raises(ProxmoxError) as exc:
        client.post("/nodes/pve1/qemu/118/migrate", target="pve3", online=True)
    assert exc.value.status == 500 and "VM is locked (migrate)" in exc.value.message
    tasks = client.get("/nodes/pve1/tasks", vmid=118, source="all")
    assert [t["type"] for t in tasks] == ["qmigrate"]


# --- fault kinds ---------------------------------------------------------------------------------


def test_malformed_fault_answers_200_with_a_non_json_body_count_times(start_simulator: SimFactory) -> None:
    sim = start_simulator()
    control(sim, "POST", "faults", {"kind": "malformed", "method": "GET", "path": "^/version$",
                                    "body": "<html>proxy error</html>", "count": 1})
    resp = raw(sim, "GET", "/api2/json/version")
    assert (resp.status_code, resp.content) == (200, b"<html>proxy error</html>")
    assert raw(sim, "GET", "/api2/json/version").json()["data"]["version"], "count 1: the next answer is PVE's"


def test_truncated_fault_carries_out_the_post_and_cuts_its_answer(start_simulator: SimFactory) -> None:
    sim = start_simulator()
    sim.faults.add({"kind": "malformed", "method": "POST", "path": "/migrate$", "truncate": True})
    resp = raw(sim, "POST", "/api2/json/nodes/pve1/qemu/118/migrate", data={"target": "pve2", "online": 1})
    assert resp.status_code == 200 and resp.content.startswith(b'{"data": "UPID:pve1:')
    with pytest.raises(json.JSONDecodeError):
        resp.json()
    assert sim.cluster.guests[118].lock == "migrate", "the migration started although the answer broke"


def test_http_401_fault_looks_like_pveproxy_auth_failure(start_simulator: SimFactory) -> None:
    sim = start_simulator()
    sim.faults.add({"kind": "http", "path": "^/cluster/resources$", "status": 401})
    resp = raw(sim, "GET", "/api2/json/cluster/resources")
    assert (resp.status_code, resp.reason, resp.content) == (401, "Authentication failed!", b"")


def test_http_503_fault_has_pve_json_error_body(start_simulator: SimFactory) -> None:
    sim = start_simulator()
    sim.faults.add({"kind": "http", "path": "^/version$", "status": 503, "message": "Service Unavailable"})
    resp = raw(sim, "GET", "/api2/json/version")
    assert (resp.status_code, resp.reason) == (503, "Service Unavailable")
    assert resp.json() == {"data": None, "message": "Service Unavailable\n"}


def test_fault_with_for_seconds_answers_until_its_time_is_up(start_simulator: SimFactory) -> None:
    sim = start_simulator()
    client = ProxmoxClient(api_settings(sim))
    control(sim, "POST", "faults", {"kind": "http", "status": 503, "for_seconds": 0.3, "count": None})
    for _ in range(3):
        with pytest.raises(ProxmoxError) as exc:
            client.get("/version")
        assert exc.value.status == 503
    time.sleep(0.3)
    assert client.get("/version")["version"]
    assert control(sim, "GET", "faults") == []


def test_delay_after_carries_out_the_post_although_the_client_times_out(start_simulator: SimFactory) -> None:
    sim = start_simulator(time_scale=0.05)
    client = ProxmoxClient(api_settings(sim, timeout=0.3))
    sim.faults.add({"kind": "delay", "method": "POST", "path": "/migrate$", "seconds": 1.0, "when": "after"})
    with pytest.raises(ProxmoxError) as exc:
        client.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True)
    assert exc.value.status is None, "no answer reached the client"
    tasks = client.get("/nodes/pve1/tasks", vmid=118, source="all", typefilter="qmigrate")
    assert len(tasks) == 1 and tasks[0]["id"] == "118"
    wait_for(lambda: sim.cluster.stats.migrate_requests)  # recorded once the request is carried out
    (post,) = sim.cluster.stats.migrate_requests
    assert (post["upid"], post["status"], post["fault"]) == (tasks[0]["upid"], 200, "delay-after")


# --- control endpoints and the record ----------------------------------------------------------


def test_guest_deleted_by_hand_is_gone_and_its_migration_task_ends_in_error(start_simulator: SimFactory) -> None:
    sim = start_simulator(time_scale=0.5)  # VM 118 takes ~5 s
    client = ProxmoxClient(api_settings(sim))
    upid = client.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True)
    answer = control(sim, "POST", "guests/118/delete")
    # destroyed with --purge: its disk (ceph-vm, 32G) is freed too
    assert answer == {"vmid": 118, "deleted": 1, "aborted_tasks": [upid], "freed_bytes": 32 * 2**30}
    assert 118 not in [r["vmid"] for r in client.get("/cluster/resources", type="vm")]
    with pytest.raises(ProxmoxError, match="does not exist"):
        client.get("/nodes/pve1/qemu/118/config")
    status = client.get(f"/nodes/pve1/tasks/{upid}/status")
    assert status["status"] == "stopped"
    assert status["exitstatus"] == "Configuration file 'nodes/pve1/qemu-server/118.conf' does not exist"
    assert sim.cluster.stats.running == []


def test_every_migrate_post_is_recorded_with_its_answer(start_simulator: SimFactory) -> None:
    sim = start_simulator(time_scale=0.1)
    client = ProxmoxClient(api_settings(sim))
    upid = client.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True)
    with pytest.raises(ProxmoxError):
        client.post("/nodes/pve1/qemu/118/migrate", target="pve3", online=True)  # locked
    sim.faults.add({"kind": "http", "method": "POST", "status": 503, "message": "busy"})
    with pytest.raises(ProxmoxError):
        client.post("/nodes/pve1/qemu/100/migrate", target="pve3", online=True)
    posts = control(sim, "GET", "stats")["migrate_requests"]
    keys = ("vmid", "type", "source", "target", "user", "status", "upid", "error", "fault")
    assert [tuple(p[k] for k in keys) for p in posts] == [
        (118, "qemu", "pve1", "pve2", "root@pam!pvebalance", 200, upid, None, None),
        (118, "qemu", "pve1", "pve3", "root@pam!pvebalance", 500, None, "VM is locked (migrate)", None),
        (100, "qemu", "pve1", "pve3", "root@pam!pvebalance", 503, None, "busy", "http"),
    ]
    assert all(isinstance(p["time"], float) for p in posts)
    assert control(sim, "GET", "stats")["migrate_posts"] == {"118": 1}, "only the POST that got a task"


def test_stats_reset_while_a_migration_runs_still_records_its_end(start_simulator: SimFactory) -> None:
    sim = start_simulator(time_scale=0.1)
    client = ProxmoxClient(api_settings(sim))
    upid = client.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True)
    control(sim, "DELETE", "stats")
    assert wait_task(client, upid)["exitstatus"] == "OK"
    stats = control(sim, "GET", "stats")
    assert [m["upid"] for m in stats["migrations"]] == [upid]
    assert stats["running"] == [] and stats["max_concurrent"] == 1
