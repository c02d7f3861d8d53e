"""The operator's side in pieces: maintenance windows, placement, plan outcomes, the request store."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from redis import Redis

from pvebalance.engine import Policy, plan_balance
from pvebalance.engine.placement import PlacementRequest, place
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.config import MaintenanceWindow
from pvebalance.shared.models import ClusterSnapshot
from pvebalance.shared.requests import OperatorRequest, RequestAction, RequestState, RequestStore
from pvebalance.shared.windows import window_open

GIB = 2**30
SAT_0300 = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)  # a Saturday


@pytest.mark.parametrize(("window", "now", "open_"), [
    (dict(days=["sat"], start="02:00", end="04:00"), SAT_0300, True),
    (dict(days=["sat"], start="02:00", end="04:00"), SAT_0300.replace(hour=4), False),
    (dict(days=["sat"], start="02:00", end="04:00"), SAT_0300.replace(hour=1, minute=31), True),  # 30 min ahead
    (dict(days=["sat"], start="02:00", end="04:00"), SAT_0300.replace(hour=1, minute=29), False),
    (dict(days=["sun"], start="02:00", end="04:00"), SAT_0300, False),
    (dict(days=["fri"], start="23:00", end="04:00"), SAT_0300, True),  # runs past midnight
    (dict(days=["sun"], start="00:10", end="01:00"), SAT_0300.replace(hour=23, minute=50), True),  # over midnight
    (dict(days=["sat"], start="03:30", end="05:00", timezone="Europe/Berlin"), SAT_0300, True),  # 04:00 in Berlin
])
def test_maintenance_window_is_open_from_drain_ahead_before_its_start_until_its_end(
        window: dict[str, object], now: datetime, open_: bool) -> None:
    assert window_open(MaintenanceWindow(**window), now) is open_  # type: ignore[arg-type]


@pytest.fixture
def tight() -> ClusterSnapshot:
    return snapshot_from_api(load_dump("tight")["api"])


@pytest.mark.parametrize(("change", "node", "reason"), [
    ({"online": False}, "pve2", "pve2 is offline"),
    ({"problem": "maxmem is 0"}, "pve2", "pve2's figures cannot be planned on: maxmem is 0"),
    ({"maintenance": True}, "pve2", "pve2 is drained (maintenance)"),
])
def test_placement_refuses_a_node_that_is_no_target_with_the_reason(
        tight: ClusterSnapshot, change: dict[str, object], node: str, reason: str) -> None:
    nodes = [n.model_copy(update=change) if n.name == node else n for n in tight.nodes]
    answer = place(tight.model_copy(update={"nodes": nodes}), Policy(), PlacementRequest(memory=GIB))
    assert answer.refused[node] == reason
    assert node not in [c.node for c in answer.ranked]


def test_placement_refuses_an_ignored_node(tight: ClusterSnapshot) -> None:
    answer = place(tight, replace(Policy(), ignore_nodes=frozenset({"pve3"})), PlacementRequest(memory=GIB))
    assert answer.refused == {"pve3": "pve3 is in proxmox_cluster.ignore_nodes"}


def test_placement_refuses_a_node_without_local_storage_for_the_disk(tight: ClusterSnapshot) -> None:
    storages = [s.model_copy(update={"maxdisk": 100 * GIB, "disk": 75 * GIB}) if not s.shared else s
                for s in tight.storages]
    answer = place(tight.model_copy(update={"storages": storages}), Policy(),
                   PlacementRequest(memory=GIB, disk=20 * GIB, local=True))
    assert answer.best is None  # 95 of 100 GiB: above max_storage_usage, as a migration's disks would be
    assert answer.refused["pve1"] == "pve1's local-lvm would be at 95.0% of 100 GiB, above max_storage_usage 90%"


def test_placement_keeps_anti_affinity_and_pins(tight: ClusterSnapshot) -> None:
    anti = place(tight, Policy(), PlacementRequest(memory=GIB, tags=["plb_anti_affinity_x"]))
    guests = [g.model_copy(update={"tags": ["plb_anti_affinity_x"]}) if g.vmid == 101 else g for g in tight.guests]
    with_partner = place(tight.model_copy(update={"guests": guests}), Policy(),
                         PlacementRequest(memory=GIB, tags=["plb_anti_affinity_x"]))
    partner_node = next(g.node for g in tight.guests if g.vmid == 101)
    assert partner_node not in with_partner.refused or "plb_anti_affinity_x" in with_partner.refused[partner_node]
    assert partner_node in with_partner.refused and partner_node not in anti.refused
    pinned = place(tight, Policy(), PlacementRequest(memory=GIB, tags=["plb_pin_pve3"]))
    assert [c.node for c in pinned.ranked] == ["pve3"]


def test_placement_ranks_by_load_after_arrival(tight: ClusterSnapshot) -> None:
    answer = place(tight, Policy(), PlacementRequest(memory=GIB, cores=2))
    assert [c.percent_after for c in answer.ranked] == sorted(c.percent_after for c in answer.ranked)
    assert answer.best == answer.ranked[0].node


@pytest.mark.parametrize(("scenario", "policy", "outcome", "reason_start"), [
    ("all-on-one", Policy(), "planned", "17 migrations: spread 45.7 -> 4.9 pp (balanciness 5 pp)"),
    ("all-on-one", Policy(balanciness=60), "balanced",
     "spread 45.7 pp is within the balanciness of 60 pp: nothing to do"),
    ("all-on-one", Policy(threshold=99), "balanced", "no node above the memory threshold of 99%: not balancing"),
    ("tight", replace(Policy(), maintenance_nodes=frozenset({"pve1"})), "partial",
     "5 rules cannot be met: maintenance pve1 (101): no node may take it with room to spare; no guest on pve2 "
     "could be parked on a third node with room to make room for 101; "),
    ("all-on-one", Policy(max_node_usage=1), "infeasible", "spread 45.7 pp above 5 pp, and no safe move helps"),
])
def test_every_plan_says_its_outcome_in_one_field(scenario: str, policy: Policy, outcome: str,
                                                  reason_start: str) -> None:
    plan = plan_balance(snapshot_from_api(load_dump(scenario)["api"]), policy)
    assert plan.outcome == outcome
    assert plan.outcome_reason.startswith(reason_start), plan.outcome_reason


def test_a_request_ends_once(fake_redis: Redis) -> None:
    store = RequestStore(fake_redis)
    request = OperatorRequest(action=RequestAction.DRAIN, node="pve2", who="alice")
    assert store.submit(request).state == RequestState.PENDING
    assert store.settle(request.request_id, RequestState.ACCEPTED, "draining")
    assert store.settle(request.request_id, RequestState.DONE, "pve2 is empty")
    assert not store.settle(request.request_id, RequestState.FAILED, "too late")
    status = store.status(request.request_id)
    assert status is not None and (status.state, status.reason, status.request.who) == (
        RequestState.DONE, "pve2 is empty", "alice")
    assert not store.settle("req-unknown", RequestState.DONE)


def test_a_waiting_plan_is_superseded_only_when_a_newer_snapshot_makes_it_stale(fake_redis: Redis) -> None:
    from datetime import UTC, datetime

    from pvebalance.services.planner.planner import Planner
    from pvebalance.shared.config import load_settings
    from pvebalance.shared.plans import PlanState, PlanStore

    planner = Planner(fake_redis, load_settings(None, balancing={"mode_of_operation": "manual"}))
    snap = snapshot_from_api(load_dump("all-on-one")["api"]).model_copy(update={"taken_at": datetime.now(UTC)})
    first = planner.handle(snap)
    assert first is not None and first.migrations
    noisy = snap.model_copy(update={"guests": [g.model_copy(update={"mem": int(g.mem * 1.01)}) for g in snap.guests],
                                    "taken_at": datetime.now(UTC)})
    assert planner.handle(noisy) == first, "still safe and needed: the same plan keeps waiting"
    moved = first.migrations[0]
    by_hand = snap.model_copy(update={"guests": [g.model_copy(update={"node": moved.target}) if g.vmid == moved.vmid
                                                 else g for g in snap.guests], "taken_at": datetime.now(UTC)})
    newer = planner.handle(by_hand)
    assert newer is not None and newer.plan_id != first.plan_id
    status = PlanStore(fake_redis).status(first.plan_id)
    assert status is not None and status.state is PlanState.SUPERSEDED
    assert status.reason.startswith(f"superseded by plan {newer.plan_id}, made on a newer snapshot: ")
