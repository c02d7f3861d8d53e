"""The simulated cluster's state: nodes, guests, storages, HA and pools, loaded from a recorded dump.

Node usage is never stored: it is the host's own overhead (what the recorded node used beyond its
guests, varying over time, see realism.py) plus the guests that live on the node now, as the host
sees them (`memhost` for VMs), plus the guests migrating live onto it, so it follows every
migration. Answers show node figures as they were `figure_lag` seconds ago.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from .realism import FigureHistory, Realism, host_factor, qemu_overhead
from .stats import Stats

__all__ = ["ApiError", "Cluster", "Guest", "Node", "Stats"]

# Config keys that hold a guest's disks (qemu-server's drive keys; pve-container's rootfs and mount points)
_VM_DISK = re.compile(r"^(ide|sata|scsi|virtio)\d+$|^efidisk0$|^tpmstate0$")
_CT_DISK = re.compile(r"^rootfs$|^mp\d+$")
_UNIT = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(size: str) -> int:
    """A config's size= (`32G`, `512M`, `1.5T`, bytes without a unit)."""
    unit = _UNIT.get(size[-1:].upper(), 1)
    number = size[:-1] if unit != 1 else size
    try:
        return int(float(number) * unit)
    except ValueError:
        return 0


class ApiError(Exception):
    """Answered as PVE answers an error: status, reason = first line of the message, JSON body."""

    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


@dataclass
class Guest:
    entry: dict[str, Any]  # the /cluster/resources entry, kept current
    config: dict[str, Any]
    paused: bool = False  # at the switch-over of a live migration

    @property
    def host_mem(self) -> int:
        """The memory the host gives a running guest: `memhost` for a VM, `mem` for a container."""
        if not self.running:
            return 0
        if self.type == "qemu":
            return int(self.entry.get("memhost") or self.memhost)
        return int(self.entry.get("mem", 0))

    @property
    def memhost(self) -> int:
        """PVE 9's host-side view of a running VM's memory: the recorded one, or mem plus QEMU's own."""
        if "memhost" in self.entry:
            return int(self.entry["memhost"])
        return int(self.entry.get("mem", 0)) + qemu_overhead(int(self.entry.get("maxmem", 0)))

    @property
    def vmid(self) -> int:
        return int(self.entry["vmid"])

    @property
    def type(self) -> str:
        return str(self.entry["type"])

    @property
    def node(self) -> str:
        return str(self.entry["node"])

    @property
    def running(self) -> bool:
        return self.entry.get("status") == "running"

    @property
    def lock(self) -> str | None:
        return self.config.get("lock") or None


@dataclass
class Node:
    entry: dict[str, Any]
    mem_overhead: int  # the host's own memory use as recorded; it varies around this (realism.py)
    cpu_overhead: float  # cores
    index: int = 0  # its place in the cluster, so each node's overhead swings in its own phase

    @property
    def name(self) -> str:
        return str(self.entry["node"])

    @property
    def online(self) -> bool:
        return self.entry.get("status") == "online"


class Cluster:
    """All state behind one lock: handlers are served from several threads."""

    def __init__(self, dump: dict[str, Any], realism: Realism | None = None, time_scale: float = 1.0) -> None:
        api = copy.deepcopy(dump["api"])
        self.name: str = dump.get("name", "pve")
        self.realism = realism if realism is not None else Realism()
        self.time_scale = time_scale
        self.lock = threading.RLock()
        self.stats = Stats()
        self.incoming: dict[int, str] = {}  # vmid -> target: live migrations holding memory there
        res = api["/cluster/resources"]
        self.guests: dict[int, Guest] = {}
        for e in res:
            if e.get("type") in ("qemu", "lxc"):
                cfg = api.get(f"/nodes/{e['node']}/{e['type']}/{e['vmid']}/config") or {}
                self.guests[int(e["vmid"])] = Guest(entry=e, config=dict(cfg))
        self.nodes: dict[str, Node] = {}
        for e in res:
            if e.get("type") == "node":
                on_node = [g for g in self.guests.values() if g.node == e["node"] and g.running]
                mem = int(e.get("mem", 0)) - sum(self._host_mem(g) for g in on_node)
                cores = float(e.get("cpu", 0)) * int(e.get("maxcpu", 1)) - sum(
                    float(g.entry.get("cpu", 0)) * int(g.entry.get("maxcpu", 1)) for g in on_node
                )
                self.nodes[e["node"]] = Node(entry=e, mem_overhead=max(mem, 0), cpu_overhead=max(cores, 0.0),
                                             index=len(self.nodes))
        self.storages = [e for e in res if e.get("type") == "storage"]
        self.storage_cfg: list[dict[str, Any]] = list(api.get("/storage") or [])  # storage.cfg (storages.py)
        self.ha_rules: list[dict[str, Any]] = api.get("/cluster/ha/rules") or []
        self.ha_resources: list[dict[str, Any]] = api.get("/cluster/ha/resources") or []
        self.pools = {p["poolid"]: p for p in api.get("/pools") or []}
        self.options: dict[str, Any] = api.get("/cluster/options") or {}
        self.backups: list[dict[str, Any]] = list(api.get("/cluster/backup") or [])  # vzdump jobs (backups.py)
        # /nodes/NODE/status as recorded, when the dump has it (the CPU model); generated otherwise
        self.node_status: dict[str, dict[str, Any]] = {n: api[f"/nodes/{n}/status"] for n in self.nodes
                                                       if isinstance(api.get(f"/nodes/{n}/status"), dict)}
        self.figures = FigureHistory(self.realism.figure_lag * time_scale)
        self.figures.record(self.usage(), now=float("-inf"))
        self.note_mem()

    # --- views -------------------------------------------------------------------------------

    def guest(self, vmid: int, node: str | None = None, gtype: str | None = None) -> Guest:
        g = self.guests.get(vmid)
        if g is None or (node is not None and g.node != node) or (gtype is not None and g.type != gtype):
            kind = "lxc" if gtype == "lxc" else "qemu-server"
            raise ApiError(500, f"Configuration file 'nodes/{node}/{kind}/{vmid}.conf' does not exist")
        return g

    def node(self, name: str, require_online: bool = True) -> Node:
        n = self.nodes.get(name)
        if n is None:
            raise ApiError(500, f"no such cluster node '{name}'")
        if require_online and not n.online:
            raise ApiError(595, "No route to host")
        return n

    def _host_mem(self, g: Guest) -> int:
        return g.host_mem if self.realism.memhost else int(g.entry.get("mem", 0)) if g.running else 0

    def usage(self) -> dict[str, tuple[int, float]]:
        """Memory and cores the running guests use now, per node, in one pass over the guests; a guest
        migrating live counts on its target too."""
        usage: dict[str, tuple[int, float]] = {}
        for g in self.guests.values():
            if g.running:
                mem, cores = usage.get(g.node, (0, 0.0))
                usage[g.node] = (mem + self._host_mem(g),
                                 cores + float(g.entry.get("cpu", 0)) * int(g.entry.get("maxcpu", 1)))
        for vmid, target in self.incoming.items():
            moving = self.guests.get(vmid)
            if moving is not None and moving.running:
                mem, cores = usage.get(target, (0, 0.0))
                usage[target] = (mem + self._host_mem(moving), cores)
        return usage

    def mem_ratios(self) -> dict[str, float]:
        """Each node's memory use / maxmem now: the host's recorded overhead (without its swing, noise
        no balancer controls) plus its running guests and the guests migrating live onto it."""
        usage = self.usage()
        return {name: (n.mem_overhead + usage.get(name, (0, 0.0))[0]) / max(int(n.entry.get("maxmem", 1)), 1)
                for name, n in self.nodes.items()}

    def note_mem(self) -> None:
        """Called whenever guests land on, leave or start migrating to nodes: the stats keep each node's
        peak, and the answers' lagging figures their history."""
        self.figures.record(self.usage())
        self.stats.note_mem(self.mem_ratios())

    def start_incoming(self, g: Guest, target: str) -> None:
        """A live migration began copying: the target holds the guest's memory from now on."""
        if self.realism.live_memory and g.running:
            self.incoming[g.vmid] = target
            self.note_mem()

    def end_incoming(self, g: Guest) -> None:
        if self.incoming.pop(g.vmid, None) is not None:
            self.note_mem()

    def reset_stats(self) -> None:
        self.stats.reset(self.mem_ratios())

    def move_guest(self, g: Guest, target: str) -> None:
        g.entry["node"] = target
        self.incoming.pop(g.vmid, None)
        self.note_mem()

    def delete_guest(self, vmid: int) -> Guest:
        """Gone from the cluster, as `qm destroy --purge` leaves it: no config, no HA resource."""
        g = self.guest(vmid)
        del self.guests[vmid]
        self.incoming.pop(vmid, None)
        sid = f"{'vm' if g.type == 'qemu' else 'ct'}:{vmid}"
        self.ha_resources[:] = [r for r in self.ha_resources if r.get("sid") != sid]
        self.note_mem()
        return g

    def shown_usage(self) -> dict[str, tuple[int, float]]:
        """Node usage as the answers show it: `figure_lag` seconds old."""
        return self.figures.at_lag()  # type: ignore[no-any-return]

    def node_entry(self, n: Node, usage: dict[str, tuple[int, float]] | None = None) -> dict[str, Any]:
        """The node's /cluster/resources entry; `usage` defaults to the lagging figures answers show."""
        e = dict(n.entry)
        if not n.online:
            return {k: v for k, v in e.items() if k not in ("cpu", "mem", "uptime")}
        mem, cores = (usage if usage is not None else self.shown_usage()).get(n.name, (0, 0.0))
        seen_at = time.time() - self.realism.figure_lag * self.time_scale
        overhead = n.mem_overhead * host_factor(self.realism, n.index, seen_at, self.time_scale)
        e["mem"] = int(overhead) + mem
        e["cpu"] = round(min((n.cpu_overhead + cores) / max(int(e.get("maxcpu", 1)), 1), 1.0), 4)
        return e

    def guest_entry(self, g: Guest) -> dict[str, Any]:
        e = dict(g.entry)
        if g.lock:
            e["lock"] = g.lock
        else:
            e.pop("lock", None)
        if g.type == "qemu" and (self.realism.memhost or "memhost" in e):
            e["memhost"] = g.memhost if g.running else 0
        return e

    def resources(self, rtype: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if rtype in (None, "node"):
            usage = self.shown_usage()
            out += [self.node_entry(n, usage) for n in self.nodes.values()]
        if rtype in (None, "vm"):
            out += [self.guest_entry(g) for g in sorted(self.guests.values(), key=lambda g: g.vmid)]
        if rtype in (None, "storage"):
            out += [dict(s) for s in self.storages]
        if rtype in (None, "pool"):
            out += [{"id": f"/pool/{p}", "type": "pool", "pool": p} for p in self.pools]
        return out

    def config(self, g: Guest) -> dict[str, Any]:
        cfg = dict(g.config)
        if g.lock:
            cfg["lock"] = g.lock
        cfg["digest"] = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()
        return cfg

    def is_ha_managed(self, g: Guest) -> bool:
        sid = f"{'vm' if g.type == 'qemu' else 'ct'}:{g.vmid}"
        return any(r.get("sid") == sid and r.get("state", "started") != "ignored" for r in self.ha_resources)

    def shared_storage(self, node: str, storage: str) -> bool:
        for s in self.storages:
            if s["node"] == node and s["storage"] == storage:
                return bool(s.get("shared", 0))
        return False

    def volumes(self, g: Guest) -> list[tuple[str, str, str, int]]:
        """(config key, storage, volid, bytes) of each disk in the guest's config, as PVE reads them
        (its own reading, not the balancer's): CD-ROMs and `none` drives are no disks."""
        out = []
        for key, value in g.config.items():
            if not isinstance(value, str) or not (_VM_DISK if g.type == "qemu" else _CT_DISK).match(key):
                continue
            volid, *options = value.split(",")
            if ":" not in volid or volid.startswith("none") or "media=cdrom" in options:
                continue
            size = next((_bytes(o[5:]) for o in options if o.startswith("size=")), 0)
            out.append((key, volid.split(":", 1)[0], volid, size))
        return out

    def local_disks(self, g: Guest) -> list[dict[str, Any]]:
        return [
            {"volid": volid, "size": size, "drivename": key, "cdrom": 0,
             "is_unused": 0, "is_attached": 1, "shared": 0, "replicate": 0}
            for key, storage, volid, size in self.volumes(g)
            if not self.shared_storage(g.node, storage)
        ]

    def storage_entry(self, node: str, storage: str) -> dict[str, Any] | None:
        return next((s for s in self.storages if s["node"] == node and s["storage"] == storage), None)

    def unavailable_storages(self, g: Guest, target: str) -> list[str]:
        """The storages of the guest's local disks that the target does not have active."""
        missing = set()
        for disk in self.local_disks(g):
            storage = disk["volid"].split(":", 1)[0]
            entry = self.storage_entry(target, storage)
            if entry is None or entry.get("status", "available") != "available":
                missing.add(storage)
        return sorted(missing)

    def copy_disks(self, g: Guest, target: str) -> str | None:
        """A migration starts copying the guest's local disks: their volumes are allocated on the
        target's storage of the same id. An error (and nothing allocated) when one does not fit."""
        disks = [(d["volid"].split(":", 1)[0], int(d["size"])) for d in self.local_disks(g)]
        for storage, size in disks:
            entry = self.storage_entry(target, storage)
            if entry is None:
                return f"storage '{storage}' is not available on node '{target}'"
            if int(entry.get("disk", 0)) + size > int(entry.get("maxdisk", 0)):
                return (f"storage migration failed: volume {g.vmid} on '{storage}': "
                        "No space left on device")
        self._add_disks(target, disks, 1)
        return None

    def release_disks(self, g: Guest, node: str) -> None:
        """The guest's local volumes are freed on the node (the source after a migration, the target
        after one that failed)."""
        self._add_disks(node, [(d["volid"].split(":", 1)[0], int(d["size"])) for d in self.local_disks(g)], -1)

    def _add_disks(self, node: str, disks: list[tuple[str, int]], sign: int) -> None:
        for storage, size in disks:
            entry = self.storage_entry(node, storage)
            if entry is not None:
                entry["disk"] = max(int(entry.get("disk", 0)) + sign * size, 0)
                if sign > 0 and int(entry.get("maxdisk", 0)) > 0:
                    self.stats.note_storage(f"{node}/{storage}", int(entry["disk"]) / int(entry["maxdisk"]))

    def rrd_rows(
        self, varying: dict[str, float], fixed: dict[str, float], cf: str, timeframe: str
    ) -> list[dict[str, Any]]:
        """70 rows whose AVERAGE series has the current values as its mean (a gentle wave)."""
        step = {"hour": 60, "day": 1800, "week": 10800, "month": 43200, "year": 604800}.get(timeframe, 60)
        now = int(time.time()) // step * step
        rows = []
        for i in range(70):
            wave = 0.05 * math.sin(2 * math.pi * i / 10)
            factor = 1 + (abs(wave) + 0.05 if cf == "MAX" else wave)
            row: dict[str, Any] = {"time": now - (69 - i) * step, **fixed}
            row.update({k: v * factor for k, v in varying.items()})
            rows.append(row)
        return rows
