"""Prometheus metrics at /metrics, read from Redis at each scrape.

Worker-side metrics go through Redis, and not through prometheus-client's multiprocess mode: the
migrator already writes every job state change, with the run's duration, to the job's hash and the
`pvebalance:events` stream in the same compare-and-set that settles the job (shared/jobstore.py).
The API folds that stream into each kind's job counters and duration histogram (metrics_jobs.py:
migrations, disk moves). So a count can
never disagree with the jobs in Redis (a work-horse killed between a state change and a metrics
write cannot lose an observation: there is no second write), nothing is lost when rq forks a
work-horse per job and it exits, and workers on other hosts or in other containers need no shared
directory (multiprocess mode needs one on one host, and its files of dead processes cleaned up).
Gauges (usage, slots, queue length, requests) are read from their own keys at each scrape.

Labels follow prometheus-pve-exporter's: `node`, and `id="qemu/100"` for a guest, so that PromQL can
join with `pve_guest_info`; a shared storage is `storage` (its id, once for the cluster). Usage is a
ratio (0..1) of what a node offers guests, as the engine counts it (its size less
`balancing.node_resource_reserve`); a storage's use is in bytes, used and size.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from redis.exceptions import RedisError
from rq import Queue, Worker

from pvebalance.engine import Policy
from pvebalance.shared import keys
from pvebalance.shared.heartbeat import alive
from pvebalance.shared.logging import get_logger
from pvebalance.shared.message import guest_id
from pvebalance.shared.models import Plan
from pvebalance.shared.plans import PlanState

from .context import ApiContext
from .health import planner_count
from .metrics_jobs import JobEventFold, job_families
from .usage import RESOURCES, spreads_now, usage_percent
from .views import LIVE_PLAN_STATES

log = get_logger("pvebalance.api.metrics")

SERVICES = ("collector", "planner", "api")


class PlanFold:
    """Plans made since this process started, by outcome (a counter: Prometheus handles its reset)."""

    def __init__(self) -> None:
        self.since = time.time()
        self.counted: dict[str, float] = {}
        self.outcomes: Counter[str] = Counter()
        self.lock = threading.Lock()

    def update(self, context: ApiContext) -> None:
        with self.lock:
            for raw_id, score in context.redis.zrangebyscore(keys.PLAN_INDEX, self.since, "+inf", withscores=True):
                plan_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                if plan_id in self.counted:
                    continue
                plan = context.read.plans.plan(plan_id)
                self.counted[plan_id] = float(score)
                if plan is not None:
                    self.outcomes[plan.outcome] += 1
            newest = max(self.counted.values(), default=self.since)
            self.since = max(self.since, newest - 60)  # plans stamped a little out of order still count once
            self.counted = {p: s for p, s in self.counted.items() if s >= self.since}


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class PvebalanceCollector(Collector):
    def __init__(self, context: ApiContext) -> None:
        self.context = context
        self.jobs = JobEventFold()
        self.plans = PlanFold()
        self._redis_away = False

    def describe(self) -> list[Metric]:
        return []  # read at scrape time; registering must not touch Redis

    def collect(self) -> Iterator[Metric]:
        up = _gauge("pvebalance_redis_up", "1 when the API reads Redis")
        try:
            metrics = list(self._collect())
        except RedisError as exc:
            if not self._redis_away:
                log.warning("Redis is away; /metrics answers pvebalance_redis_up 0", error=str(exc))
            self._redis_away = True
            up.add_metric([], 0)
            yield up
            return
        self._redis_away = False
        up.add_metric([], 1)
        yield up
        yield from metrics

    def _collect(self) -> Iterator[Metric]:
        context, settings = self.context, self.context.settings
        yield from self._cluster()
        yield from self._plan()
        yield from job_families(context, self.jobs)

        slots = _gauge("pvebalance_migration_slots_in_use", "migration slots held, by scope", ["scope", "node"])
        now = time.time()
        slots.add_metric(["cluster", ""], context.redis.zcount(keys.SLOTS_CLUSTER, now, "+inf"))
        snapshot = context.read.snapshot()
        for name in sorted(n.name for n in snapshot.nodes) if snapshot else []:
            slots.add_metric(["source", name], context.redis.zcount(keys.slots_source(name), now, "+inf"))
            slots.add_metric(["target", name], context.redis.zcount(keys.slots_target(name), now, "+inf"))
        yield slots
        limits = _gauge("pvebalance_migration_slots_limit", "migration slots allowed, by scope (per node for "
                        "source and target)", ["scope"])
        m = settings.migrator
        for scope, limit in (("cluster", m.max_parallel_cluster), ("source", m.max_parallel_per_source),
                             ("target", m.max_parallel_per_target),
                             ("storage", settings.storage_balancing.max_parallel_per_storage)):
            limits.add_metric([scope], limit)
        yield limits
        storage_slots = _gauge("pvebalance_disk_move_slots_in_use", "disk moves onto or off the storage now (each "
                               "also holds a cluster slot)", ["storage"])
        for sid in sorted(s.storage for s in context.read.storages(snapshot)) if snapshot else []:
            storage_slots.add_metric([sid], context.redis.zcount(keys.slots_storage(sid), now, "+inf"))
        yield storage_slots

        queue = Queue(keys.MIGRATION_QUEUE, connection=context.redis)
        length = _gauge("pvebalance_queue_length", "jobs (migrations, disk moves) waiting in rq's queue for a worker")
        length.add_metric([], queue.count)
        yield length
        workers = _gauge("pvebalance_workers", "migrator workers registered with rq")
        workers.add_metric([], Worker.count(queue=queue))
        yield workers

        requests = _gauge("pvebalance_operator_requests",
                          "operator requests kept (retention.requests_days), by action and state",
                          ["action", "state"])
        counts = Counter((s.request.action.value, s.state.value) for s in context.requests.recent(1000))
        for (action, state), n in sorted(counts.items()):
            requests.add_metric([action, state], n)
        yield requests

        services = _gauge("pvebalance_service_alive", "instances of a service seen alive within the heartbeat TTL",
                          ["service"])
        for service in SERVICES:
            count = planner_count(context.redis) if service == "planner" else len(alive(context.redis, service))
            services.add_metric([service], count)
        yield services
        paused = _gauge("pvebalance_paused", "1 while an operator's pause is in force")
        paused.add_metric([], 1 if context.redis.exists(keys.PAUSED) else 0)
        yield paused

    def _cluster(self) -> Iterator[Metric]:
        context, settings = self.context, self.context.settings
        config = _gauge("pvebalance_config", "settings alerts compare with", ["setting"])
        asked = Policy.from_settings(settings.balancing, settings.proxmox_cluster)
        config.add_metric(["balanciness_pp"], asked.band(asked.dimensions[0]))  # the first dimension's, as before
        config.add_metric(["max_snapshot_age_seconds"], settings.planner.max_snapshot_age)
        yield config
        bands = _gauge("pvebalance_band_pp", "the spread each balanced dimension may keep, percentage points",
                       ["dimension"])
        for dim in asked.dimensions:
            bands.add_metric([dim], asked.band(dim))
        yield bands
        snapshot = context.read.snapshot()
        if snapshot is None:
            return
        age = _gauge("pvebalance_snapshot_age_seconds", "age of the latest cluster snapshot")
        age.add_metric([], snapshot.age_seconds())
        yield age
        plan = context.read.plans.latest()
        status = context.read.plans.status(plan.plan_id) if plan else None
        pending = context.read.pending_moves(plan, status)
        policy = context.read.policy()
        for name, doc, moves in (
            ("pvebalance_node_usage_ratio", "share of what the node offers guests in use now", None),
            ("pvebalance_node_usage_after_plan_ratio", "the same once the current plan's remaining moves are done",
             pending),
        ):
            family = _gauge(name, doc, ["node", "resource"])
            for node, by_resource in sorted(usage_percent(snapshot, policy, moves).items()):
                for resource in RESOURCES:
                    value = by_resource.get(resource)
                    if value is not None:
                        family.add_metric([node, resource], value / 100.0)
            yield family
        spreads = spreads_now(snapshot, policy)
        spread = _gauge("pvebalance_spread_pp", "spread of the (first) balanced dimension between nodes, "
                        "percentage points")
        spread.add_metric([], next(iter(spreads.values())))
        yield spread
        per_dimension = _gauge("pvebalance_dimension_spread_pp", "spread of each balanced dimension between nodes, "
                               "percentage points", ["dimension"])
        for dim, value in spreads.items():
            per_dimension.add_metric([dim], value)
        yield per_dimension
        guests = _gauge("pvebalance_node_guests", "guests on the node", ["node"])
        drained = _gauge("pvebalance_node_drained", "1 while a drain holds the node empty", ["node"])
        held = context.read.drained()
        per_node = Counter(g.node for g in snapshot.guests)
        for each in snapshot.nodes:
            guests.add_metric([each.name], per_node.get(each.name, 0))
            drained.add_metric([each.name], 1 if each.name in held else 0)
        yield guests
        yield drained
        used = _gauge("pvebalance_storage_used_bytes", "bytes used on the shared storage, as the latest snapshot "
                      "has it", ["storage"])
        size = _gauge("pvebalance_storage_size_bytes", "the shared storage's capacity, bytes", ["storage"])
        for store in context.read.storages(snapshot):
            used.add_metric([store.storage], store.used)
            size.add_metric([store.storage], store.total)
        yield used
        yield size

    def _plan(self) -> Iterator[Metric]:
        context = self.context
        self.plans.update(context)
        made = CounterMetricFamily("pvebalance_plans", "plans made since this API process started, by outcome",
                                   labels=["outcome"])
        for outcome in ("balanced", "planned", "partial", "infeasible"):
            made.add_metric([outcome], self.plans.outcomes.get(outcome, 0))
        yield made
        plan: Plan | None = context.read.plans.latest()
        if plan is None:
            return
        status = context.read.plans.status(plan.plan_id)
        state = _gauge("pvebalance_latest_plan_state", "1 for the latest plan's state", ["state", "outcome"])
        for s in PlanState:
            state.add_metric([s.value, plan.outcome], 1 if status is not None and status.state == s else 0)
        yield state
        created = _gauge("pvebalance_latest_plan_timestamp_seconds", "when the latest plan was made")
        created.add_metric([], plan.created_at.timestamp())
        yield created
        moves = _gauge("pvebalance_plan_move", "1 per guest the current plan moves (a live plan only)",
                       ["id", "node", "target", "reason"])
        disks = _gauge("pvebalance_plan_disk_move_bytes", "bytes of each disk the current plan moves to another "
                       "storage (a live plan only)", ["id", "node", "disk", "storage", "target"])
        if status is not None and status.state in LIVE_PLAN_STATES:
            for m in plan.migrations:
                moves.add_metric([guest_id(m.type, m.vmid), m.source, m.target, m.reason.value], 1)
            for d in plan.disk_moves:
                disks.add_metric([guest_id(d.guest_type, d.vmid), d.node, d.disk, d.source, d.target], d.size)
        yield moves
        yield disks


def build_registry(context: ApiContext) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PvebalanceCollector(context))
    return registry
