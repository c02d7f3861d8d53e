"""The collector against a simulator that answers like a busy cluster: latency and a few workers per node."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis

from pvebalance.services.collector.collector import Collector
from pvebalance.shared.apireads import ReadLimits, read_all
from pvebalance.shared.models import ClusterSnapshot
from pvebalance.shared.proxmox import ProxmoxClient, ProxmoxError
from tests.helpers import SimFactory, api_settings

# Figures that do not move between two simulators of the same scenario, so snapshots compare exactly.
STILL = {"host_variation": 0, "figure_lag": 0}


def comparable(snap: ClusterSnapshot) -> dict[str, Any]:
    return snap.model_dump(exclude={"snapshot_id", "taken_at"})


def test_first_snapshot_under_latency_is_complete_and_equal_to_the_instant_one(
        start_simulator: SimFactory, fake_redis: Redis) -> None:
    instant = start_simulator("mid-300", latency_ms=0, workers=0, **STILL)
    expected = Collector(ProxmoxClient(api_settings(instant)), None).snapshot()
    busy = start_simulator("mid-300", latency_ms=20, workers=3, **STILL)  # (a new certificate: one at a time)
    snap = Collector(ProxmoxClient(api_settings(busy)), None).snapshot()
    assert len(snap.guests) == 300 and all(g.node for g in snap.guests)
    assert comparable(snap) == comparable(expected)
    stats = busy.control("GET", "/_sim/stats", {})
    config_reads = sum(n for path, n in stats["requests"].items() if path.endswith("/config"))
    assert config_reads == 300, "every config read once"
    assert stats["requests_waited"] == 0, "never more reads at one node than its 3 workers"


def test_each_config_read_is_retried_on_its_own(start_simulator: SimFactory) -> None:
    sim = start_simulator("homelab", latency_ms=5, **STILL)
    sim.faults.add({"kind": "http", "path": r"^/nodes/pve2/qemu/\d+/config$", "status": 503, "message": "busy",
                    "count": 2})
    snap = Collector(ProxmoxClient(api_settings(sim)), None, retry_wait=0.01).snapshot()
    assert not sim.faults.as_json(), "both failures were answered"
    clean = Collector(ProxmoxClient(api_settings(sim)), None).snapshot()
    assert comparable(snap) == comparable(clean), "two failed reads, each retried, lose nothing"


@pytest.mark.parametrize("scenario", ["homelab", "mid-300"])
def test_steady_state_stays_within_nodes_plus_ten_requests(start_simulator: SimFactory, fake_redis: Redis,
                                                           scenario: str) -> None:
    sim = start_simulator(scenario, latency_ms=10)
    # rrd_interval ~0: every node's RRD is stale at every snapshot, the most a snapshot ever reads
    collector = Collector(ProxmoxClient(api_settings(sim)), fake_redis, rrd_interval=0.001)
    collector.snapshot()
    for _ in range(3):
        sim.control("DELETE", "/_sim/stats", {})
        collector.snapshot()
        assert sim.control("GET", "/_sim/stats", {})["requests_total"] <= len(sim.cluster.nodes) + 10


def test_read_all_keeps_within_its_limits_and_keeps_each_failure_apart() -> None:
    import threading
    import time

    lock = threading.Lock()
    in_flight: dict[str, int] = {}
    peak = {"all": 0, "node": 0}

    def read(key: tuple[str, int]) -> int:
        node, n = key
        with lock:
            in_flight[node] = in_flight.get(node, 0) + 1
            peak["node"] = max(peak["node"], in_flight[node])
            peak["all"] = max(peak["all"], sum(in_flight.values()))
        time.sleep(0.005)
        with lock:
            in_flight[node] -= 1
        if n == 7:
            raise ProxmoxError("no such guest", 500)
        return n

    keys = [(f"pve{i % 5}", i) for i in range(60)]
    out = read_all(keys, lambda k: k[0], read, ReadLimits(total=6, per_node=2))
    assert peak["node"] <= 2 and peak["all"] <= 6
    assert isinstance(out[("pve2", 7)], ProxmoxError)
    assert {k: v for k, v in out.items() if k[1] != 7} == {k: k[1] for k in keys if k[1] != 7}


def test_one_client_shared_by_many_threads_logs_in_once_and_counts_every_call(start_simulator: SimFactory) -> None:
    import threading

    sim = start_simulator(latency_ms=5)
    client = ProxmoxClient(api_settings(sim, token_id=None, token_secret=None, **{"pass": sim.users["root@pam"]}))
    threads = [threading.Thread(target=lambda: [client.get("/version") for _ in range(5)]) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.requests == 80 == sim.cluster.stats.requests["GET /version"]
    assert sim.cluster.stats.requests["POST /access/ticket"] == 1
