"""A cluster within its thresholds, with every rule kept, is left alone (ProxLB #416, #335): the
planner, run as the service runs it, plans twenty snapshots whose usage wobbles and moves nothing,
repairs nothing, and enqueues nothing."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from redis import Redis
from rq import Queue

from pvebalance.services.planner.planner import Planner
from pvebalance.shared import keys
from pvebalance.shared.config import Settings
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import ClusterSnapshot, GuestState, GuestType, HaRule, NodeState

GIB = 2**30
HOST = 4 * GIB
NODES = ["pve1", "pve2", "pve3", "pve4"]


def cluster(per_node: list[int], rng: random.Random) -> ClusterSnapshot:
    """Four 256 GiB nodes holding `per_node` guests of about 8 GiB each (usage wobbling by up to 5 %),
    and one rule of every kind, each kept: a pin, an affinity group on one node, an anti-affinity
    group over four, an HA node-affinity rule, an HA negative resource-affinity rule."""
    guests: list[GuestState] = []
    vmid = 100
    for node, count in zip(NODES, per_node, strict=True):
        for _ in range(count):
            guests.append(GuestState(vmid=vmid, name=f"vm{vmid}", type=GuestType.QEMU, node=node, maxcpu=2,
                                     maxmem=16 * GIB, mem=int(8 * GIB * rng.uniform(0.95, 1.05)),
                                     cpu=rng.uniform(0.05, 0.5)))
            vmid += 1
    first = {node: min(g.vmid for g in guests if g.node == node) for node in NODES}
    tags = {first["pve1"]: ["plb_pin_pve1"], first["pve2"]: ["plb_affinity_app"],
            first["pve2"] + 1: ["plb_affinity_app"]}
    for node in NODES:
        tags.setdefault(first[node] + 2, []).append("plb_anti_affinity_db")
    guests = [g.model_copy(update={"tags": tags.get(g.vmid, [])}) for g in guests]
    used = {node: HOST + sum(g.mem for g in guests if g.node == node) for node in NODES}
    nodes = [NodeState(name=n, maxcpu=32, maxmem=256 * GIB, mem=used[n], cpu=rng.uniform(0.1, 0.3)) for n in NODES]
    rules = [HaRule(rule="db-on-3", type="node-affinity", resources=[f"vm:{first['pve3']}"], nodes={"pve3": 1}),
             HaRule(rule="apart", type="resource-affinity", affinity="negative",
                    resources=[f"vm:{first['pve1'] + 3}", f"vm:{first['pve4'] + 3}"])]
    return ClusterSnapshot(nodes=nodes, guests=guests, ha_rules=rules, taken_at=datetime.now(UTC))


@pytest.mark.parametrize(("per_node", "settings", "within"), [
    ([12, 12, 12, 12], Settings(), "spread"),
    ([6, 10, 14, 18], Settings(balancing={"memory_threshold": 80}), "threshold"),
], ids=["balanced", "uneven but under the threshold"])
def test_a_cluster_within_its_thresholds_gets_no_migration_in_twenty_snapshots(
        fake_redis: Redis, per_node: list[int], settings: Settings, within: str) -> None:
    rng = random.Random(416)
    planner = Planner(fake_redis, settings)
    for _ in range(20):
        plan = planner.handle(cluster(per_node, rng))
        assert plan is not None
        if within == "spread":  # the premise: balanced, whatever the noise did
            assert plan.before.spread_pp <= settings.balancing.balanciness
        else:
            assert max(n.percent for n in plan.before.nodes.values()) < 80
            assert plan.before.spread_pp > settings.balancing.balanciness
        assert (plan.migrations, plan.unmet, plan.violations) == ([], [], [])
    assert JobStore(fake_redis).active_jobs() == set()
    assert Queue(keys.MIGRATION_QUEUE, connection=fake_redis).count == 0
