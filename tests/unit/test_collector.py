"""The collector against the simulator, with its config cache in fakeredis."""

from __future__ import annotations

import json

import pytest
from redis import Redis

from pvebalance.services.collector.collector import CollectError, Collector
from pvebalance.shared import keys, snapshots
from pvebalance.shared.models import ClusterSnapshot
from pvebalance.shared.proxmox import ProxmoxClient
from tests.helpers import SimFactory, api_settings


def test_snapshot_matches_the_cluster(start_simulator: SimFactory, fake_redis: Redis) -> None:
    sim = start_simulator("homelab")
    snap = Collector(ProxmoxClient(api_settings(sim)), fake_redis).snapshot()
    assert {n.name for n in snap.nodes} == set(sim.cluster.nodes)
    assert {g.vmid for g in snap.guests} == set(sim.cluster.guests)
    assert any(g.local_disk > 0 for g in snap.guests), "local disks come from the configs"
    assert any(g.template for g in snap.guests)


def test_steady_state_requests_do_not_grow_with_guests(start_simulator: SimFactory, fake_redis: Redis) -> None:
    sim = start_simulator("mid-300")
    client = ProxmoxClient(api_settings(sim))
    collector = Collector(client, fake_redis)
    collector.snapshot()
    first = client.requests
    assert first > 300, "the first snapshot fetches every guest's config"
    collector.snapshot()
    steady = client.requests - first
    assert steady <= 10
    # a guest that moves is fetched again, and only that one
    sim.cluster.guests[100].entry["node"] = "pve2" if sim.cluster.guests[100].node != "pve2" else "pve3"
    before = client.requests
    collector.snapshot()
    assert client.requests - before == steady + 1


def test_published_snapshot_is_on_the_stream_and_latest(start_simulator: SimFactory, fake_redis: Redis) -> None:
    sim = start_simulator()
    collector = Collector(ProxmoxClient(api_settings(sim)), fake_redis)
    snap = collector.snapshot()
    collector.publish(snap, latest_ttl=30)
    latest = snapshots.latest(fake_redis)  # stored compressed (shared/snapshots.py)
    assert latest is not None and latest.snapshot_id == snap.snapshot_id and latest.schema_version == 1
    assert 0 < fake_redis.ttl(keys.SNAPSHOT_LATEST) <= 30
    entries = fake_redis.xrange(keys.SNAPSHOT_STREAM)
    assert snapshots.from_entry(entries[-1][1]) == latest


def test_an_api_failure_publishes_nothing(start_simulator: SimFactory, fake_redis: Redis) -> None:
    sim = start_simulator()
    sim.faults.add({"kind": "http", "path": "^/cluster/ha/rules$", "status": 500, "message": "boom", "count": None})
    with pytest.raises(CollectError, match="boom"):
        Collector(ProxmoxClient(api_settings(sim)), fake_redis).snapshot()
    assert fake_redis.get(keys.SNAPSHOT_LATEST) is None


def test_record_writes_a_dump_that_plans_like_the_original(start_simulator: SimFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    from pvebalance.engine import Policy, plan_balance
    from pvebalance.shared.apidump import load_dump, snapshot_from_api
    from tests.helpers import REPO, write_config

    sim = start_simulator("mid-300", host_variation=0)  # the recorded figures, not their swing
    config = write_config(tmp_path / "c.yaml", sim, "redis://127.0.0.1:1/0")
    out = subprocess.run([sys.executable, "-m", "pvebalance", "record", str(tmp_path / "rec.json"), "-c", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    recorded = snapshot_from_api(load_dump(tmp_path / "rec.json")["api"])
    original = snapshot_from_api(load_dump(REPO / "pvebalance" / "scenarios" / "mid-300.json")["api"])
    assert [(g.vmid, g.node, g.local_disk, g.mem) for g in recorded.guests] == \
        [(g.vmid, g.node, g.local_disk, g.mem) for g in original.guests]
    a, b = plan_balance(recorded, Policy()), plan_balance(original, Policy())
    assert [(m.vmid, m.target) for m in a.migrations] == [(m.vmid, m.target) for m in b.migrations]


def redis_dump(redis: Redis) -> dict[bytes, tuple[bytes, int]]:
    """Every key with its serialized value and whether it expires: equal dumps, unchanged Redis."""
    return {k: (redis.dump(k), redis.ttl(k) > 0) for k in redis.scan_iter(count=1000)}


def test_collect_once_uses_the_collectors_cache_and_writes_nothing(start_simulator: SimFactory, real_redis: Redis,
                                                                    redis_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    from tests.helpers import write_config

    sim = start_simulator("homelab")
    running = Collector(ProxmoxClient(api_settings(sim)), real_redis)  # the service, filling cache and averages
    running.publish(running.snapshot(), latest_ttl=600)
    running.snapshot()
    before = redis_dump(real_redis)
    assert {keys.GUEST_CONFIG_CACHE.encode(), keys.GUEST_LOAD.encode(), keys.NODE_RRD.encode()} <= set(before)
    average = float(real_redis.hget(keys.GUEST_LOAD, "100").split(b",")[1])
    spike = sim.cluster.guests[100].entry["mem"] * 2
    sim.cluster.guests[100].entry["mem"] = spike  # a sample worth averaging

    config = write_config(tmp_path / "c.yaml", sim, redis_url)
    args = [sys.executable, "-m", "pvebalance", "collect", "--once", "-c", str(config)]
    requests = sum(sim.cluster.stats.requests.values())
    first = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    snap = ClusterSnapshot.model_validate_json(first.stdout)
    assert len(snap.guests) == 24
    vm100 = next(g for g in snap.guests if g.vmid == 100)
    assert vm100.mem_avg == pytest.approx(0.2 * spike + 0.8 * average, rel=1e-6), "the average is read"
    assert sum(sim.cluster.stats.requests.values()) - requests <= 10, "configs came from the cache"
    second = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0 and "pve1" in second.stdout
    assert redis_dump(real_redis) == before, "collect --once wrote to Redis"


def test_collect_once_without_a_cache_reads_every_config_and_still_writes_nothing(
        start_simulator: SimFactory, fake_redis: Redis) -> None:
    sim = start_simulator("homelab")
    collector = Collector(ProxmoxClient(api_settings(sim)), fake_redis, read_only=True)
    snap = collector.snapshot()
    assert any(g.local_disk > 0 for g in snap.guests)
    assert all(g.mem_avg == g.mem for g in snap.guests if g.running), "no average yet: the sample itself"
    assert fake_redis.keys("*") == []


def test_transient_errors_are_retried_then_reported(start_simulator: SimFactory, fake_redis: Redis) -> None:
    sim = start_simulator()
    sim.faults.add({"kind": "http", "path": "^/cluster/resources$", "status": 503, "message": "busy", "count": 2})
    snap = Collector(ProxmoxClient(api_settings(sim)), fake_redis, retry_wait=0.01).snapshot()
    assert len(snap.guests) == 40
    sim.faults.add({"kind": "http", "path": "^/cluster/resources$", "status": 503, "message": "busy", "count": None})
    with pytest.raises(CollectError, match="503 busy"):
        Collector(ProxmoxClient(api_settings(sim)), fake_redis, retry_wait=0.01).snapshot()


def test_offline_node_is_marked_and_its_configs_come_from_cache(start_simulator: SimFactory,
                                                                fake_redis: Redis) -> None:
    sim = start_simulator("homelab")
    collector = Collector(ProxmoxClient(api_settings(sim)), fake_redis)
    collector.snapshot()
    sim.control("POST", "/_sim/nodes/pve2/status", {"online": False})
    snap = collector.snapshot()
    pve2 = next(n for n in snap.nodes if n.name == "pve2")
    assert not pve2.online
    assert any(g.local_disk for g in snap.guests if g.node == "pve2"), "configs of its guests from the cache"
    from pvebalance.engine import Policy, plan_balance

    plan = plan_balance(snap, Policy())
    assert all("pve2" not in (m.source, m.target) for m in plan.migrations)


def test_ha_auto_rebalance_is_detected_and_its_guests_left_alone(start_simulator: SimFactory,
                                                                 fake_redis: Redis) -> None:
    from pvebalance.engine import Policy, plan_balance

    sim = start_simulator("groups")
    sim.control("POST", "/_sim/options", {"crs": {"ha": "static", "ha-auto-rebalance": 1}})
    snap = Collector(ProxmoxClient(api_settings(sim)), fake_redis).snapshot()
    assert snap.ha_auto_rebalance
    ha_guests = {g.vmid for g in snap.guests if g.hastate}
    assert ha_guests
    plan = plan_balance(snap, Policy())
    assert not {m.vmid for m in plan.migrations} & ha_guests
    assert plan_balance(snap, Policy(leave_ha_to_crs=False)).migrations


def test_one_spike_moves_the_average_only_a_little(start_simulator: SimFactory, fake_redis: Redis) -> None:
    sim = start_simulator("all-on-one")
    collector = Collector(ProxmoxClient(api_settings(sim)), fake_redis, smoothing=0.2)
    collector.snapshot()
    steady = next(g for g in collector.snapshot().guests if g.vmid == 100)
    sim.cluster.guests[100].entry["mem"] = steady.mem * 3  # one snapshot of a spike
    spiked = next(g for g in collector.snapshot().guests if g.vmid == 100)
    assert spiked.mem == steady.mem * 3
    assert spiked.mem_avg == pytest.approx(steady.mem * (0.8 + 0.2 * 3), rel=1e-3)


def test_node_rrd_gives_averages_and_pressure_at_a_bounded_rate(start_simulator: SimFactory,
                                                                fake_redis: Redis) -> None:
    sim = start_simulator("homelab", host_variation=0)  # the node's figure holds still between the reads
    client = ProxmoxClient(api_settings(sim))
    collector = Collector(client, fake_redis, rrd_interval=300)
    snap = collector.snapshot()
    node = next(n for n in snap.nodes if n.name == "pve1")
    assert node.mem_avg == pytest.approx(node.mem, rel=1e-3) and node.cpu_p95 is not None
    assert {"pressurecpusome", "pressurememoryfull"} <= set(node.psi)
    vm = next(g for g in snap.guests if g.type.value == "qemu" and g.running)
    assert "pressurecpusome" in vm.psi, "a running VM's pressure comes from its node's VM list"
    collector.snapshot()
    rrd_reads = sim.cluster.stats.requests["GET /nodes/pve1/rrddata"]
    assert rrd_reads == 1, "read once per rrd_interval, not per snapshot"


def test_stale_nodes_are_refreshed_a_few_per_snapshot(start_simulator: SimFactory, fake_redis: Redis) -> None:
    sim = start_simulator("mid-300")
    client = ProxmoxClient(api_settings(sim))
    collector = Collector(client, fake_redis, rrd_interval=0.001)
    collector.snapshot()
    for _ in range(3):
        before = client.requests
        collector.snapshot()
        assert client.requests - before <= 10, "steady state stays within a fixed budget"


def test_a_slow_answer_times_out_and_is_retried(start_simulator: SimFactory, fake_redis: Redis) -> None:
    sim = start_simulator()
    sim.faults.add({"kind": "delay", "path": "^/cluster/resources$", "seconds": 2.5, "count": 1})
    client = ProxmoxClient(api_settings(sim, timeout=1))
    snap = Collector(client, fake_redis, retry_wait=0.01).snapshot()
    assert len(snap.guests) == 40
    assert sim.cluster.stats.requests["GET /cluster/resources"] >= 2


@pytest.mark.parametrize("last", ["qemu", "lxc"])
def test_each_guest_config_is_trimmed_as_its_own_type(start_simulator: SimFactory, fake_redis: Redis,
                                                      last: str) -> None:
    """The config of every guest keeps its own disks and CPU keys, whatever type the last guest in
    /cluster/resources has (homelab ends in VMs 122 and 123; without them it ends in container 121)."""
    sim = start_simulator("homelab")
    if last == "lxc":
        for vmid in (122, 123):
            sim.cluster.delete_guest(vmid)
    assert sim.cluster.resources("vm")[-1]["type"] == last
    snap = Collector(ProxmoxClient(api_settings(sim)), fake_redis).snapshot()
    guests = {g.vmid: g for g in snap.guests}
    # ct106's rootfs (16 GiB) is on local-lvm; VM 101's config gives its vCPUs
    assert guests[106].local_disk == 16 * 2**30
    assert all(g.vcpus is not None for g in snap.guests if g.type == "qemu")
    cached = {int(v): json.loads(raw)["config"] for v, raw in fake_redis.hgetall(keys.GUEST_CONFIG_CACHE).items()}
    assert "rootfs" in cached[106] and "cores" not in cached[106]
    assert any(k.startswith(("scsi", "virtio", "sata", "ide")) for k in cached[101])
