"""The simulated cluster's state: nodes, guests, storages, HA and pools, loaded from a recorded dump.

Node usage is never stored: it is the host's own overhead (what the recorded node used beyond its
guests) plus the guests that live on the node now, so it follows every migration.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from .stats import Stats

__all__ = ["ApiError", "Cluster", "Guest", "Node", "Stats"]


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
    mem_overhead: int
    cpu_overhead: float  # cores

    @property
    def name(self) -> str:
        return str(self.entry["node"])

    @property
    def online(self) -> bool:
        return self.entry.get("status") == "online"


class Cluster:
    """All state behind one lock: handlers are served from several threads."""

    def __init__(self, dump: dict[str, Any]) -> None:
        api = copy.deepcopy(dump["api"])
        self.name: str = dump.get("name", "pve")
        self.lock = threading.RLock()
        self.stats = Stats()
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
                mem = int(e.get("mem", 0)) - sum(int(g.entry.get("mem", 0)) for g in on_node)
                cores = float(e.get("cpu", 0)) * int(e.get("maxcpu", 1)) - sum(
                    float(g.entry.get("cpu", 0)) * int(g.entry.get("maxcpu", 1)) for g in on_node
                )
                self.nodes[e["node"]] = Node(entry=e, mem_overhead=max(mem, 0), cpu_overhead=max(cores, 0.0))
        self.storages = [e for e in res if e.get("type") == "storage"]
        self.ha_rules: list[dict[str, Any]] = api.get("/cluster/ha/rules") or []
        self.ha_resources: list[dict[str, Any]] = api.get("/cluster/ha/resources") or []
        self.pools = {p["poolid"]: p for p in api.get("/pools") or []}
        self.options: dict[str, Any] = api.get("/cluster/options") or {}
        # /nodes/NODE/status as recorded, when the dump has it (the CPU model); generated otherwise
        self.node_status: dict[str, dict[str, Any]] = {n: api[f"/nodes/{n}/status"] for n in self.nodes
                                                       if isinstance(api.get(f"/nodes/{n}/status"), dict)}
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

    def usage(self) -> dict[str, tuple[int, float]]:
        """Memory and cores the running guests use, per node, in one pass over the guests."""
        usage: dict[str, tuple[int, float]] = {}
        for g in self.guests.values():
            if g.running:
                mem, cores = usage.get(g.node, (0, 0.0))
                usage[g.node] = (mem + int(g.entry.get("mem", 0)),
                                 cores + float(g.entry.get("cpu", 0)) * int(g.entry.get("maxcpu", 1)))
        return usage

    def mem_ratios(self) -> dict[str, float]:
        """Each node's memory use / maxmem now: host overhead plus its running guests."""
        usage = self.usage()
        return {name: (n.mem_overhead + usage.get(name, (0, 0.0))[0]) / max(int(n.entry.get("maxmem", 1)), 1)
                for name, n in self.nodes.items()}

    def note_mem(self) -> None:
        """Called whenever guests land on or leave nodes, so the stats keep each node's peak."""
        self.stats.note_mem(self.mem_ratios())

    def reset_stats(self) -> None:
        self.stats.reset(self.mem_ratios())

    def move_guest(self, g: Guest, target: str) -> None:
        g.entry["node"] = target
        self.note_mem()

    def delete_guest(self, vmid: int) -> Guest:
        """Gone from the cluster, as `qm destroy --purge` leaves it: no config, no HA resource."""
        g = self.guest(vmid)
        del self.guests[vmid]
        sid = f"{'vm' if g.type == 'qemu' else 'ct'}:{vmid}"
        self.ha_resources[:] = [r for r in self.ha_resources if r.get("sid") != sid]
        self.note_mem()
        return g

    def node_entry(self, n: Node, usage: dict[str, tuple[int, float]] | None = None) -> dict[str, Any]:
        e = dict(n.entry)
        if not n.online:
            return {k: v for k, v in e.items() if k not in ("cpu", "mem", "uptime")}
        mem, cores = (usage if usage is not None else self.usage()).get(n.name, (0, 0.0))
        e["mem"] = n.mem_overhead + mem
        e["cpu"] = round(min((n.cpu_overhead + cores) / max(int(e.get("maxcpu", 1)), 1), 1.0), 4)
        return e

    def guest_entry(self, g: Guest) -> dict[str, Any]:
        e = dict(g.entry)
        if g.lock:
            e["lock"] = g.lock
        else:
            e.pop("lock", None)
        return e

    def resources(self, rtype: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if rtype in (None, "node"):
            usage = self.usage()
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

    def local_disks(self, g: Guest) -> list[dict[str, Any]]:
        from pvebalance.shared.apidump import guest_disks
        from pvebalance.shared.models import GuestType

        return [
            {"volid": g.config[key].split(",", 1)[0], "size": size, "drivename": key, "cdrom": 0,
             "is_unused": 0, "is_attached": 1, "shared": 0, "replicate": 0}
            for key, storage, size in guest_disks(g.config, GuestType(g.type))
            if not self.shared_storage(g.node, storage)
        ]

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
