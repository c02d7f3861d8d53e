"""The client side against an independent fake of the Proxmox VE API (fakepve, PyPI, test-only).

fakepve was written by others from PVE's schema; our simulator was written by us. Passing against
both says the client follows the API, not just our reading of it.
"""

from __future__ import annotations

from typing import Any

import pytest

from pvebalance.services.collector.collector import CollectError, Collector
from pvebalance.shared.config import ProxmoxApiSettings
from pvebalance.shared.proxmox import ProxmoxClient, ProxmoxError, upid_node


def settings(pve: Any, cafile: str, **auth: Any) -> ProxmoxApiSettings:
    host = pve.url.split("://", 1)[1]
    return ProxmoxApiSettings(hosts=[host], ca_file=cafile, **(auth or {"password": "secret"}))


@pytest.fixture
def cluster(fakepve: Any) -> Any:
    fakepve.add_node("pve2")
    fakepve.add_vm(100, "web", node="pve1", status="running", config={"memory": "2048", "cores": 2,
                                                                       "scsi0": "local-lvm:vm-100-disk-0,size=8G"})
    fakepve.add_vm(101, "db", node="pve2", status="running", config={"memory": "4096", "cores": 4})
    return fakepve


def test_ticket_login_and_cluster_resources_shape(cluster: Any, fakepve_cafile: str) -> None:
    snap = Collector(ProxmoxClient(settings(cluster, fakepve_cafile))).snapshot()
    assert {n.name for n in snap.nodes} == {"pve1", "pve2"}
    guests = {g.vmid: g for g in snap.guests}
    assert set(guests) == {100, 101}
    assert guests[100].node == "pve1" and guests[100].running
    assert guests[100].local_disk == 8 * 2**30, "local-lvm is not shared: the disk counts"


def test_api_token_auth(cluster: Any, fakepve_cafile: str) -> None:
    cluster.apitokens["root@pam!ci"] = "s3cret-token"
    client = ProxmoxClient(settings(cluster, fakepve_cafile, token_id="ci", token_secret="s3cret-token"))
    assert client.get("/version")["version"]
    wrong = ProxmoxClient(settings(cluster, fakepve_cafile, token_id="ci", token_secret="nope"))
    with pytest.raises(ProxmoxError, match=r"authentication failed for root@pam!ci"):
        wrong.get("/version")


def test_wrong_password_is_one_clear_error(cluster: Any, fakepve_cafile: str) -> None:
    client = ProxmoxClient(settings(cluster, fakepve_cafile, password="wrong"))
    with pytest.raises(ProxmoxError, match=r"authentication failed for root@pam at 127\.0\.0\.1"):
        client.get("/version")


def test_migration_task_status_is_followed_to_its_end(cluster: Any, fakepve_cafile: str) -> None:
    client = ProxmoxClient(settings(cluster, fakepve_cafile))
    upid = client.post("/nodes/pve1/qemu/100/migrate", target="pve2", online=True)
    assert upid_node(upid) == "pve1"
    status: dict[str, Any] = {}
    for _ in range(100):
        status = client.get(f"/nodes/pve1/tasks/{upid}/status")
        if status["status"] == "stopped":
            break
    assert status["status"] == "stopped" and status["exitstatus"] == "OK"


def test_error_answers_become_proxmox_errors(cluster: Any, fakepve_cafile: str) -> None:
    cluster.fail("GET", "/cluster/resources", 500, "boom")
    with pytest.raises(CollectError, match="boom"):
        Collector(ProxmoxClient(settings(cluster, fakepve_cafile)), retry_wait=0.01).snapshot()
    client = ProxmoxClient(settings(cluster, fakepve_cafile))
    with pytest.raises(ProxmoxError) as exc:
        client.get("/nodes/pve1/qemu/999/config")
    assert exc.value.status == 500 and not exc.value.transient
