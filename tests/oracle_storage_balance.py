"""An independent judge of a storage balancing plan: its disk moves replayed on the raw API answers.

It reads a recorded cluster's `api` mapping (pve-api-dump/1) itself: the storage entries of
/cluster/resources and the disk lines of each guest config, never pvebalance's parsers or models. It
checks that every move is one PVE would run (a disk, not a CD-ROM, of an unlocked, non-template guest
without snapshots; no running container's volume, no running VM's TPM state; a target of the same
group that holds the content and is available on the guest's node), replays the batches (a move
holds its size on its target from its start and frees its source only after its batch has ended;
each storage in at most `per_storage` moves of a batch), and reports any storage that receives while
it is above `max_usage`, and each group's spread at the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.oracle_storage import DISK_KEYS, disk_size


@dataclass(frozen=True)
class Move:
    vmid: int
    disk: str
    source: str
    target: str
    batch: int


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    spreads: dict[tuple[str, ...], float] = field(default_factory=dict)  # group -> pp at the end
    percent: dict[str, float] = field(default_factory=dict)  # storage -> % at the end
    gib: float = 0.0


@dataclass
class _Storage:
    total: int = 0
    used: int = 0
    shared: bool = False
    content: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)


def _storages(api: Mapping[str, Any]) -> dict[str, _Storage]:
    out: dict[str, _Storage] = {}
    for e in api["/cluster/resources"]:
        if e.get("type") != "storage" or not e.get("shared"):
            continue
        s = out.setdefault(e["storage"], _Storage(shared=True))
        s.total = max(s.total, int(e.get("maxdisk") or 0))
        s.used = max(s.used, int(e.get("disk") or 0))
        s.content |= set(str(e.get("content", "images")).split(","))
        if e.get("status", "available") == "available":
            s.nodes.add(e["node"])
    return out


def capacities(api: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Each shared storage's (capacity, bytes used), as `judge` reads them."""
    return {sid: (s.total, s.used) for sid, s in _storages(api).items()}


def default_group(api: Mapping[str, Any]) -> list[str]:
    """The shared storages holding guest disks (images or rootdir), with a capacity."""
    return sorted(sid for sid, s in _storages(api).items()
                  if s.total > 0 and s.nodes and s.content & {"images", "rootdir"})


def _why_not(api: Mapping[str, Any], guest: Mapping[str, Any], config: Mapping[str, Any], disk: str,
             target: _Storage, target_id: str) -> str | None:
    gtype, running = guest["type"], guest.get("status") == "running"
    line = config.get(disk)
    if not isinstance(line, str) or not DISK_KEYS[gtype].match(disk):
        return "no such disk"
    if "media=cdrom" in line.split(","):
        return "a CD-ROM"
    if guest.get("template") or config.get("template"):
        return "a template's disk"
    if guest.get("lock") or config.get("lock"):
        return "a locked guest's disk"
    if config.get("parent"):
        return "a disk of a guest with snapshots"
    if gtype == "lxc" and running:
        return "a running container's volume"
    if disk == "tpmstate0" and running:
        return "a running VM's TPM state"
    if ("images" if gtype == "qemu" else "rootdir") not in target.content:
        return f"{target_id} lacks the content type"
    if guest["node"] not in target.nodes:
        return f"{target_id} is not available on {guest['node']}"
    return None


def judge(api: Mapping[str, Any], moves: Iterable[Move], *, max_usage: float, per_storage: int = 1,
          groups: Sequence[Sequence[str]] | None = None) -> Verdict:
    """Every problem of the plan in words (none: a plan PVE would run safely), and where it ends."""
    storages = _storages(api)
    groups = [list(g) for g in groups] if groups else [default_group(api)]
    group_of = {sid: tuple(g) for g in groups for sid in g}
    guests = {int(e["vmid"]): e for e in api["/cluster/resources"] if e.get("type") in ("qemu", "lxc")}
    used = {sid: float(s.used) for sid, s in storages.items()}
    where: dict[tuple[int, str], str] = {}
    verdict = Verdict()
    batches: dict[int, list[Move]] = {}
    for m in moves:
        batches.setdefault(m.batch, []).append(m)
    for b in sorted(batches):
        busy: dict[str, int] = {}
        arriving: dict[str, float] = {}
        sized = []
        for m in batches[b]:
            guest = guests.get(m.vmid)
            if guest is None:
                verdict.problems.append(f"{m}: no guest {m.vmid}")
                continue
            config = api.get(f"/nodes/{guest['node']}/{guest['type']}/{m.vmid}/config") or {}
            line = config.get(m.disk)
            volume, *options = (line or ",").split(",")
            on = where.get((m.vmid, m.disk), volume.split(":", 1)[0])
            if (m.vmid, m.disk) in where:
                verdict.problems.append(f"{m}: the disk moves twice")
            target = storages.get(m.target)
            if on != m.source:
                verdict.problems.append(f"{m}: the disk is on {on!r}, not {m.source}")
            if target is None or group_of.get(m.target) is None or group_of.get(m.target) != group_of.get(m.source):
                verdict.problems.append(f"{m}: {m.target} is not a storage of {m.source}'s group")
                continue
            why = _why_not(api, guest, config, m.disk, target, m.target)
            if why:
                verdict.problems.append(f"{m}: moves {why}")
            size = disk_size(options)
            for sid in (m.source, m.target):
                busy[sid] = busy.get(sid, 0) + 1
                if busy[sid] == per_storage + 1:
                    verdict.problems.append(f"batch {b}: {sid} in more than {per_storage} moves at once")
            arriving[m.target] = arriving.get(m.target, 0.0) + size
            where[(m.vmid, m.disk)] = m.target
            sized.append((m, size))
        for sid, incoming in arriving.items():
            during = used[sid] + incoming
            if during > storages[sid].total * max_usage / 100 + 0.5:
                verdict.problems.append(f"batch {b}: {sid} at {100 * during / storages[sid].total:.2f} % "
                                        f"while it receives (max {max_usage} %)")
        for m, size in sized:
            used[m.target] += size
            used[m.source] -= size
            verdict.gib += size / (1 << 30)
    verdict.percent = {sid: 100 * used[sid] / storages[sid].total for sid in group_of if sid in storages}
    for g in groups:
        pct = [verdict.percent[s] for s in g if s in verdict.percent]
        verdict.spreads[tuple(g)] = max(pct) - min(pct) if pct else 0.0
    return verdict


def movable(api: Mapping[str, Any], groups: Sequence[Sequence[str]] | None = None) -> list[tuple[int, str, str, int]]:
    """(vmid, disk, storage, bytes) of every disk on a group's storage that may move to another
    storage of its group: for brute-force searches over small clusters."""
    return [(vmid, disk, sid, size) for vmid, disk, sid, size, _ in movable_targets(api, groups)]


def movable_targets(api: Mapping[str, Any], groups: Sequence[Sequence[str]] | None = None,
                    ) -> list[tuple[int, str, str, int, tuple[str, ...]]]:
    """(vmid, disk, storage, bytes, targets) of every disk on a group's storage that may move, with
    the storages of its group it may move to (by the same rules `judge` holds a move to)."""
    storages = _storages(api)
    groups = [list(g) for g in groups] if groups else [default_group(api)]
    group_of = {sid: g for g in groups for sid in g}
    out = []
    for e in api["/cluster/resources"]:
        if e.get("type") not in ("qemu", "lxc"):
            continue
        config = api.get(f"/nodes/{e['node']}/{e['type']}/{e['vmid']}/config") or {}
        for key, line in sorted(config.items()):
            if not isinstance(line, str) or not DISK_KEYS[e["type"]].match(key):
                continue
            volume, *options = line.split(",")
            sid = volume.split(":", 1)[0]
            if sid not in group_of:
                continue
            targets = tuple(t for t in group_of[sid]
                            if t != sid and t in storages and _why_not(api, e, config, key, storages[t], t) is None)
            if targets:
                out.append((int(e["vmid"]), key, sid, disk_size(options), targets))
    return out
