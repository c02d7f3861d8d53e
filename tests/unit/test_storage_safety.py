"""Local storage: no plan fills one, judged by an oracle that reads the raw answers itself; the one
fit answers for memory and disks alike; the simulator's storages follow the disks as PVE's do."""

from __future__ import annotations

import json

import pytest

from pvebalance.engine import Policy, plan_balance
from pvebalance.engine.fit import (
    GIB,
    GuestFigures,
    NodeFigures,
    StorageFigures,
    fits,
    holding_in_flight,
    snapshot_figures,
)
from pvebalance.engine.placement import PlacementRequest, place
from pvebalance.engine.rules import build_constraints
from pvebalance.engine.verify import find_violations
from pvebalance.shared.apidump import load_dump
from pvebalance.shared.config import ResourceReserve
from pvebalance.shared.models import InFlightMigration
from pvebalance.shared.proxmox import ProxmoxClient
from tests.helpers import REPO, SCENARIOS, SimFactory, api_settings
from tests.oracle_storage import Move, local_disks, storage_breaches
from tests.unit.test_engine_determinism import scenario
from tests.unit.test_simulator import wait_task


def raw_api(name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((REPO / "pvebalance" / "scenarios" / f"{name}.json").read_text())["api"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", SCENARIOS)
def test_no_plan_takes_a_local_storage_past_90_percent(name: str) -> None:
    snap, policy = scenario(name)
    plan = plan_balance(snap, policy)
    assert storage_breaches(raw_api(name), [Move(m.vmid, m.source, m.target) for m in plan.migrations]) == []


def test_memory_balances_around_the_storages_that_cannot_take_the_big_disks() -> None:
    """local-storage: the memory-best plan sends 620 GiB of disks to pve2's local-lvm (50 GiB of room
    under 90%); the plan sends them where they fit and still balances memory."""
    snap, policy = scenario("local-storage")
    plan = plan_balance(snap, policy)
    assert plan.after.spread_pp <= policy.balanciness
    disks = local_disks(raw_api("local-storage"))
    assert {m.target for m in plan.migrations if disks[m.vmid]} <= {"pve3"}
    # the plan without storage facts would fill pve2: the oracle sees it
    blind = plan_balance(snap.model_copy(update={"storages": []}), policy)
    assert storage_breaches(raw_api("local-storage"), [Move(m.vmid, m.source, m.target) for m in blind.migrations])


def test_with_local_disks_off_no_guest_with_local_disks_moves() -> None:
    snap, _ = scenario("local-storage")
    plan = plan_balance(snap, Policy(with_local_disks=False))
    disks = local_disks(raw_api("local-storage"))
    assert plan.migrations and not [m.vmid for m in plan.migrations if disks[m.vmid]]


def test_verify_names_the_step_that_fills_a_storage() -> None:
    snap, policy = scenario("local-storage")
    blind = plan_balance(snap.model_copy(update={"storages": []}), policy)
    violations = find_violations(snap, blind, policy, build_constraints(snap, policy))
    assert any("pve2's local-lvm would be at" in v and "above max_storage_usage 90%" in v for v in violations)


NODE = NodeFigures("pve2", 128 * GIB, 16 * GIB, 32, storages={"local-lvm": StorageFigures(400 * GIB, 500 * GIB)})


@pytest.mark.parametrize(("disks", "policy", "refusal"), [
    ((("local-lvm", 50 * GIB),), Policy(), None),  # 450 of 500: exactly 90%
    ((("local-lvm", 51 * GIB),), Policy(),
     "pve2's local-lvm would be at 90.2% of 500 GiB, above max_storage_usage 90%"),
    ((("local-lvm", 51 * GIB),), Policy(max_storage_usage=95), None),
    ((("local-lvm", 30 * GIB),), Policy(reserve={"defaults": ResourceReserve(disk=100)}),
     "pve2's local-lvm would be at 107.5% of the 400 GiB left after the node's 100 GiB disk reserve, "
     "above max_storage_usage 90%"),
    ((("local-zfs", GIB),), Policy(), "pve2 has no active storage local-zfs for the guest's local disks"),
    ((), Policy(), None),  # disks on shared storage only: nothing is copied
])
def test_fit_counts_each_local_disk_on_the_target_storage_of_its_id(disks, policy, refusal) -> None:  # type: ignore[no-untyped-def]
    guest = GuestFigures(GIB, 1, True, disks)
    assert fits(guest, NODE, policy) == refusal
    stopped = GuestFigures(0, 0, False, disks)  # a stopped guest's disks are copied all the same
    assert fits(stopped, NODE, policy) == refusal


def test_disks_that_a_migration_in_flight_copies_hold_room_on_its_target() -> None:
    snap, policy = scenario("local-storage")
    guests = {g.vmid: g for g in snap.guests}
    ct120 = GuestFigures.of([guests[120]])  # 40 GiB rootfs on local-lvm
    assert fits(ct120, snapshot_figures(snap)["pve3"], policy) is None  # pve3: 300 of 2,000 GiB used
    # vm100 (pve1), with its disk grown to 1,500 GiB, migrating to pve3: 1,800 GiB there once it lands
    vm100 = guests[100].model_copy(update={"disks": [guests[100].disks[0].model_copy(update={"size": 1500 * GIB})]})
    flight = InFlightMigration(job_id="job-1", vmid=100, source="pve1", target="pve3", mem_bytes=vm100.mem)
    in_flight = snap.model_copy(update={"in_flight": [flight],
                                        "guests": [vm100 if g.vmid == 100 else g for g in snap.guests]})
    assert fits(ct120, snapshot_figures(in_flight)["pve3"], policy) == \
        "pve3's local-lvm would be at 92.0% of 2000 GiB, above max_storage_usage 90%"


def test_best_node_for_a_local_disk_asks_the_same_storage_check() -> None:
    snap, policy = scenario("local-storage")
    answer = place(snap, policy, PlacementRequest(memory=4 * GIB, disk=100 * GIB, local=True))
    assert answer.best == "pve3"
    assert answer.refused["pve2"].startswith("pve2's local-lvm would be at")
    assert answer.refused["pve4"] == "pve4 has no local storage for guest disks"


def test_the_simulator_allocates_disks_on_the_target_and_frees_the_source(start_simulator: SimFactory) -> None:
    sim = start_simulator("local-storage", time_scale=0.0005)  # 320 GiB of disks: 1,600 s at full scale
    client = ProxmoxClient(api_settings(sim))

    def used(node: str) -> int:
        return next(s["disk"] for s in client.get("/cluster/resources", type="storage")
                    if s["node"] == node and s["storage"] == "local-lvm")

    before = {n: used(n) for n in ("pve1", "pve3")}
    upid = client.post("/nodes/pve1/qemu/101/migrate", target="pve3", online=1, **{"with-local-disks": 1})
    assert wait_task(client, upid)["exitstatus"] == "OK"
    assert used("pve3") - before["pve3"] == 320 * GIB  # scsi0 200G and scsi1 120G
    assert before["pve1"] - used("pve1") == 320 * GIB


@pytest.mark.parametrize(("vmid", "target", "error"), [
    (100, "pve2", "storage migration failed: volume 100 on 'local-lvm': No space left on device"),
    (100, "pve4", "storage 'local-lvm' is not available on node 'pve4'"),
])
def test_the_simulator_refuses_disks_a_target_cannot_hold_as_pve_does(start_simulator: SimFactory, vmid: int,
                                                                      target: str, error: str) -> None:
    sim = start_simulator("local-storage")
    client = ProxmoxClient(api_settings(sim))
    check = client.get(f"/nodes/pve1/qemu/{vmid}/migrate")
    assert (target in check["allowed_nodes"]) is (target == "pve2")  # a missing storage is known beforehand
    upid = client.post(f"/nodes/pve1/qemu/{vmid}/migrate", target=target, online=1, **{"with-local-disks": 1})
    assert wait_task(client, upid)["exitstatus"] == error
    assert client.get(f"/nodes/pve1/qemu/{vmid}/config")  # still on pve1, with its disks


def test_the_engines_plan_runs_on_the_simulator_without_filling_a_storage(start_simulator: SimFactory) -> None:
    """Engine and simulator agree: every move of the plan succeeds, and no local storage of the
    simulated cluster passed 90% at any moment."""
    snap, policy = scenario("local-storage")
    plan = plan_balance(snap, policy)
    sim = start_simulator("local-storage", time_scale=0.0005)
    client = ProxmoxClient(api_settings(sim))
    for m in plan.migrations:
        kind = m.type.value
        params = {"online": 1, "with-local-disks": 1} if kind == "qemu" else {"restart": 1}
        upid = client.post(f"/nodes/{m.source}/{kind}/{m.vmid}/migrate", target=m.target, **params)
        assert wait_task(client, upid)["exitstatus"] == "OK", m
    assert max(sim.cluster.stats.peak_storage_ratio.values()) <= 0.90


def test_load_dump_keeps_local_storage_a_bundled_scenario() -> None:
    assert load_dump("local-storage")["name"] == "local-storage"


def test_the_pre_flight_counts_the_disks_of_other_jobs_in_flight_from_their_jobs() -> None:
    """The migrator knows migrations in flight from their jobs, not from a snapshot's guests: the
    job carries its local disks per storage, and they hold room on its target as in the plan."""
    node = NodeFigures("pve3", 128 * GIB, 16 * GIB, 32, storages={"local-lvm": StorageFigures(300 * GIB, 2000 * GIB)})
    flight = InFlightMigration(job_id="job-1", vmid=100, source="pve1", target="pve3", mem_bytes=GIB,
                               local_disks={"local-lvm": 1500 * GIB})
    holding = holding_in_flight(node, [flight])
    assert holding.storages == {"local-lvm": StorageFigures(1800 * GIB, 2000 * GIB)}
    assert fits(GuestFigures(0, 0, False, (("local-lvm", 40 * GIB),)), holding, Policy()) == \
        "pve3's local-lvm would be at 92.0% of 2000 GiB, above max_storage_usage 90%"


def test_a_plans_jobs_carry_each_moves_local_disks_per_storage() -> None:
    snap, policy = scenario("local-storage")
    plan = plan_balance(snap, policy)
    disks = local_disks(raw_api("local-storage"))
    assert {m.vmid: m.local_disks for m in plan.migrations} == {m.vmid: disks[m.vmid] for m in plan.migrations}
