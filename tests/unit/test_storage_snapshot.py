"""What storage balancing needs from the snapshot and the settings: CD-ROM drives marked as such,
guests with snapshots, the storages' figures and the guests' state; `storage_balancing:` in the config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pvebalance.shared.apidump import essential_config, snapshot_from_api
from pvebalance.shared.config import ConfigError, StorageBalancingSettings, load_settings
from pvebalance.shared.models import ClusterSnapshot, GuestType

GIB = 2**30
FIXTURE = Path(__file__).parents[2] / "pvebalance" / "scenarios" / "storage-3.json"  # the bundled scenario


def cluster(config: dict[str, Any], status: str = "running") -> dict[str, Any]:
    return {
        "/cluster/resources": [
            {"type": "node", "node": "pve1", "status": "online", "cpu": 0.1, "maxcpu": 8, "mem": GIB,
             "maxmem": 64 * GIB},
            {"type": "storage", "node": "pve1", "storage": "local", "shared": 0, "content": "iso,images",
             "maxdisk": 100 * GIB, "disk": 10 * GIB, "status": "available"},
            {"type": "storage", "node": "pve1", "storage": "nfs", "shared": 1, "content": "images,iso",
             "maxdisk": 100 * GIB, "disk": 10 * GIB, "status": "available"},
            {"type": "qemu", "vmid": 100, "node": "pve1", "status": status, "maxmem": GIB},
        ],
        "/nodes/pve1/qemu/100/config": config,
    }


def test_a_cdrom_with_an_image_is_listed_as_cdrom_and_copied_by_no_migration() -> None:
    snap = snapshot_from_api(cluster({
        "scsi0": "local:vm-100-disk-0,size=8G",
        "ide2": "local:iso/debian.iso,media=cdrom,size=600M",
        "ide0": "nfs:iso/tools.iso,media=cdrom",
        "sata0": "none,media=cdrom",
        "ide1": "cdrom,media=cdrom",
    }))
    guest = snap.guests[0]
    assert sorted((d.key, d.storage, d.media) for d in guest.disks) == [
        ("ide0", "nfs", "cdrom"), ("ide2", "local", "cdrom"), ("scsi0", "local", None)]
    # a migration copies the disk, not the CD-ROM image: the same figures as before CD-ROMs were listed
    assert guest.local_disk == 8 * GIB
    assert guest.local_storage_bytes() == {"local": 8 * GIB}


@pytest.mark.parametrize(("config", "has"), [({"parent": "before-upgrade"}, True), ({}, False)])
def test_a_config_with_a_parent_snapshot_marks_the_guest(config: dict[str, Any], has: bool) -> None:
    snap = snapshot_from_api(cluster({"scsi0": "nfs:vm-100-disk-0,size=8G", **config}))
    assert snap.guests[0].has_snapshots is has


def test_the_cached_config_keeps_parent() -> None:
    config = {"scsi0": "nfs:vm-100-disk-0,size=8G", "parent": "s1", "description": "x" * 100}
    assert essential_config(config, GuestType.QEMU) == {"scsi0": "nfs:vm-100-disk-0,size=8G", "parent": "s1"}


def test_a_snapshot_written_before_these_fields_still_parses() -> None:
    snap = snapshot_from_api(cluster({"scsi0": "nfs:vm-100-disk-0,size=8G"}))
    raw = json.loads(snap.model_dump_json())
    for guest in raw["guests"]:
        del guest["has_snapshots"]
        for disk in guest["disks"]:
            del disk["media"]
    old = ClusterSnapshot.model_validate(raw)
    assert old.guests[0].disks[0].media is None and old.guests[0].has_snapshots is False


def test_storage3_snapshot_carries_what_storage_balancing_reads() -> None:
    snap = snapshot_from_api(json.loads(FIXTURE.read_text())["api"])
    nfs_a = [s for s in snap.storages if s.storage == "nfs-a"]
    assert {s.node for s in nfs_a} == {"pve1", "pve2", "pve3"}
    assert all(s.shared and {"images", "rootdir"} <= set(s.content) and s.maxdisk == 16000 * GIB for s in nfs_a)
    ct = next(g for g in snap.guests if g.vmid == 100)
    assert (ct.type, ct.running, ct.template, ct.lock) == (GuestType.LXC, False, False, None)
    assert [(d.key, d.storage, d.size) for d in ct.disks] == [("rootfs", "nfs-a", 256 * GIB)]


def test_storage_balancing_settings_default_to_off() -> None:
    s = load_settings().storage_balancing
    assert s == StorageBalancingSettings()
    assert (s.enable, s.balanciness, s.max_usage, s.groups, s.max_parallel_per_storage, s.bwlimit) == (
        False, 10.0, 90.0, [], 1, None)


def test_storage_balancing_is_read_from_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("storage_balancing:\n  enable: true\n  groups: [[nfs-a, nfs-b]]\n  bwlimit: 200\n")
    s = load_settings(cfg).storage_balancing
    assert (s.enable, s.groups, s.bwlimit) == (True, [["nfs-a", "nfs-b"]], 200.0)


@pytest.mark.parametrize(("yaml", "words"), [
    ("groups: [[nfs-a]]", "two storages or more"),
    ("groups: [[nfs-a, nfs-b], [nfs-b, nfs-c]]", "more than one group"),
    ("max_usage: 120", "storage_balancing.max_usage"),
    ("max_parallel_per_storage: 0", "storage_balancing.max_parallel_per_storage"),
])
def test_a_bad_storage_balancing_key_is_named(tmp_path: Path, yaml: str, words: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"storage_balancing:\n  {yaml}\n")
    with pytest.raises(ConfigError, match=words):
        load_settings(cfg)
