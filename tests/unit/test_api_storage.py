"""The API on storage balancing (issue 21): a plan's every action with its job (disk moves with their guest,
disk, storages, GiB and batch), the plan's storage figures, the shared storages' use in the cluster view,
and disk-move jobs in the job list; on storage-3 with a plan of one migration and nine disk moves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from pvebalance.shared.jobs import JobState, job_ids
from pvebalance.shared.models import Migration, StorageState
from tests.api_helpers import OPS, World, fake_app, make_storage_world, make_world, settings_with_tokens


@pytest.fixture
def setup() -> Iterator[tuple[TestClient, World]]:
    app, redis = fake_app(settings_with_tokens())
    world = make_storage_world(redis)
    with TestClient(app) as client:
        yield client, world


def test_plan_lists_every_action_in_order_with_its_job_and_disk_moves_with_guest_disk_storages_gib_and_batch(
        setup: tuple[TestClient, World]) -> None:
    client, world = setup
    view = client.get("/api/v1/plans/latest", headers=OPS).json()
    actions = view["actions"]
    assert [a["kind"] for a in actions] == [a.kind for a in world.plan.actions]
    assert [a["job_id"] for a in actions] == job_ids(world.plan)
    first = world.plan.disk_moves[0]
    shown = actions[1]
    assert {k: shown[k] for k in ("vmid", "id", "disk", "node", "source", "target", "size", "batch")} == {
        "vmid": first.vmid, "id": f"qemu/{first.vmid}", "disk": first.disk, "node": first.node,
        "source": first.source, "target": first.target, "size": first.size, "batch": first.batch}
    assert shown["size_gib"] == pytest.approx(first.size / 2**30, abs=0.01)
    assert (shown["job_state"], shown["job_message"]) == ("succeeded", f"{first.disk} of {first.vmid} is on "
                                                          f"{first.target}")
    assert all(a["job_state"] is None for a in actions[2:]), "not enqueued: the plan waits for approval"
    assert [a["batch"] for a in actions[1:]] == [d.batch for d in world.plan.disk_moves]


def test_moves_stay_the_migrations_only_with_their_jobs_as_before(setup: tuple[TestClient, World]) -> None:
    client, world = setup
    view = client.get(f"/api/v1/plans/{world.plan.plan_id}", headers=OPS).json()
    [migration] = world.plan.migrations
    assert [m["vmid"] for m in view["moves"]] == [migration.vmid]
    assert view["moves"][0] == view["actions"][0]
    assert set(Migration.model_fields) <= set(view["moves"][0])


def test_plan_carries_each_balanced_storages_use_before_and_after_and_the_groups_spread(
        setup: tuple[TestClient, World]) -> None:
    client, world = setup
    storage = client.get("/api/v1/plans/latest", headers=OPS).json()["plan"]["storage"]
    assert world.plan.storage is not None
    assert set(storage["before"]) == set(storage["after"]) == {"nfs-a", "nfs-b", "nfs-c"}
    for sid, before in world.plan.storage.before.items():
        assert storage["before"][sid]["percent"] == pytest.approx(before.percent)
        assert storage["after"][sid]["percent"] == pytest.approx(world.plan.storage.after[sid].percent)
    [group] = storage["groups"]
    assert group["spread_before_pp"] > 60 and group["spread_after_pp"] <= storage["band_pp"] == 10


def expected_storages(storages: list[StorageState]) -> dict[str, tuple[int, int, list[str]]]:
    """Each shared storage once: the figures its active nodes report (the same from each), and those nodes."""
    out: dict[str, tuple[int, int, list[str]]] = {}
    for s in storages:
        if s.shared and s.active:
            used, total, nodes = out.get(s.storage, (s.disk, s.maxdisk, []))
            out[s.storage] = (used, total, sorted([*nodes, s.node]))
    return out


@pytest.mark.parametrize("inactive_on", [None, "pve3"])
def test_cluster_shows_each_shared_storage_once_with_its_use_and_where_it_is_available(
        setup: tuple[TestClient, World], inactive_on: str | None) -> None:
    client, world = setup
    if inactive_on is not None:  # a node that cannot reach nfs-c reports it inactive, with no figures
        storages = [s.model_copy(update={"active": False, "disk": 0, "maxdisk": 0})
                    if (s.node, s.storage) == (inactive_on, "nfs-c") else s for s in world.snapshot.storages]
        world.save_snapshot(world.snapshot.model_copy(update={"storages": storages}))
    expected = expected_storages(world.snapshot.storages)
    view = client.get("/api/v1/cluster", headers=OPS).json()["storages"]
    assert [s["storage"] for s in view] == ["nfs-a", "nfs-b", "nfs-c"], "shared ones only (local-lvm is per node)"
    for s in view:
        used, total, nodes = expected[s["storage"]]
        assert (s["used"], s["total"]) == (used, total)
        assert s["percent"] == pytest.approx(100 * used / total, abs=0.01)
        assert s["nodes"] == (nodes if inactive_on is None or s["storage"] != "nfs-c" else ["pve1", "pve2"])
        assert {"images", "rootdir"} <= set(s["content"])
    assert [round(s["percent"]) for s in view] == [90, 51, 24]


def test_a_disk_move_job_shows_its_kind_disk_node_and_storages(setup: tuple[TestClient, World]) -> None:
    client, world = setup
    first = world.plan.disk_moves[0]
    job = client.get(f"/api/v1/jobs/{world.job_id}", headers=OPS).json()
    assert {k: job[k] for k in ("action", "id", "vmid", "disk", "node", "source", "target", "reason", "state")} == {
        "action": "move-disk", "id": f"qemu/{first.vmid}", "vmid": first.vmid, "disk": first.disk,
        "node": first.node, "source": first.source, "target": first.target, "reason": "storage",
        "state": JobState.SUCCEEDED.value}
    assert [e["action"] for e in job["events"]] == ["move-disk"] * 3
    assert [j["job_id"] for j in client.get("/api/v1/jobs?state=succeeded", headers=OPS).json()] == [world.job_id]


def test_recent_plans_count_disk_moves_apart_from_migrations(setup: tuple[TestClient, World]) -> None:
    client, _ = setup
    [summary] = client.get("/api/v1/plans", headers=OPS).json()
    assert (summary["migrations"], summary["disk_moves"]) == (1, 9)


def test_without_storage_balancing_the_plan_has_no_storage_figures_and_its_actions_are_its_moves() -> None:
    app, redis = fake_app(settings_with_tokens())
    world = make_world(redis)  # all-on-one: one Ceph pool shared by its four nodes
    with TestClient(app) as client:
        view = client.get("/api/v1/cluster", headers=OPS).json()
        plan = client.get("/api/v1/plans/latest", headers=OPS).json()
    [ceph] = view["storages"]
    assert (ceph["storage"], ceph["nodes"]) == ("ceph-vm", ["pve1", "pve2", "pve3", "pve4"])
    assert (ceph["used"], ceph["total"]) == expected_storages(world.snapshot.storages)["ceph-vm"][:2]
    assert plan["plan"]["storage"] is None and plan["actions"] == plan["moves"] != []
