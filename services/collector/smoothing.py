"""Load that means something: guests' moving averages, and nodes' RRD hour (with PSI), bounded.

Guests: an exponential moving average of cpu and mem over the collector's own snapshots, kept in
Redis by vmid, so it follows a guest that moves and one spike does not look like load. Nodes:
the RRD hour series PVE keeps (average, 95th percentile of CPU, PVE 9 pressure), read for each
node at most once per `rrd_interval`, so steady-state snapshots stay within nodes + 10 requests.
"""

from __future__ import annotations

import time
from typing import Any

from redis import Redis

from pvebalance.shared import keys
from pvebalance.shared.logging import get_logger
from pvebalance.shared.models import ClusterSnapshot
from pvebalance.shared.proxmox import ProxmoxClient, ProxmoxError

log = get_logger("pvebalance.collector")

PSI_KEYS = ("pressurecpusome", "pressureiosome", "pressureiofull", "pressurememorysome", "pressurememoryfull")


def rrd_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def series(key: str) -> list[float]:
        return [float(r[key]) for r in rows if isinstance(r.get(key), int | float)]

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


class Smoother:
    def __init__(self, client: ProxmoxClient, redis: Redis | None, rrd_interval: float, alpha: float) -> None:
        self.client, self.redis, self.rrd_interval, self.alpha = client, redis, rrd_interval, alpha
        self._node_rrd: dict[str, tuple[float, dict[str, Any]]] = {}

    def apply(self, snap: ClusterSnapshot) -> None:
        self._nodes(snap)
        if self.redis is not None:
            self._guests(snap)

    def _nodes(self, snap: ClusterSnapshot) -> None:
        now = time.monotonic()
        for node in snap.nodes:
            if not node.online:
                continue
            seen = self._node_rrd.get(node.name)
            if self.rrd_interval and (seen is None or now - seen[0] >= self.rrd_interval):
                try:
                    rows = self.client.get(f"/nodes/{node.name}/rrddata", timeframe="hour", cf="AVERAGE")
                    seen = (now, rrd_stats(rows or []))
                    self._node_rrd[node.name] = seen
                except ProxmoxError as exc:  # keep the last figures; the next round tries again
                    log.warning("node RRD unreadable", node=node.name, error=str(exc))
            if seen:
                stats = seen[1]
                node.cpu_avg, node.cpu_p95 = stats.get("cpu_avg"), stats.get("cpu_p95")
                node.mem_avg = stats.get("mem_avg")
                node.psi = dict(stats["psi"])

    def _guests(self, snap: ClusterSnapshot) -> None:
        assert self.redis is not None
        running = [g for g in snap.guests if g.running]
        if not running:
            return
        previous = self.redis.hmget(keys.GUEST_LOAD, [str(g.vmid) for g in running])
        fresh = {}
        a = self.alpha
        for g, raw in zip(running, previous, strict=True):
            if raw:
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                cpu, mem = (float(x) for x in text.split(","))
                g.cpu_avg, g.mem_avg = a * g.cpu + (1 - a) * cpu, a * g.mem + (1 - a) * mem
            else:
                g.cpu_avg, g.mem_avg = g.cpu, float(g.mem)
            fresh[str(g.vmid)] = f"{g.cpu_avg:.6f},{g.mem_avg:.0f}"
        self.redis.hset(keys.GUEST_LOAD, mapping=fresh)
