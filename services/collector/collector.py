"""Read the cluster through the Proxmox API and publish a ClusterSnapshot to Redis.

The cluster is read with cluster-wide calls (/cluster/resources carries nodes, guests and storages
in one answer). Guest configs, needed for local disks and pinned devices, are cached in Redis and
fetched again only for guests that are new or whose resources entry changed, so in steady state
the number of requests does not grow with the number of guests. Reads that do not depend on each
other are made at once, within `collector.config_reads` in all and `config_reads_per_node` per
node (shared/apireads.py), each retried on its own: a first snapshot of 10,000 guests at 20 ms a request
takes seconds, not minutes.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from pvebalance.shared import keys, snapshots
from pvebalance.shared.apidump import DumpError, essential_config, parse_cputype, snapshot_from_api
from pvebalance.shared.apireads import ReadLimits, read_all
from pvebalance.shared.config import CollectorSettings, Settings
from pvebalance.shared.errors import OperatorError
from pvebalance.shared.heartbeat import beat
from pvebalance.shared.leader import Leader, NotLeader
from pvebalance.shared.logging import get_logger
from pvebalance.shared.models import ClusterSnapshot, GuestType, utcnow
from pvebalance.shared.proxmox import ProxmoxClient, ProxmoxError, retry_transient
from pvebalance.shared.redisconn import Outage, connect_waiting
from pvebalance.shared.retention import Retention, drop_departed

from .smoothing import Smoother
from .triggers import INTERVAL, Triggers

log = get_logger("pvebalance.collector")

CLUSTER_PATHS = ["/cluster/status", "/cluster/options", "/cluster/ha/rules", "/cluster/ha/resources", "/pools"]
# What in a /cluster/resources entry says a guest's config may have changed.
_FINGERPRINT_KEYS = ("node", "type", "name", "tags", "maxdisk", "maxmem", "maxcpu", "template", "pool")
# Changed whenever essential_config keeps more keys, so that configs cached without them are read again.
# Version 3: configs cached by version 2 may have been trimmed as the wrong guest type (a VM's disks
# dropped as if it were a container's, or the other way round).
# Version 4: `parent` kept (a guest with snapshots: its disks stay on their storage).
_CONFIG_KEYS_VERSION = 4


class CollectError(OperatorError):
    """The cluster could not be read whole; nothing is published."""


def _vmid(value: Any) -> int | None:
    """A vmid as PVE sends it (a number) or as some tools do (a string of digits); None otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and int(value) > 0:
        return int(value)
    return None


def _cached(raw: Any) -> tuple[str, dict[str, Any]] | None:
    """A config cache entry, or None when it is not one (written by another version, or damaged)."""
    if not raw:
        return None
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if isinstance(entry, dict) and isinstance(entry.get("fp"), str) and isinstance(entry.get("config"), dict):
        return entry["fp"], entry["config"]
    return None


def fingerprint(entry: dict[str, Any], generation: str = "") -> str:
    """What tells a cached config from a stale one: the guest's /cluster/resources figures a config change
    shows in, and how many times a job changed the config where they do not (a disk moved: `generation`)."""
    data = json.dumps([_CONFIG_KEYS_VERSION, *(entry.get(k) for k in _FINGERPRINT_KEYS), *([generation] if generation
                                                                                          else [])],
                      sort_keys=True, default=str)
    return hashlib.sha1(data.encode()).hexdigest()[:16]


class Collector:
    def __init__(self, client: ProxmoxClient, redis: Redis | None = None, retries: int = 3,
                 retry_wait: float = 0.5, full_configs: bool = False, rrd_interval: float = 300.0,
                 smoothing: float = 0.2, read_only: bool = False, reads: ReadLimits | None = None) -> None:
        # read_only (`collect --once`, `record`): use the running collector's config cache, moving
        # averages and RRD figures, but write none of them: the planner balances on those averages,
        # and a look at the cluster must not count as one more sample in them.
        self.read_only = read_only
        self.reads = reads or read_limits(CollectorSettings())
        self.smoother = Smoother(client, redis, rrd_interval, smoothing, read_only=read_only,
                                 reads=self.reads, get=self._get)
        self.full_configs = full_configs  # `record` keeps whole configs; the cache keeps what planning reads
        self.client = client
        self.redis = redis
        self.retries = retries
        self.retry_wait = retry_wait
        # vmid -> (fingerprint, essential config): a running collector skips Redis for known guests
        self._memo: dict[str, tuple[str, dict[str, Any]]] = {}
        self._problems: dict[str, str] = {}  # node -> the problem last warned about, to warn once
        self._node_status: dict[str, Any] = {}  # node -> its /nodes/NODE/status, read once while it stays up
        self.fence: Callable[[], None] = lambda: None  # run_collector: raise NotLeader unless leading
        self.retention = Retention()  # run_collector: the settings'

    def _get(self, path: str, **params: Any) -> Any:
        """One read, retried on its own while the failure is transient."""
        return retry_transient(lambda: self.client.get(path, **params), attempts=self.retries,
                               initial=self.retry_wait)

    def _get_all(self, paths: list[str]) -> dict[str, Any]:
        """Cluster-wide reads, at once (the node the client talks to serves them all); all or CollectError."""
        answers = read_all(paths, lambda _: "", self._get, self.reads)
        for path in paths:  # the first failure in the order asked, as when they were read one by one
            answer = answers[path]
            if isinstance(answer, ProxmoxError):
                raise CollectError(f"cannot read the cluster: {answer}")
        return answers

    def read_api(self) -> dict[str, Any]:
        """The cluster as API answers keyed by path: the pve-api-dump/1 `api` mapping."""
        api = self._get_all(["/cluster/resources", *CLUSTER_PATHS])
        # a malformed entry is left for snapshot_from_api to name; `record` keeps it as it came
        pools = [p["poolid"] for p in (api["/pools"] if isinstance(api["/pools"], list) else [])
                 if isinstance(p, dict) and isinstance(p.get("poolid"), str)]
        api.update(self._get_all([f"/pools/{pool}" for pool in pools]))
        resources = api["/cluster/resources"]
        api.update(self._guest_configs(resources if isinstance(resources, list) else []))
        api.update(self._node_statuses(api, resources if isinstance(resources, list) else []))
        return api

    def _node_statuses(self, api: dict[str, Any], resources: list[Any]) -> dict[str, Any]:
        """Each online node's /nodes/NODE/status (its CPU model), read only when a VM of CPU type
        `host` needs it (or for `record`), and once per node while it stays online."""
        online = [r["node"] for r in resources if isinstance(r, dict) and r.get("type") == "node"
                  and r.get("status") == "online" and isinstance(r.get("node"), str)]
        for name in set(self._node_status) - set(online):
            del self._node_status[name]  # offline: its hardware may differ when it is back
        wanted = self.full_configs or any(
            isinstance(c, dict) and parse_cputype(str(c.get("cpu") or "")) == "host"
            for path, c in api.items() if "/qemu/" in path and path.endswith("/config"))
        if not wanted:
            return {}
        for name in online:
            if name not in self._node_status:
                try:
                    self._node_status[name] = self.client.get(f"/nodes/{name}/status")
                except ProxmoxError as exc:  # its host-CPU guests stay put until it answers
                    log.warning("node status unreadable", node=name, error=str(exc))
        return {f"/nodes/{name}/status": self._node_status[name] for name in online if name in self._node_status}

    def _guest_configs(self, resources: list[Any]) -> dict[str, Any]:
        # Only entries that name a guest well enough to find its config; snapshot_from_api refuses
        # the others with a message naming the entry and the field.
        guests = [r for r in resources if isinstance(r, dict) and r.get("type") in ("qemu", "lxc")
                  and isinstance(r.get("node"), str) and _vmid(r.get("vmid")) is not None]
        generations = {_text(k): _text(v) for k, v in self.redis.hgetall(keys.GUEST_CONFIG_GENERATION).items()} \
            if self.redis is not None else {}
        prints = {str(v): fingerprint(g, generations.get(str(v), "")) for g in guests if (v := _vmid(g["vmid"]))}
        # (fingerprint, config) known for each guest: this process's memo first, then Redis for
        # guests the memo lacks or holds stale; a stale entry still serves when a read fails.
        known: dict[str, tuple[str, dict[str, Any]]] = {v: self._memo[v] for v in prints if v in self._memo}
        misses = [v for v, fp in prints.items() if known.get(v, ("",))[0] != fp]
        if self.redis is not None and misses:
            for vmid, raw in zip(misses, self.redis.hmget(keys.GUEST_CONFIG_CACHE, misses), strict=True):
                entry = _cached(raw)
                if entry is not None:
                    known[vmid] = entry
        out: dict[str, Any] = {}
        fresh: dict[str, str] = {}
        offline = {r.get("node") for r in resources
                   if isinstance(r, dict) and r.get("type") == "node" and r.get("status") != "online"}
        to_read: dict[str, tuple[str, str, GuestType]] = {}  # path -> (vmid, node, its type)
        for g in guests:
            vmid = str(_vmid(g["vmid"]))
            path = f"/nodes/{g['node']}/{g['type']}/{vmid}/config"
            hit = known.get(vmid)
            if hit and hit[0] == prints[vmid]:
                out[path] = hit[1]
                self._memo[vmid] = hit
            elif g["node"] in offline:
                if hit:
                    out[path] = hit[1]
            else:
                to_read[path] = (vmid, g["node"], GuestType(g["type"]))
        answers = read_all(to_read, lambda path: to_read[path][1], self._get, self.reads)
        for path, (vmid, _, gtype) in to_read.items():
            config, fp, hit = answers[path], prints[vmid], known.get(vmid)
            if isinstance(config, ProxmoxError):
                # The guest moved or vanished between the two reads; the next snapshot sees it.
                log.warning("guest config unreadable", vmid=vmid, error=str(config))
                if hit:
                    out[path] = hit[1]
                continue
            if not self.full_configs and isinstance(config, dict):
                config = essential_config(config, gtype)  # each guest trimmed as its own type
            out[path] = config
            if isinstance(config, dict):
                self._memo[vmid] = (fp, config)
                fresh[vmid] = json.dumps({"fp": fp, "config": config})
        if self.redis is not None and fresh and not self.read_only:
            self.redis.hset(keys.GUEST_CONFIG_CACHE, mapping=fresh)
        return out

    def snapshot(self) -> ClusterSnapshot:
        # Taken when the reads begin, not when they end: a migration that ends meanwhile may be missing
        # from it, and the planner plans only on a snapshot taken after the last migration ended.
        taken_at = utcnow()
        try:
            snap = snapshot_from_api(self.read_api())
            snap.taken_at = taken_at
        except DumpError as exc:
            # Not published: the planner must never see a cluster read from answers it cannot trust.
            raise CollectError(f"the Proxmox API answered something unusable: {exc}") from None
        self.smoother.apply(snap)
        self._warn_unusable(snap)
        return snap

    def _warn_unusable(self, snap: ClusterSnapshot) -> None:
        """One warning per node when its figures turn impossible (not one per snapshot), one when fine again."""
        problems = {n.name: n.problem for n in snap.nodes if n.problem}
        for name, problem in problems.items():
            if self._problems.get(name) != problem:
                log.warning("node not planned on: its figures are impossible", node=name, problem=problem)
        for name in self._problems.keys() - problems.keys():
            log.info("node figures plausible again", node=name)
        self._problems = problems

    def publish(self, snapshot: ClusterSnapshot, latest_ttl: float) -> str:
        assert self.redis is not None
        self.fence()
        entry_id = snapshots.publish(self.redis, snapshot, latest_ttl, history=self.retention.snapshots)
        # Guests that left the cluster leave the config cache (Redis and this process's memo) with it:
        # months of guests created and destroyed must not accumulate (the snapshot lists every guest,
        # those on offline nodes included).
        present = {str(g.vmid) for g in snapshot.guests}
        drop_departed(self.redis, keys.GUEST_CONFIG_CACHE, present)
        drop_departed(self.redis, keys.GUEST_CONFIG_GENERATION, present)
        for vmid in self._memo.keys() - present:
            del self._memo[vmid]
        return entry_id

    def run(self, interval: float, stop: threading.Event, settle_seconds: float | None = None) -> None:
        """Publish a snapshot every `interval` seconds, and (with Redis and `settle_seconds`, the planner's)
        also when something happened: a plan's last migration ended, an operator request arrived (triggers.py)."""
        api = Outage(log, "the Proxmox API", "the collector")
        redis = Outage(log, "Redis", "the collector")
        triggers = Triggers(self.redis, settle_seconds) if self.redis is not None and settle_seconds is not None \
            else None
        why = INTERVAL
        while not stop.is_set():
            try:
                if self.redis is not None:
                    beat(self.redis, "collector", ttl=keys.HEARTBEAT_TTL + int(interval))
                before = self.client.requests
                snap = self.snapshot()
                api.ok()
                if snap.ha_auto_rebalance:
                    log.warning("Proxmox HA auto-rebalance (crs.ha-auto-rebalance) is on: HA-managed guests are "
                                "left to it, so the two balancers do not fight")
                self.publish(snap, latest_ttl=3 * interval)
                redis.ok()
                log.info("snapshot published", snapshot_id=snap.snapshot_id, nodes=len(snap.nodes),
                         guests=len(snap.guests), requests=self.client.requests - before, why=why)
            except NotLeader:  # another collector leads now: this one goes back to waiting
                return
            except CollectError as exc:  # the cluster could not be read whole: nothing published
                api.failed(exc)
            except RedisError as exc:  # away, loading its data, restarted: wait and carry on
                redis.failed(exc)
            except Exception:  # a malformed answer or a bug: say where, keep collecting
                log.exception("snapshot failed")
            why = self._wait(triggers, interval, stop, redis)

    @staticmethod
    def _wait(triggers: Triggers | None, interval: float, stop: threading.Event, redis: Outage) -> str:
        """Until the next snapshot is due, and why; a Redis outage falls back on the interval."""
        if triggers is None:
            stop.wait(interval)
            return INTERVAL
        try:
            return triggers.wait(interval, stop)
        except RedisError as exc:
            redis.failed(exc)
            stop.wait(interval)
            return INTERVAL


def run_collector(settings: Settings, stop: threading.Event) -> None:
    """The collector service: waits for Redis instead of exiting, then publishes until stopped."""
    c = settings.collector
    redis = connect_waiting(settings.redis, log, stop)
    if redis is None:
        return
    collector = Collector(ProxmoxClient(settings.proxmox_api), redis, rrd_interval=c.rrd_interval,
                          smoothing=c.smoothing, reads=read_limits(c))
    leader = Leader(redis, "collector", settings.leader.lock_ttl)  # one collector publishes at a time
    collector.fence = leader.fence
    collector.retention = Retention(settings.retention)
    # the planner's settle time: a snapshot after a plan's last migration is taken when the planner may use it
    leader.lead(stop, lambda demoted: collector.run(c.interval, demoted, settings.planner.settle_seconds))


def read_limits(c: CollectorSettings) -> ReadLimits:
    return ReadLimits(total=c.config_reads, per_node=c.config_reads_per_node)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
