"""Does a guest fit on a node: the one answer, for the engine's plans, their check, and the migrator.

The engine asks it at every step of a plan, `verify` asks it again when it replays the plan, and the
migrator's pre-flight asks it with the live figures right before a migration. They must agree, or a
plan the engine calls safe is refused at run time (or worse, a refused one runs), so there is one
function, and it counts everything: the host reserve, `max_node_usage` and `cpu_overcommit`, and
each local storage the guest's disks are copied onto (`max_storage_usage`, the node's disk reserve).

Figures are what PVE's /cluster/resources reports (bytes, cores, vCPUs); `node_figures` and
`guest_figures` read them from its entries, `snapshot_figures` from a snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pvebalance.shared.models import ClusterSnapshot, GuestState, InFlightMigration, StorageState

from .policy import Policy

GIB = 2**30


@dataclass(frozen=True)
class GuestFigures:
    """What a guest (or several moving together) brings to a node.

    A stopped guest brings no memory: it takes none until it starts, and the vCPU limit counts
    running guests only. Its local disks it brings whether it runs or not: a migration copies them."""

    mem: int  # bytes in use: a /cluster/resources guest entry's `mem`
    maxcpu: int  # vCPUs: its `maxcpu`
    running: bool  # its `status` == "running"
    disks: tuple[tuple[str, int], ...] = ()  # (storage id, bytes) of its local disks, one per storage

    @classmethod
    def of(cls, guests: Iterable[GuestState]) -> GuestFigures:
        """Several guests arriving at once (an affinity group), as one."""
        guests = list(guests)
        running = [g for g in guests if g.running]
        disks: dict[str, int] = {}
        for g in guests:
            for storage, size in g.local_storage_bytes().items():
                disks[storage] = disks.get(storage, 0) + size
        return cls(sum(g.mem for g in running), sum(g.maxcpu for g in running), bool(running),
                   tuple(sorted(disks.items())))


@dataclass(frozen=True)
class StorageFigures:
    """A local storage of a node that holds guest disks: what `fits` checks copied disks against."""

    used: int  # bytes: its /cluster/resources `disk`
    total: int  # bytes: its `maxdisk`


@dataclass(frozen=True)
class NodeFigures:
    """A node as it stands before the guest arrives."""

    name: str  # a /cluster/resources node entry's `node`
    maxmem: int  # bytes: its `maxmem`
    mem: int  # bytes in use, host and guests: its `mem`
    maxcpu: int  # cores: its `maxcpu`
    guests_mem: int = 0  # `mem` summed over the running guests on it (type qemu/lxc, `node` == name)
    guests_vcpus: int = 0  # `maxcpu` summed over the same guests
    # Its active local storages that hold guest disks, by storage id; None: not known (a caller that
    # has no storage facts), and then no storage is checked.
    storages: Mapping[str, StorageFigures] | None = field(default=None, compare=False)

    @property
    def used_mem(self) -> int:
        # The node's own figure can lag behind its guests' (ballooning, a guest that just started):
        # the larger of the two is the safe one.
        return max(self.mem, self.guests_mem)

    def arrive(self, guest: GuestFigures) -> NodeFigures:
        return self._add(guest, 1)

    def leave(self, guest: GuestFigures) -> NodeFigures:
        return self._add(guest, -1)

    def _add(self, guest: GuestFigures, sign: int) -> NodeFigures:
        node = self
        if guest.running:
            node = replace(node, mem=node.mem + sign * guest.mem, guests_mem=node.guests_mem + sign * guest.mem,
                           guests_vcpus=node.guests_vcpus + sign * guest.maxcpu)
        # Disks count on the storage they are copied onto, and are never credited back to the one they
        # leave: a thin volume frees less than its size= (what it really used), and the source's
        # figure catches up only when PVE reports it again. Conservative in one direction only.
        if sign > 0 and guest.disks and node.storages is not None:
            storages = dict(node.storages)
            for storage, size in guest.disks:
                if storage in storages:  # a disk on a storage the node lacks was refused by `fits`
                    s = storages[storage]
                    storages[storage] = StorageFigures(s.used + size, s.total)
            node = replace(node, storages=storages)
        return node


def usable_memory(node: NodeFigures, policy: Policy) -> float:
    """Bytes the node offers guests: its memory less the operator's reserve for the host."""
    return max(node.maxmem - policy.reserved(node.name).memory * GIB, 0.0)


def memory_limit(node: NodeFigures, policy: Policy) -> float:
    """Bytes in use the node may reach at any step: `max_node_usage` percent of its usable memory."""
    return usable_memory(node, policy) * policy.max_node_usage / 100.0


def storage_limit(storage: StorageFigures, node: str, policy: Policy) -> float:
    """Bytes a local storage may hold at any step: `max_storage_usage` percent of it, less the
    node's disk reserve."""
    usable = max(storage.total - policy.reserved(node).disk * GIB, 0.0)
    return usable * policy.max_storage_usage / 100.0


def storage_refusal(guest: GuestFigures, node: NodeFigures, policy: Policy) -> str | None:
    """Why the node's storages cannot take the guest's local disks (None: they can, or the node's
    storages are not known). Each disk goes to the storage of the same id on the target, as PVE
    copies it without `targetstorage`."""
    if not guest.disks or node.storages is None:
        return None
    for storage, size in guest.disks:
        figures = node.storages.get(storage)
        if figures is None:
            return f"{node.name} has no active storage {storage} for the guest's local disks"
        used = figures.used + size
        if used > storage_limit(figures, node.name, policy):
            reserve = policy.reserved(node.name).disk
            usable = max(figures.total - reserve * GIB, 0)
            share = f"{100 * used / usable:.1f}%" if usable else f"{used / GIB:.1f} GiB"
            of = (f" of the {usable / GIB:.0f} GiB left after the node's {reserve:g} GiB disk reserve" if reserve
                  else f" of {figures.total / GIB:.0f} GiB")
            return (f"{node.name}'s {storage} would be at {share}{of}, above max_storage_usage "
                    f"{policy.max_storage_usage:g}%")
    return None


def memory_room(node: NodeFigures, policy: Policy) -> float:
    """Bytes in use the node can still take (below 0: it is above its limit already, and takes
    nothing, not even a stopped guest): a guest fits its memory when what it brings is no more.
    A search that tries many guests on one node reads it once (search._nearest_valid)."""
    return memory_limit(node, policy) - node.used_mem


def brings_memory(guest: GuestFigures) -> int:
    """Bytes in use the guest brings: none while stopped."""
    return guest.mem if guest.running else 0


def memory_refusal(guest: GuestFigures, node: NodeFigures, policy: Policy) -> str | None:
    """Why the node's memory cannot take the guest now (`fits`' first question), else None."""
    if brings_memory(guest) > memory_room(node, policy):
        used = node.used_mem + brings_memory(guest)
        usable = usable_memory(node, policy)
        reserve = policy.reserved(node.name).memory
        of = f" of the {usable / GIB:.1f} GiB left after the host's {reserve:g} GiB" if reserve else ""
        share = f"{100 * used / usable:.1f}%" if usable else f"{used / GIB:.1f} GiB"
        return f"{node.name} would use {share}{of}, above max_node_usage {policy.max_node_usage:g}%"
    return None


def fits(guest: GuestFigures, node: NodeFigures, policy: Policy) -> str | None:
    """None when the guest may arrive on the node now, else why not (one line, for logs and plans).

    A node already above its memory limit takes nothing, not even a stopped guest (which would have
    to start somewhere)."""
    if (why := memory_refusal(guest, node, policy)) is not None:
        return why
    if guest.running and policy.cpu_overcommit is not None:
        vcpus = node.guests_vcpus + guest.maxcpu
        if vcpus > node.maxcpu * policy.cpu_overcommit:
            return (f"{node.name} would run {vcpus} vCPUs on {node.maxcpu} cores, above cpu_overcommit "
                    f"{policy.cpu_overcommit:g}")
    return storage_refusal(guest, node, policy)


def storage_figures(storages: Iterable[StorageState]) -> dict[str, dict[str, StorageFigures]]:
    """Each node's active local storages that hold guest disks, by node and storage id."""
    out: dict[str, dict[str, StorageFigures]] = {}
    for s in storages:
        if s.active and not s.shared and s.holds_guest_disks:
            out.setdefault(s.node, {})[s.storage] = StorageFigures(s.disk, s.maxdisk)
    return out


def snapshot_figures(snapshot: ClusterSnapshot) -> dict[str, NodeFigures]:
    """Every node's figures in a snapshot, its running guests counted."""
    mem: dict[str, int] = {}
    vcpus: dict[str, int] = {}
    for g in snapshot.guests:
        if g.running:
            mem[g.node] = mem.get(g.node, 0) + g.mem
            vcpus[g.node] = vcpus.get(g.node, 0) + g.maxcpu
    # A snapshot without storage entries (an old recording) has no storage facts to check against.
    storages = storage_figures(snapshot.storages) if snapshot.storages else None
    figures = {n.name: NodeFigures(n.name, max(n.maxmem, 0), max(n.mem, 0), n.maxcpu, mem.get(n.name, 0),
                                   vcpus.get(n.name, 0),
                                   None if storages is None else storages.get(n.name, {}))
               for n in snapshot.nodes}
    if snapshot.in_flight:
        guests = {g.vmid: g for g in snapshot.guests}
        for name, node in figures.items():
            listed = {f.vmid for f in snapshot.in_flight if f.vmid in guests and guests[f.vmid].node == name}
            figures[name] = holding_in_flight(node, snapshot.in_flight, listed, guests)
    return figures


def holding_in_flight(node: NodeFigures, flights: Iterable[InFlightMigration], listed: Iterable[int] = (),
                      guests: Mapping[int, GuestState] | None = None) -> NodeFigures:
    """The node with the memory that migrations running from or to it hold there until they end.

    A live migration holds the guest's memory on its target from its start while the source keeps it
    until the switch-over: both nodes carry it. A node's guest list names the guest on one of the two
    only (`listed`: the guests it lists), so each migration whose guest it does not list arrives on it
    here, as `fits` counts an arrival. Figures come from the guest's state when known (`guests`),
    else from the job."""
    here = set(listed)
    for f in flights:
        if node.name not in (f.source, f.target) or f.vmid in here:
            continue
        guest = (guests or {}).get(f.vmid)
        node = node.arrive(GuestFigures.of([guest]) if guest is not None
                           else GuestFigures(f.mem_bytes, 0, f.online, tuple(sorted(f.local_disks.items()))))
    return node


def guest_figures(entry: Mapping[str, Any]) -> GuestFigures:
    """A /cluster/resources guest entry's figures; KeyError, TypeError or ValueError if it has none."""
    return GuestFigures(int(entry.get("mem", 0)), int(entry["maxcpu"]), entry.get("status") == "running")


def node_figures(entry: Mapping[str, Any], guests: Iterable[Mapping[str, Any]]) -> NodeFigures:
    """A /cluster/resources node entry's figures, with the running guests among `guests` (entries of
    type qemu or lxc, as /cluster/resources?type=vm lists them) whose `node` is this one."""
    name = str(entry["node"])
    running = [guest_figures(g) for g in guests if g.get("node") == name and g.get("status") == "running"]
    return NodeFigures(name, int(entry["maxmem"]), int(entry["mem"]), int(entry["maxcpu"]),
                       sum(g.mem for g in running), sum(g.maxcpu for g in running))
