"""Storages as PVE shows and names them: storage.cfg (`GET /storage`), each node's view
(`GET /nodes/NODE/storage`), the volumes on one (`GET /nodes/NODE/storage/STORAGE/content`), and the
helpers a disk move needs (disks.py): PVE's checks of a storage, its usage, its volume names.

Usage lives in the /cluster/resources storage entries (one per node that sees the storage); a shared
storage's entries all change together. Volumes are read from the guests' configs (disk lines and
`unusedN`), plus the volumes a running disk move has allocated: the simulator keeps no other list.
Formats and names follow pve-storage: file plugins (dir, NFS, CIFS, ...) hold `VMID/vm-VMID-disk-N.FMT`
in raw, qcow2 or vmdk; block plugins (LVM, ZFS, RBD, ...) `vm-VMID-disk-N`, raw only (a CT on ZFS:
`subvol-VMID-disk-N`); a template's volumes are `base-...`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from .api import Api, Request, route
from .cluster import ApiError, Cluster, Guest

FILE_PLUGINS = {"dir", "nfs", "cifs", "glusterfs", "cephfs", "btrfs"}
FORMATS = ("raw", "qcow2", "vmdk")
_NAME = re.compile(r"^(?:\d+/)?(?:vm|base|subvol|basevol)-(\d+)-disk-(\d+)")


def checked_entry(c: Cluster, storage: str, node: str) -> dict[str, Any]:
    """The storage as the node sees it, or PVE's storage_config / storage_check_node error."""
    if not any(s["storage"] == storage for s in c.storages):
        raise ApiError(500, f"storage '{storage}' does not exist")
    entry = c.storage_entry(node, storage)
    if entry is None:
        raise ApiError(500, f"storage '{storage}' is not available on node '{node}'")
    return entry


def holds(entry: dict[str, Any], content: str) -> bool:
    return content in str(entry.get("content", "")).split(",")


def add_usage(c: Cluster, storage: str, node: str, nbytes: int) -> None:
    """A volume of `nbytes` (negative: freed) on the storage as the node sees it: each node's entry
    of a shared storage changes, only the node's own of a local one (cluster lock held)."""
    entry = c.storage_entry(node, storage)
    if entry is None:
        return
    for s in [s for s in c.storages if s["storage"] == storage] if entry.get("shared") else [entry]:
        s["disk"] = max(int(s.get("disk", 0)) + nbytes, 0)
        if nbytes > 0 and int(s.get("maxdisk", 0)) > 0:
            c.stats.note_storage(f"{s['node']}/{storage}", int(s["disk"]) / int(s["maxdisk"]))


def free_guest_volumes(c: Cluster, g: Guest, kept: dict[str, int]) -> int:
    """A guest destroyed with `--purge`: every volume its config names (unused ones too) is freed on its
    storage (cluster lock held). `kept`: sizes of unused volumes, which have no size=. Bytes freed."""
    sizes = {volid: size for _, _, volid, size in c.volumes(g)}
    freed = 0
    for _, volid in config_volumes(g):
        size = sizes[volid] if volid in sizes else kept.pop(volid, 0)
        add_usage(c, volid.partition(":")[0], g.node, -size)
        freed += size
    return freed


def free_bytes(c: Cluster, storage: str, node: str) -> int:
    entry = c.storage_entry(node, storage) or {}
    return max(int(entry.get("maxdisk", 0)) - int(entry.get("disk", 0)), 0)


def endpoint(c: Cluster, storage: str, node: str) -> str:
    """Who carries a copy's data: a shared storage is one for the cluster, a local one is the node's."""
    entry = c.storage_entry(node, storage)
    return storage if entry is not None and entry.get("shared") else f"{node}/{storage}"


def formats(entry: dict[str, Any]) -> tuple[str, ...]:
    return FORMATS if entry.get("plugintype") in FILE_PLUGINS else ("raw",)


def format_of(volid: str) -> str:
    name = volid.split(":", 1)[-1]
    if name.startswith(("subvol-", "basevol-")) or "/subvol-" in name:
        return "subvol"
    return next((fmt for fmt in FORMATS if name.endswith(f".{fmt}")), "raw")


def config_volumes(g: Guest) -> Iterable[tuple[str, str]]:
    """(config key, volid) of every volume line in the guest's config, unused ones included."""
    for key, value in g.config.items():
        if not isinstance(value, str) or key in ("lock", "digest") or ":" not in value.split(",", 1)[0]:
            continue
        volid = value.split(",", 1)[0]
        storage, _, name = volid.partition(":")
        if _NAME.match(name) and storage:
            yield key, volid


def next_volid(c: Cluster, g: Guest, storage: str, node: str, fmt: str, reserved: Iterable[str]) -> str:
    """The storage plugin's next free name for the guest (find_free_diskname: the lowest N)."""
    taken = set()
    names = [v for other in c.guests.values() for _, v in config_volumes(other)] + list(reserved)
    for volid in names:
        found = _NAME.match(volid.partition(":")[2])
        if volid.startswith(f"{storage}:") and found and int(found.group(1)) == g.vmid:
            taken.add(int(found.group(2)))
    n = next(i for i in range(len(taken) + 1) if i not in taken)
    plugin = (c.storage_entry(node, storage) or {}).get("plugintype")
    base = "base" if g.config.get("template") or g.entry.get("template") else "vm"
    if plugin in FILE_PLUGINS:
        return f"{storage}:{g.vmid}/{base}-{g.vmid}-disk-{n}.{fmt}"
    if g.type == "lxc" and plugin == "zfspool":
        return f"{storage}:subvol-{g.vmid}-disk-{n}"
    return f"{storage}:{base}-{g.vmid}-disk-{n}"


# --- the API's views ----------------------------------------------------------------------------

def storage_config(c: Cluster) -> list[dict[str, Any]]:
    """storage.cfg: the scenario's `/storage` when it has one, else what its storage entries say."""
    if c.storage_cfg:
        return [dict(s) for s in c.storage_cfg]
    out: dict[str, dict[str, Any]] = {}
    for s in c.storages:
        cfg = out.setdefault(s["storage"], {"storage": s["storage"], "type": s.get("plugintype", "dir"),
                                            "content": s.get("content", ""), "shared": int(s.get("shared", 0)),
                                            "nodes": []})
        cfg["nodes"].append(s["node"])
    for cfg in out.values():  # `nodes` only where the storage is restricted to some nodes
        nodes = cfg.pop("nodes")
        if set(nodes) != set(c.nodes):
            cfg["nodes"] = ",".join(sorted(nodes))
    return list(out.values())


@route("GET", r"/storage")
def storage_list(api: Api, req: Request, m: re.Match[str]) -> Any:
    wanted = req.params.get("type")
    out = [s for s in storage_config(api.cluster) if wanted in (None, s.get("type"))]
    for s in out:
        s["digest"] = hashlib.sha1(json.dumps(s, sort_keys=True).encode()).hexdigest()
    return out


@route("GET", r"/storage/(?P<storage>[^/]+)")
def storage_one(api: Api, req: Request, m: re.Match[str]) -> Any:
    found = next((s for s in storage_config(api.cluster) if s["storage"] == m["storage"]), None)
    if found is None:
        raise ApiError(500, f"storage '{m['storage']}' does not exist")
    return found


@route("GET", r"/nodes/(?P<node>[^/]+)/storage")
def node_storages(api: Api, req: Request, m: re.Match[str]) -> Any:
    """pve-manager API2/Storage/Status.pm index: each storage the node sees, with its usage."""
    c = api.cluster
    c.node(m["node"])
    content, only = req.params.get("content"), req.params.get("storage")
    out = []
    for s in c.storages:
        if s["node"] != m["node"] or only not in (None, s["storage"]) or (content and not holds(s, content)):
            continue
        total, used = int(s.get("maxdisk", 0)), int(s.get("disk", 0))
        active = int(s.get("status", "available") == "available")
        out.append({"storage": s["storage"], "type": s.get("plugintype"), "content": s.get("content", ""),
                    "shared": int(s.get("shared", 0)), "enabled": 1, "active": active, "total": total,
                    "used": used, "avail": max(total - used, 0), "used_fraction": used / total if total else 0})
    return out


@route("GET", r"/nodes/(?P<node>[^/]+)/storage/(?P<storage>[^/]+)/content")
def storage_content(api: Api, req: Request, m: re.Match[str]) -> Any:
    """The guest volumes on the storage (content `images` for VMs, `rootdir` for CTs), with their
    owner and size; a volume a running disk move has allocated is there too (disks.py)."""
    from .disks import moves_of  # disks.py imports this module

    c = api.cluster
    c.node(m["node"])
    entry = checked_entry(c, m["storage"], m["node"])
    shared = bool(entry.get("shared"))
    vmid = req.params.get("vmid")
    out = []
    seen: set[str] = set()
    moving = [(mv.guest, mv.new_volid, mv.allocated) for mv in moves_of(api.tasks).running.values() if mv.new_volid]
    sizes = dict(moves_of(api.tasks).kept)
    sizes.update({volid: size for g in c.guests.values() for _, _, volid, size in c.volumes(g)})
    listed = [(g, volid, sizes.get(volid, 0)) for g in c.guests.values() for _, volid in config_volumes(g)]
    for g, volid, size in listed + moving:
        if volid in seen or not volid.startswith(f"{m['storage']}:") or (not shared and g.node != m["node"]):
            continue
        if vmid not in (None, "") and str(g.vmid) != str(vmid):
            continue
        seen.add(volid)
        kind = "images" if g.type == "qemu" else "rootdir"
        if req.params.get("content") not in (None, "", kind):
            continue
        out.append({"volid": volid, "vmid": g.vmid, "size": size, "format": format_of(volid), "content": kind})
    return sorted(out, key=lambda v: str(v["volid"]))
