"""The simulator's record of what happened to its storages (stats.py), kept so that a whole run can be
checked against it afterwards (the fault suite's disk-move runs, tests/faultsuite/verify_disks.py): disk
moves at once, each storage's peak use, data written to a storage by hand, a destroyed guest's volumes.
(Beside tests/unit/test_simulator_disks.py, which is at the house's module size.)"""

from __future__ import annotations

import time
from typing import Any

import requests
from proxmoxer import ProxmoxAPI

from tests.helpers import SimFactory
from tests.unit.test_simulator_disks import GIB, SCALE, diff, log_of, on_every_node, start, used, wait


def control(sim: Any, path: str, body: dict[str, Any]) -> Any:
    resp = requests.post(f"https://127.0.0.1:{sim.port}/_sim/{path}", json=body, verify=str(sim.cafile), timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def copying(api: ProxmoxAPI, upid: str) -> None:
    deadline = time.monotonic() + 5
    while not any("allocated target volume" in t for t in log_of(api, upid)):
        assert time.monotonic() < deadline, f"{upid} never started copying"
        time.sleep(0.005)


def test_disk_moves_at_once_are_counted_per_storage_in_the_cluster_and_with_migrations(
        start_simulator: SimFactory) -> None:
    sim, api = start(start_simulator)
    node = api.nodes("pve1")
    # 256 GiB at 128 MiB/s and 32 GiB at 16 MiB/s: 2048 s at time scale 1, 4 s here
    first = node.qemu(133).move_disk.post(disk="scsi0", storage="nfs-b", delete=1, bwlimit=128 * 1024)
    second = node.qemu(106).move_disk.post(disk="scsi0", storage="nfs-c", delete=1, bwlimit=16 * 1024)
    copying(api, first)
    copying(api, second)
    assert sim.cluster.stats.disks_moving == 2
    assert wait(api, node.qemu(103).migrate.post(target="pve2", online=1))["exitstatus"] == "OK"
    assert [wait(api, upid)["exitstatus"] for upid in (first, second)] == ["OK", "OK"]
    stats = sim.cluster.stats.as_json()
    assert (stats["max_disk_moves"], stats["max_moves_at_once"], stats["disks_moving"]) == (2, 3, 0)
    assert stats["max_disk_moves_per_storage"] == {"nfs-a": 2, "nfs-b": 1, "nfs-c": 1}
    assert stats["max_concurrent"] == 1  # the migration alone


def test_a_failed_copy_counts_while_it_ran_and_afterwards_no_move_counts_as_copying(
        start_simulator: SimFactory) -> None:
    sim, api = start(start_simulator)
    sim.faults.add({"kind": "disk_error", "vmid": 106, "message": "EIO"})
    vm = api.nodes("pve1").qemu(106)
    assert wait(api, vm.move_disk.post(disk="scsi0", storage="nfs-c", delete=1))["exitstatus"] == \
        "storage migration failed: EIO"
    ct = api.nodes("pve1").lxc(100)
    # the storage is checked only in a CT's task: it ends before any volume is allocated
    assert wait(api, ct.move_volume.post(volume="rootfs", storage="nfs-x"))["exitstatus"] == \
        "storage 'nfs-x' does not exist"
    stats = sim.cluster.stats.as_json()
    assert (stats["max_disk_moves"], stats["disks_moving"]) == (1, 0)


def test_each_storages_peak_use_counts_a_copys_target_volume_while_the_source_still_holds_the_disk(
        start_simulator: SimFactory) -> None:
    sim, api = start(start_simulator)
    size = {e["storage"]: int(e["maxdisk"]) for e in api.cluster.resources.get(type="storage") if e["node"] == "pve1"}
    start_use = used(api)
    assert wait(api, api.nodes("pve1").qemu(133).move_disk.post(disk="scsi0", storage="nfs-c", delete=1))[
        "exitstatus"] == "OK"
    peak = sim.cluster.stats.as_json()["peak_storage_ratio"]
    expected = (start_use["pve1", "nfs-c"] + 256 * GIB) / size["nfs-c"]
    assert {k: round(v, 6) for k, v in peak.items()} == {f"{n}/nfs-c": round(expected, 6) for n in ("pve1", "pve2",
                                                                                                   "pve3")}
    # the source only shrank: its peak is not noted (a reader takes its use at the start)
    assert "pve1/nfs-a" not in peak


def test_data_written_to_a_storage_by_hand_changes_its_use_on_every_node_and_its_peak(
        start_simulator: SimFactory) -> None:
    sim, api = start(start_simulator)
    before = used(api)
    entries = control(sim, "storages/nfs-c/usage", {"add_gib": 800})
    assert {e["node"] for e in entries} == {"pve1", "pve2", "pve3"}
    assert diff(before, used(api)) == on_every_node({"nfs-c": 800 * GIB})
    peak = sim.cluster.stats.peak_storage_ratio["pve2/nfs-c"]
    assert peak == (before["pve2", "nfs-c"] + 800 * GIB) / int(entries[0]["maxdisk"])
    control(sim, "storages/nfs-c/usage", {"add_gib": -800})
    assert used(api) == before
    assert sim.cluster.stats.peak_storage_ratio["pve2/nfs-c"] == peak  # a peak stays


def test_a_guest_destroyed_by_hand_frees_its_volumes(start_simulator: SimFactory) -> None:
    sim, api = start(start_simulator, scale=SCALE)
    before = used(api)
    answer = control(sim, "guests/133/delete", {})  # scsi0 256G and scsi1 300G on nfs-a
    assert (answer["deleted"], answer["freed_bytes"]) == (1, 556 * GIB)
    assert diff(before, used(api)) == on_every_node({"nfs-a": -556 * GIB})
    assert api.nodes("pve1").storage("nfs-a").content.get(vmid=133) == []


def test_a_disk_error_added_while_a_copy_runs_breaks_that_copy_off(start_simulator: SimFactory) -> None:
    sim, api = start(start_simulator)
    vm = api.nodes("pve1").qemu(133)
    config, before = vm.config.get(), used(api)
    upid = vm.move_disk.post(disk="scsi0", storage="nfs-c", delete=1, bwlimit=128 * 1024)  # 4 s
    copying(api, upid)
    control(sim, "faults", {"kind": "disk_error", "vmid": 133, "message": "mirroring error: EIO"})
    assert wait(api, upid)["exitstatus"] == "storage migration failed: mirroring error: EIO"
    assert (vm.config.get(), used(api)) == (config, before)
    assert sim.faults.as_json() == []  # used up by that copy
