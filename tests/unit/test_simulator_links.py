"""The simulator's migration links (pvebalance/simulator/links.py): migrations share their source's and target's
links max-min fairly, so two out of one node take about twice as long as one; PVE's bwlimit caps one;
/_sim/stats records each link's busy time and data; a scenario may give a node its own link speed."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from pvebalance.shared.apidump import load_dump
from pvebalance.shared.proxmox import ProxmoxClient
from pvebalance.simulator.links import GIB, Links, bwlimit_kib, fair_rates, link_rate
from pvebalance.simulator.server import Simulator
from pvebalance.simulator.tasks import BASE_SECONDS
from tests.helpers import REPO, SimFactory, api_settings
from tests.unit.test_simulator import wait_task

QUIET = {"figure_lag": 0, "host_variation": 0, "latency_ms": 0, "workers": 0, "switchover_pause": 0}


def test_flows_share_each_link_fairly_and_leave_what_they_cannot_use() -> None:
    ten = link_rate(10)
    rates = fair_rates({"a": ("pve1", "pve2", None), "b": ("pve1", "pve3", None), "c": ("pve4", "pve3", None)},
                       lambda side: ten)
    assert rates == {"a": ten / 2, "b": ten / 2, "c": ten / 2}  # pve1 sends two; pve3 receives two
    # a flow capped (bwlimit) below its share leaves the rest of pve1's link to the other
    capped = fair_rates({"a": ("pve1", "pve2", ten / 5), "b": ("pve1", "pve3", None)}, lambda side: ten)
    assert capped == {"a": ten / 5, "b": pytest.approx(ten * 4 / 5)}
    # full duplex: what pve1 receives does not slow what it sends
    assert fair_rates({"a": ("pve1", "pve2", None), "b": ("pve2", "pve1", None)}, lambda side: ten) == \
        {"a": ten, "b": ten}
    # a slow target holds its flow down; the source's other flow takes the rest of the source's link
    slow = fair_rates({"a": ("pve1", "pve2", None), "b": ("pve1", "pve3", None)},
                      lambda side: link_rate(1) if side == ("pve2", "in") else ten)
    assert slow == {"a": link_rate(1), "b": pytest.approx(ten - link_rate(1))}


def test_two_copies_out_of_one_node_each_take_twice_as_long_until_one_ends() -> None:
    """Modelled time (a clock the test moves), no threads: 10 Gbit/s carries 1 GiB a second."""
    now = [0.0]
    links = Links(clock=lambda: now[0])
    links.start("a", "pve1", "pve2", 4 * GIB)
    links.start("b", "pve1", "pve3", 6 * GIB)
    now[0] = 8.0  # half a GiB a second each: a is through after 8 s, b has 2 GiB left
    links.cancel("a")  # (a's end, as the waiting thread would remove it)
    assert links.flows["b"].remaining == pytest.approx(2 * GIB)
    now[0] = 10.0  # alone, b takes the whole link: 2 GiB in 2 s
    record = links.as_json()
    assert links.flows["b"].remaining == pytest.approx(0, abs=1)
    assert record["pve1"] == {"gbit": 10.0, "busy_s": 10.0, "sent_gib": 10.0, "received_gib": 0.0}
    assert record["pve2"]["busy_s"] == 8.0 and record["pve3"]["received_gib"] == 6.0


def _duration(sim: Simulator, vmid: int) -> float:
    [m] = [m for m in sim.cluster.stats.migrations if m["vmid"] == vmid]
    assert m["ok"]
    return float(m["end"] - m["start"])


def test_two_migrations_out_of_one_node_take_about_twice_as_long_as_one(start_simulator: SimFactory) -> None:
    scale = 0.05
    sim = start_simulator(time_scale=scale, **QUIET)
    client = ProxmoxClient(api_settings(sim))
    mem = {v: sim.cluster.guests[v].entry["mem"] / GIB for v in (108, 118, 121)}
    wait_task(client, client.post("/nodes/pve1/qemu/108/migrate", target="pve2", online=True))
    # per GiB copied, after PVE's fixed part: alone, 1 s at 10 Gbit/s
    alone = (_duration(sim, 108) - BASE_SECONDS * scale) / mem[108] / scale
    assert alone == pytest.approx(1.0, rel=0.2)
    upids = [client.post("/nodes/pve1/qemu/121/migrate", target="pve2", online=True),
             client.post("/nodes/pve1/qemu/118/migrate", target="pve3", online=True)]
    for upid in upids:
        wait_task(client, upid)
    # 121 (7.42 GiB) and 118 (7.49 GiB) share pve1's link the whole time but for 118's last 0.07 GiB
    shared = [(_duration(sim, v) - BASE_SECONDS * scale) / mem[v] / scale for v in (121, 118)]
    assert all(1.7 <= s / alone <= 2.3 for s in shared), (alone, shared)
    links = sim.cluster.stats.as_json()["links"]
    assert links["pve1"]["sent_gib"] == pytest.approx(sum(mem.values()), abs=0.01)
    assert links["pve2"]["received_gib"] == pytest.approx(mem[108] + mem[121], abs=0.01)
    # pve1's link carried data for the copies' time, not for PVE's fixed part of each migration
    copying = sum(_duration(sim, v) for v in (108, 121)) - 2 * BASE_SECONDS * scale
    assert links["pve1"]["busy_s"] == pytest.approx(copying, rel=0.15)


def test_migrations_between_other_nodes_do_not_slow_each_other(start_simulator: SimFactory) -> None:
    scale = 0.05
    sim = start_simulator(time_scale=scale, **QUIET)
    client = ProxmoxClient(api_settings(sim))
    sim.control("POST", "/_sim/guests/121/move", {"target": "pve3"})  # 121 now leaves pve3, 118 leaves pve1
    upids = [client.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True),
             client.post("/nodes/pve3/qemu/121/migrate", target="pve4", online=True)]
    for upid in upids:
        wait_task(client, upid)
    for vmid in (118, 121):
        per_gib = (_duration(sim, vmid) - BASE_SECONDS * scale) / (sim.cluster.guests[vmid].entry["mem"] / GIB) / scale
        assert per_gib == pytest.approx(1.0, rel=0.2)


def test_pve_bwlimit_caps_a_migration(start_simulator: SimFactory) -> None:
    assert bwlimit_kib({}, {}) is None
    assert bwlimit_kib({"bwlimit": "default=2048,migration=1024"}, {}) == 1024
    assert bwlimit_kib({"bwlimit": {"default": "4096"}}, {}) == 4096
    assert bwlimit_kib({"bwlimit": "migration=1024"}, {"bwlimit": "512"}) == 512  # the call overrides
    assert bwlimit_kib({"bwlimit": "migration=1024"}, {"bwlimit": 0}) is None  # 0: unlimited
    scale = 0.05
    sim = start_simulator(time_scale=scale, **QUIET)
    sim.cluster.options["bwlimit"] = f"migration={256 * 1024}"  # 256 MiB/s: a quarter of the link
    client = ProxmoxClient(api_settings(sim))
    wait_task(client, client.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True))
    per_gib = (_duration(sim, 118) - BASE_SECONDS * scale) / (sim.cluster.guests[118].entry["mem"] / GIB) / scale
    assert per_gib == pytest.approx(4.0, rel=0.15)


def test_a_scenario_gives_nodes_their_own_links(tmp_path: Any) -> None:
    doc = load_dump(REPO / "pvebalance" / "scenarios" / "all-on-one.json")
    sim = Simulator({**doc, "link_gbit": {"pve1": 40, "pve2": 40}}, link_gbit=25)
    links = sim.tasks.links
    assert links.lone_seconds("pve1", "pve2", 8 * GIB) == pytest.approx(2.0)  # 40 Gbit/s: 4 GiB/s
    assert links.lone_seconds("pve1", "pve3", 8 * GIB) == pytest.approx(3.2)  # pve3 at the default 25
    for bad, said in (({"pve9": 10}, "no node 'pve9'"), ({"pve1": 0}, "pve1: expected Gbit/s above 0"),
                      ([10], "expected node -> Gbit/s")):
        with pytest.raises(ValueError, match=said):
            Simulator({**doc, "link_gbit": bad})


def test_an_aborted_migration_frees_its_link_at_once(start_simulator: SimFactory) -> None:
    sim = start_simulator(time_scale=0.5, **QUIET)  # 118 alone: about 8.5 s
    client = ProxmoxClient(api_settings(sim))
    client.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True)
    deadline = time.monotonic() + 5
    while not sim.tasks.links.flows and time.monotonic() < deadline:  # past PVE's fixed part (1 s here)
        time.sleep(0.02)
    assert sim.tasks.links.flows
    requests.post(f"https://127.0.0.1:{sim.port}/_sim/guests/118/delete", verify=str(sim.cafile), timeout=5)
    assert sim.tasks.links.flows == {}  # the task ended with the guest's deletion, and its copy with it
