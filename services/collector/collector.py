"""Read the cluster through the Proxmox API and publish a ClusterSnapshot to Redis.

The cluster is read with cluster-wide calls (/cluster/resources carries nodes, guests and storages
in one answer). Guest configs, needed for local disks and pinned devices, are cached in Redis and
fetched again only for guests that are new or whose resources entry changed, so in steady state
the number of requests does not grow with the number of guests.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from redis import Redis

from pvebalance.shared import keys
from pvebalance.shared.apidump import essential_config, snapshot_from_api
from pvebalance.shared.logging import get_logger
from pvebalance.shared.models import ClusterSnapshot, GuestType
from pvebalance.shared.proxmox import ProxmoxClient, ProxmoxError, retry_transient

from .smoothing import Smoother

log = get_logger("pvebalance.collector")

CLUSTER_PATHS = ["/cluster/status", "/cluster/options", "/cluster/ha/rules", "/cluster/ha/resources", "/pools"]
# What in a /cluster/resources entry says a guest's config may have changed.
_FINGERPRINT_KEYS = ("node", "type", "name", "tags", "maxdisk", "maxmem", "maxcpu", "template", "pool")


class CollectError(Exception):
    """The cluster could not be read whole; nothing is published."""


def fingerprint(entry: dict[str, Any]) -> str:
    data = json.dumps([entry.get(k) for k in _FINGERPRINT_KEYS], sort_keys=True, default=str)
    return hashlib.sha1(data.encode()).hexdigest()[:16]


class Collector:
    def __init__(self, client: ProxmoxClient, redis: Redis | None = None, retries: int = 3,
                 retry_wait: float = 0.5, full_configs: bool = False, rrd_interval: float = 300.0,
                 smoothing: float = 0.2) -> None:
        self.smoother = Smoother(client, redis, rrd_interval, smoothing)
        self.full_configs = full_configs  # `record` keeps whole configs; the cache keeps what planning reads
        self.client = client
        self.redis = redis
        self.retries = retries
        self.retry_wait = retry_wait
        # vmid -> (fingerprint, essential config): a running collector skips Redis for known guests
        self._memo: dict[str, tuple[str, dict[str, Any]]] = {}

    def read_api(self) -> dict[str, Any]:
        """The cluster as API answers keyed by path: the pve-api-dump/1 `api` mapping."""
        api: dict[str, Any] = {}

        def get(path: str) -> Any:
            return retry_transient(lambda: self.client.get(path), attempts=self.retries, initial=self.retry_wait)

        try:
            api["/cluster/resources"] = get("/cluster/resources")
            for path in CLUSTER_PATHS:
                api[path] = get(path)
            for pool in api["/pools"] or []:
                api[f"/pools/{pool['poolid']}"] = get(f"/pools/{pool['poolid']}")
        except ProxmoxError as exc:
            raise CollectError(f"cannot read the cluster: {exc}") from None
        api.update(self._guest_configs(api["/cluster/resources"]))
        return api

    def _guest_configs(self, resources: list[dict[str, Any]]) -> dict[str, Any]:
        guests = [r for r in resources if r.get("type") in ("qemu", "lxc")]
        prints = {str(g["vmid"]): fingerprint(g) for g in guests}
        # (fingerprint, config) known for each guest: this process's memo first, then Redis for
        # guests the memo lacks or holds stale; a stale entry still serves when a read fails.
        known: dict[str, tuple[str, dict[str, Any]]] = {v: self._memo[v] for v in prints if v in self._memo}
        misses = [v for v, fp in prints.items() if known.get(v, ("",))[0] != fp]
        if self.redis is not None and misses:
            for vmid, raw in zip(misses, self.redis.hmget(keys.GUEST_CONFIG_CACHE, misses), strict=True):
                if raw:
                    entry = json.loads(raw)
                    known[vmid] = (entry["fp"], entry["config"])
        out: dict[str, Any] = {}
        fresh: dict[str, str] = {}
        offline = {r["node"] for r in resources if r.get("type") == "node" and r.get("status") != "online"}
        for g in guests:
            vmid, fp = str(g["vmid"]), prints[str(g["vmid"])]
            path = f"/nodes/{g['node']}/{g['type']}/{vmid}/config"
            hit = known.get(vmid)
            if hit and hit[0] == fp:
                out[path] = hit[1]
                self._memo[vmid] = hit
                continue
            if g["node"] in offline:
                if hit:
                    out[path] = hit[1]
                continue
            try:
                config = self.client.get(path)
            except ProxmoxError as exc:
                # The guest moved or vanished between the two reads; the next snapshot sees it.
                log.warning("guest config unreadable", vmid=g["vmid"], error=str(exc))
                if hit:
                    out[path] = hit[1]
                continue
            if not self.full_configs:
                config = essential_config(config, GuestType(g["type"]))
            out[path] = config
            self._memo[vmid] = (fp, config)
            fresh[vmid] = json.dumps({"fp": fp, "config": config})
        if self.redis is not None and fresh:
            self.redis.hset(keys.GUEST_CONFIG_CACHE, mapping=fresh)
        return out

    def snapshot(self) -> ClusterSnapshot:
        snap = snapshot_from_api(self.read_api())
        self.smoother.apply(snap)
        return snap

    def publish(self, snapshot: ClusterSnapshot, latest_ttl: float) -> str:
        assert self.redis is not None
        raw = snapshot.model_dump_json()
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(keys.SNAPSHOT_STREAM, {"snapshot": raw}, maxlen=keys.SNAPSHOT_STREAM_MAXLEN, approximate=True)
        pipe.set(keys.SNAPSHOT_LATEST, raw, ex=max(int(latest_ttl), 1))
        entry_id = pipe.execute()[0]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def run(self, interval: float, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                before = self.client.requests
                snap = self.snapshot()
                if snap.ha_auto_rebalance:
                    log.warning("Proxmox HA auto-rebalance (crs.ha-auto-rebalance) is on: HA-managed guests are "
                                "left to it, so the two balancers do not fight")
                self.publish(snap, latest_ttl=3 * interval)
                log.info("snapshot published", snapshot_id=snap.snapshot_id, nodes=len(snap.nodes),
                         guests=len(snap.guests), requests=self.client.requests - before)
            except CollectError as exc:
                log.error("snapshot skipped", error=str(exc))
            except Exception as exc:  # Redis away, a malformed answer: keep running, say so
                log.error("snapshot failed", error=f"{type(exc).__name__}: {exc}")
            stop.wait(interval)
