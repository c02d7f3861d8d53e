"""What storage balancing plans on, read from a snapshot: the groups of storages, their figures, the
disks that may move (with the storages each may go to) and the ones that stay, with the reason.

PVE's own refusals decide what stays (read in its sources, 2026):
- pve-container src/PVE/API2/LXC.pm, move_volume: "cannot move volumes of a running container", and
  "you can't move a volume with snapshots and delete the source" (the plan moves with delete=1).
- qemu-server src/PVE/API2/Qemu.pm, move_vm_disk: "you can't move a cdrom", "you can't move a disk with
  snapshots and delete the source"; src/PVE/QemuServer.pm clone_disk: "cannot move TPM state while VM
  is running" (a running VM's other disks move online, by drive mirror).
- Both check the config lock first (check_lock): a locked guest's disks stay.
Templates stay too: their disks are the base images of linked clones.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from pvebalance.shared.config import StorageBalancingSettings
from pvebalance.shared.models import ClusterSnapshot, GuestDisk, GuestState, GuestType

from .storage_models import DiskMove, DiskStay, StayKind


@dataclass
class Store:
    """A shared storage as the cluster sees it (one /cluster/resources entry per node)."""

    id: str
    total: int
    used: int  # bytes used now, plus what moves in flight copy onto it (their sources not yet freed)
    content: frozenset[str]
    nodes: frozenset[str]  # where it is available
    freed: int = 0  # bytes that moves in flight free on it when they end

    def limit(self, max_usage: float) -> float:
        return self.total * max_usage / 100.0


@dataclass(frozen=True)
class Candidate:
    """A disk that may move, and the storages of its group it may move to."""

    vmid: int
    guest_type: GuestType
    node: str
    disk: str
    source: str
    size: int
    targets: tuple[str, ...]
    name: str = ""


@dataclass
class Facts:
    groups: list[list[str]] = field(default_factory=list)
    stores: dict[str, Store] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    stays: list[DiskStay] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def shared_stores(snapshot: ClusterSnapshot) -> dict[str, Store]:
    """The shared storages, each once; a storage's figures are the same from every node, so the largest
    reading is kept (a node that reads it inactive reports 0). The API shows storages as this counts them."""
    out: dict[str, Store] = {}
    for s in sorted(snapshot.storages, key=lambda s: (s.storage, s.node)):
        if not s.shared:
            continue
        known = out.get(s.storage)
        nodes = frozenset([s.node]) if s.active else frozenset[str]()
        if known is None:
            out[s.storage] = Store(s.storage, s.maxdisk, s.disk, frozenset(s.content), nodes)
        else:
            known.total, known.used = max(known.total, s.maxdisk), max(known.used, s.disk)
            known.content |= frozenset(s.content)
            known.nodes |= nodes
    return out


def _groups(settings: StorageBalancingSettings, stores: dict[str, Store], snapshot: ClusterSnapshot,
            notes: list[str]) -> list[list[str]]:
    if not settings.groups:
        found = sorted(s for s, st in stores.items()
                       if st.total > 0 and st.nodes and st.content & {"images", "rootdir"})
        return [found] if len(found) >= 2 else []
    local = {s.storage for s in snapshot.storages if not s.shared}
    groups = []
    for listed in settings.groups:
        kept = []
        for sid in listed:
            if sid in stores and stores[sid].total > 0 and stores[sid].nodes:
                kept.append(sid)
            elif sid in stores:
                notes.append(f"storage {sid}: no capacity reported or available on no node: left out of its group")
            elif sid in local:
                notes.append(f"storage {sid}: not shared (one per node): only shared storages are balanced")
            else:
                notes.append(f"storage {sid}: not in the snapshot")
        groups.append(kept)
    return groups


def _content(gtype: GuestType) -> str:
    return "images" if gtype is GuestType.QEMU else "rootdir"


def _guest_stay(g: GuestState, ignore: Collection[int], migrating: set[int]) -> tuple[StayKind, str] | None:
    """Why every disk of this guest stays, if one reason holds for all of them."""
    if g.template:
        return "template", "template: its disks are the base images of linked clones"
    if g.lock:
        return "locked", f"locked ({g.lock}): PVE moves no disk of a locked guest"
    if g.vmid in ignore:
        return "ignored", "ignored by the operator (balancing.ignore_guests)"
    if g.vmid in migrating:
        return "migrating", "being migrated"
    if g.has_snapshots:
        return "snapshots", "has snapshots: PVE refuses to move a disk a snapshot uses and delete the source"
    if g.type is GuestType.LXC and g.running:
        return "running-container", "running container: PVE's move_volume refuses while the container runs"
    return None


def _disk_stay(g: GuestState, d: GuestDisk, stores: dict[str, Store], group: list[str], online: set[str],
               ) -> tuple[StayKind, str] | tuple[None, tuple[str, ...]]:
    """Why this disk stays, or the storages it may move to."""
    if d.cdrom:
        return "cdrom", "CD-ROM image: PVE moves no CD-ROM"
    if d.key == "tpmstate0" and g.running:
        return "running-tpm", "TPM state of a running VM: PVE moves it only while the VM is stopped"
    if d.size <= 0:
        return "no-size", "its config gives no size"
    if g.node not in online:
        return "node-offline", f"its node {g.node} is offline"
    content = _content(g.type)
    holding = [s for s in group if s != d.storage and content in stores[s].content]
    if not holding:
        return "no-content", f"no other storage of its group holds {content}"
    targets = tuple(s for s in holding if g.node in stores[s].nodes)
    if not targets:
        return "not-available", f"no other storage of its group with {content} is available on {g.node}"
    return None, targets


def read_facts(snapshot: ClusterSnapshot, settings: StorageBalancingSettings, ignore: Collection[int],
               in_flight: Sequence[DiskMove], migrated: Collection[int] = ()) -> Facts:
    """`migrated`: guests the same plan migrates (a disk move runs on the guest's node: theirs stay)."""
    facts = Facts(stores=shared_stores(snapshot))
    facts.groups = _groups(settings, facts.stores, snapshot, facts.notes)
    group_of = {sid: group for group in facts.groups for sid in group}
    moving = {(m.vmid, m.disk) for m in in_flight}
    for m in in_flight:  # the target holds the copy from the start, the source frees only at the end
        if m.target in facts.stores:
            facts.stores[m.target].used += m.size
        if m.source in facts.stores:
            facts.stores[m.source].freed += m.size
    migrating = {m.vmid for m in snapshot.in_flight} | set(migrated)
    online = {n.name for n in snapshot.nodes if n.online}
    for g in sorted(snapshot.guests, key=lambda g: g.vmid):
        whole = _guest_stay(g, ignore, migrating)
        for d in g.disks:
            if d.storage not in group_of:
                continue
            kind: StayKind | None
            if (g.vmid, d.key) in moving:
                kind, reason = "moving", "a move of this disk is in flight"
            elif whole is not None:
                kind, reason = whole
            else:
                kind, found = _disk_stay(g, d, facts.stores, group_of[d.storage], online)
                if kind is None:
                    assert isinstance(found, tuple)
                    facts.candidates.append(Candidate(g.vmid, g.type, g.node, d.key, d.storage, d.size, found,
                                                     g.name))
                    continue
                assert isinstance(found, str)
                reason = found
            facts.stays.append(DiskStay(vmid=g.vmid, guest_type=g.type, node=g.node, disk=d.key,
                                        storage=d.storage, kind=kind, reason=reason))
    return facts
