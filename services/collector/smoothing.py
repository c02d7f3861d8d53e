"""Load that means something: guests' moving averages, and nodes' RRD hour (with PSI), bounded.

Guests: an exponential moving average of cpu and mem over the collector's own snapshots, kept in
Redis by vmid, so it follows a guest that moves and one spike does not look like load. Nodes:
the RRD hour series PVE keeps (average, 95th percentile of CPU, PVE 9 pressure) and the node's VM
list (the only place PVE 9 shows a VM's pressure). The first snapshot reads every node; after
that each snapshot refreshes only the stalest nodes older than `rrd_interval`, at most
NODE_READS_PER_SNAPSHOT of them, so a steady-state snapshot costs a fixed number of requests.

What is kept for a guest or a node goes when it leaves the cluster (shared/retention.py), in Redis
and in this process: months of guests created and destroyed must not accumulate.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from redis import Redis

from pvebalance.shared import keys
from pvebalance.shared.apireads import ReadLimits, read_all
from pvebalance.shared.logging import get_logger
from pvebalance.shared.models import ClusterSnapshot
from pvebalance.shared.proxmox import ProxmoxClient, ProxmoxError
from pvebalance.shared.retention import drop_departed

log = get_logger("pvebalance.collector")

NODE_READS_PER_SNAPSHOT = 2  # each is two requests: the RRD and the VM list
PSI_KEYS = ("pressurecpusome", "pressureiosome", "pressureiofull", "pressurememorysome", "pressurememoryfull")


def rrd_stats(rows: Any) -> dict[str, Any]:
    # An RRD row lacks a figure when the node was down at that time; anything else that is not a
    # number (or a row that is not an object) is skipped the same way, never raised.
    rows = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []

    def series(key: str) -> list[float]:
        return [float(r[key]) for r in rows
                if isinstance(r.get(key), int | float) and not isinstance(r[key], bool) and math.isfinite(r[key])]

    cpu, mem = series("cpu"), series("memused")
    out: dict[str, Any] = {"psi": {}}
    if cpu:
        out["cpu_avg"] = sum(cpu) / len(cpu)
        out["cpu_p95"] = sorted(cpu)[min(len(cpu) - 1, int(0.95 * len(cpu)))]
    if mem:
        out["mem_avg"] = sum(mem) / len(mem)
    for key in PSI_KEYS:
        values = series(key)
        if values:
            out["psi"][key] = sum(values) / len(values)
    return out

GUEST_PSI_KEYS = (*PSI_KEYS, "pressurecpufull")  # a VM has CPU "full" pressure, a node does not


class Smoother:
    def __init__(self, client: ProxmoxClient, redis: Redis | None, rrd_interval: float, alpha: float,
                 read_only: bool = False, reads: ReadLimits | None = None,
                 get: Callable[..., Any] | None = None) -> None:
        self.client, self.redis, self.rrd_interval, self.alpha = client, redis, rrd_interval, alpha
        self.reads = reads or ReadLimits(total=1, per_node=1)  # nodes due are read at once, within these
        self.get = get or client.get
        # read_only: the averages and RRD figures in Redis are read and applied to the snapshot as
        # the collector would, but never written back (a `collect --once` is not a sample).
        self.read_only = read_only
        self._node_rrd: dict[str, tuple[float, dict[str, Any]]] = {}
        self._guest_psi: dict[int, dict[str, float]] = {}

    def apply(self, snap: ClusterSnapshot) -> None:
        self._nodes(snap)
        if self.redis is not None:
            self._guests(snap)
        self._forget_departed(snap)

    def _forget_departed(self, snap: ClusterSnapshot) -> None:
        guests, nodes = {g.vmid for g in snap.guests}, {n.name for n in snap.nodes}
        for vmid in self._guest_psi.keys() - guests:
            del self._guest_psi[vmid]
        for name in self._node_rrd.keys() - nodes:
            del self._node_rrd[name]
        if self.redis is not None and not self.read_only:
            drop_departed(self.redis, keys.GUEST_LOAD, (str(v) for v in guests))
            drop_departed(self.redis, keys.NODE_RRD, nodes)

    def _load_shared(self) -> None:
        """What another collector (or an earlier run of this one) read, from Redis."""
        if self.redis is None or self._node_rrd:
            return
        for name, raw in self.redis.hgetall(keys.NODE_RRD).items():
            try:
                entry = json.loads(raw)
                seen = (float(entry["t"]), dict(entry["stats"]))
                seen[1]["psi"] = {str(p): float(x) for p, x in (seen[1].get("psi") or {}).items()}
                psi = {int(k): {str(p): float(x) for p, x in v.items()} for k, v in entry["guest_psi"].items()}
            except (ValueError, TypeError, KeyError, AttributeError):
                continue  # written by another version, or damaged: read that node again instead
            self._node_rrd[name.decode() if isinstance(name, bytes) else str(name)] = seen
            self._guest_psi.update(psi)

    def _due(self, snap: ClusterSnapshot, now: float) -> list[str]:
        if not self.rrd_interval:
            return []
        self._load_shared()
        online = [n.name for n in snap.nodes if n.online]
        if not self._node_rrd:
            return online  # the first snapshot reads every node
        stale = [n for n in online if now - self._node_rrd.get(n, (-1e18, {}))[0] >= self.rrd_interval]
        stale.sort(key=lambda n: self._node_rrd.get(n, (-1e18, {}))[0])
        return stale[:NODE_READS_PER_SNAPSHOT]

    def _read_node(self, name: str) -> tuple[Any, Any]:
        return (self.get(f"/nodes/{name}/rrddata", timeframe="hour", cf="AVERAGE"),
                self.get(f"/nodes/{name}/qemu"))

    def _nodes(self, snap: ClusterSnapshot) -> None:
        now = time.time()
        shared = {}
        due = self._due(snap, now)
        answers = read_all(due, lambda name: name, self._read_node, self.reads)
        for name in due:
            try:
                answer = answers[name]
                if isinstance(answer, ProxmoxError):
                    raise answer
                rows, vms = answer
                self._node_rrd[name] = (now, rrd_stats(rows))
                on_node = {}
                for vm in vms if isinstance(vms, list) else []:
                    vmid = vm.get("vmid") if isinstance(vm, dict) else None
                    if not (isinstance(vmid, int) or (isinstance(vmid, str) and vmid.isascii() and vmid.isdigit())):
                        continue  # not a VM entry PVE would send; its pressure is not worth a failed snapshot
                    psi = {k: float(vm[k]) for k in GUEST_PSI_KEYS
                           if isinstance(vm.get(k), int | float) and math.isfinite(vm[k])}
                    if psi:
                        on_node[int(vmid)] = psi
                self._guest_psi.update(on_node)
                shared[name] = json.dumps({"t": now, "stats": self._node_rrd[name][1], "guest_psi": on_node})
            except ProxmoxError as exc:  # keep the last figures; the next round tries again
                log.warning("node RRD unreadable", node=name, error=str(exc))
        if shared and self.redis is not None and not self.read_only:
            self.redis.hset(keys.NODE_RRD, mapping=shared)
        for g in snap.guests:
            if g.running and g.vmid in self._guest_psi:
                g.psi = dict(self._guest_psi[g.vmid])
        for node in snap.nodes:
            seen = self._node_rrd.get(node.name)
            if seen:
                stats = seen[1]
                node.cpu_avg, node.cpu_p95 = stats.get("cpu_avg"), stats.get("cpu_p95")
                node.mem_avg = stats.get("mem_avg")
                node.psi = dict(stats.get("psi") or {})

    def _guests(self, snap: ClusterSnapshot) -> None:
        assert self.redis is not None
        running = [g for g in snap.guests if g.running]
        if not running:
            return
        previous = self.redis.hmget(keys.GUEST_LOAD, [str(g.vmid) for g in running])
        fresh = {}
        a = self.alpha
        for g, raw in zip(running, previous, strict=True):
            last = _average(raw)
            if last is not None:
                cpu, mem = last
                g.cpu_avg, g.mem_avg = a * g.cpu + (1 - a) * cpu, a * g.mem + (1 - a) * mem
            else:
                g.cpu_avg, g.mem_avg = g.cpu, float(g.mem)
            fresh[str(g.vmid)] = f"{g.cpu_avg:.6f},{g.mem_avg:.0f}"
        if not self.read_only:
            self.redis.hset(keys.GUEST_LOAD, mapping=fresh)


def _average(raw: Any) -> tuple[float, float] | None:
    """A stored "cpu,mem" average; None when there is none, or it is not one (damaged: start afresh)."""
    if not raw:
        return None
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    try:
        cpu, mem = (float(x) for x in text.split(","))
    except ValueError:
        return None
    return (cpu, mem) if math.isfinite(cpu) and math.isfinite(mem) else None
