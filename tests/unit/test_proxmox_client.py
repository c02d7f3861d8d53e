"""The Proxmox client's failures, each of its own kind and worded for the operator: an expired ticket
is renewed, a garbled answer is not mistaken for data, a TLS failure says TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvebalance.shared.proxmox import AUTH, MALFORMED, TLS, ProxmoxClient, ProxmoxError
from pvebalance.simulator.certs import make_self_signed
from tests.helpers import SimFactory, api_settings


def password_client(sim) -> ProxmoxClient:  # type: ignore[no-untyped-def]
    user = next(iter(sim.users))
    return ProxmoxClient(api_settings(sim, token_id=None, token_secret=None, password=sim.users[user], user=user))


def test_an_expired_ticket_is_renewed_by_logging_in_again(start_simulator: SimFactory) -> None:
    sim = start_simulator()
    client = password_client(sim)
    assert client.get("/version")["version"].startswith("9.")
    sim.tickets.clear()  # every ticket expired (PVE: after 2 h)
    assert client.get("/version")["version"].startswith("9.")


def test_a_revoked_token_is_an_auth_error_not_a_transient_one(start_simulator: SimFactory) -> None:
    sim = start_simulator()
    client = ProxmoxClient(api_settings(sim))
    client.get("/version")
    sim.tokens.clear()
    with pytest.raises(ProxmoxError) as caught:
        client.get("/version")
    assert caught.value.kind == AUTH and not caught.value.transient
    assert caught.value.message.startswith("authentication failed for root@pam!pvebalance at 127.0.0.1")


@pytest.mark.parametrize("fault", [
    pytest.param({"kind": "malformed", "body": "<html>502 Bad Gateway</html>"}, id="html"),
    pytest.param({"kind": "malformed", "truncate": True}, id="truncated"),
])
def test_an_answer_that_is_not_pves_json_is_a_transient_malformed_error(start_simulator: SimFactory,
                                                                          fault: dict[str, object]) -> None:
    sim = start_simulator()
    client = ProxmoxClient(api_settings(sim))
    sim.faults.add({**fault, "method": "GET", "path": "^/cluster/resources$"})
    with pytest.raises(ProxmoxError) as caught:
        client.get("/cluster/resources")
    assert caught.value.kind == MALFORMED and caught.value.transient
    assert "is not Proxmox's JSON (GET /cluster/resources)" in caught.value.message
    assert isinstance(client.get("/cluster/resources"), list), "the next answer is read normally"


def test_a_tls_failure_says_tls_and_names_the_setting(start_simulator: SimFactory, tmp_path: Path) -> None:
    sim = start_simulator()
    other_ca, _ = make_self_signed(tmp_path / "other")
    client = ProxmoxClient(api_settings(sim, ca_file=other_ca))
    with pytest.raises(ProxmoxError) as caught:
        client.get("/version")
    assert caught.value.kind == TLS
    assert caught.value.message.startswith(
        f"TLS verification of 127.0.0.1:{sim.port} failed (check proxmox_api.ca_file or ssl_verification)")


@pytest.mark.parametrize(("no_proxy", "proxies"), [
    ("", {"https": "http://proxy.example:3128"}),
    ("127.0.0.1", {}),
])
def test_the_environment_proxies_and_ca_bundle_are_read_once_and_still_apply(
        start_simulator: SimFactory, monkeypatch: pytest.MonkeyPatch, no_proxy: str, proxies: dict[str, str]) -> None:
    sim = start_simulator()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/pve-ca.pem")
    client = ProxmoxClient(api_settings(sim, ca_file=None, ssl_verification=True))
    session = client._connect(f"127.0.0.1:{sim.port}").http
    assert session.trust_env is False  # requests no longer scans os.environ on every call
    assert session.proxies == proxies
    assert client._verify() == "/etc/pve-ca.pem"


@pytest.mark.parametrize(("method", "path", "params", "expected"), [
    pytest.param("GET", "/cluster/resources", {"type": "disk"},
                 "GET /cluster/resources on {host}: 400 Parameter verification failed. (type: value 'disk' does "
                 "not have a value in the enumeration 'vm, storage, node, sdn')", id="get-parameter"),
    pytest.param("POST", "/nodes/pve1/qemu/100/migrate", {"target": "pve2", "online": "yes"},
                 "POST /nodes/pve1/qemu/100/migrate on {host}: 400 Parameter verification failed. "
                 "(online: type check ('boolean') failed - got 'yes')", id="post-parameter"),
    pytest.param("GET", "/nodes/pve1/qemu/99999/config", {},
                 "GET /nodes/pve1/qemu/99999/config on {host}: 500 Configuration file "
                 "'nodes/pve1/qemu-server/99999.conf' does not exist", id="get-missing"),
])
def test_a_refusal_reads_the_same_for_a_get_and_a_post(start_simulator: SimFactory, method: str, path: str,
                                                      params: dict[str, object], expected: str) -> None:
    """GETs go through the session's pool, POSTs through proxmoxer: PVE's refusal is one line either way,
    with its per-parameter errors."""
    sim = start_simulator()
    client = ProxmoxClient(api_settings(sim))
    call = client.get if method == "GET" else client.post
    with pytest.raises(ProxmoxError) as caught:
        call(path, **params)
    assert caught.value.message == expected.format(host=f"127.0.0.1:{sim.port}")
    assert caught.value.kind == "refused" and not caught.value.transient


def test_a_get_sends_its_parameters_as_pve_reads_them(start_simulator: SimFactory) -> None:
    sim = start_simulator()
    client = ProxmoxClient(api_settings(sim))
    nodes = client.get("/cluster/resources", type="node")
    assert nodes and {r["type"] for r in nodes} == {"node"}
    assert len(client.get("/cluster/resources")) > len(nodes)
    assert client.get("/nodes/pve1/tasks", errors=True) == [], "a boolean goes out as PVE's 1, not 'True'"
