"""Every Redis key, stream and queue name the services share, defined once."""

from __future__ import annotations

PREFIX = "pvebalance"

# Snapshots are encoded and decoded by shared/snapshots.py only; how many are kept: shared/retention.py.
SNAPSHOT_STREAM = f"{PREFIX}:snapshots"
SNAPSHOT_LATEST = f"{PREFIX}:snapshot:latest"
PLANNER_GROUP = "planner"

PLAN_LATEST = f"{PREFIX}:plan:latest"
PLAN_INDEX = f"{PREFIX}:plans"  # sorted set of plan ids by creation time

EVENT_STREAM = f"{PREFIX}:events"

ACTIVE_JOBS = f"{PREFIX}:jobs:active"  # set of job ids not yet in a terminal state

GUEST_CONFIG_CACHE = f"{PREFIX}:guest-config"  # hash vmid -> cached config + fingerprint
# hash vmid -> how many times a job changed its config (a disk move): part of the cache entry's fingerprint
GUEST_CONFIG_GENERATION = f"{PREFIX}:guest-config-generation"
GUEST_LOAD = f"{PREFIX}:guest-load"  # hash vmid -> "cpu,mem" moving averages
NODE_RRD = f"{PREFIX}:node-rrd"  # hash node -> when its RRD and VM list were read, and what they said

MIGRATION_QUEUE = "pvebalance-migrations"

SLOTS_CLUSTER = f"{PREFIX}:slots:cluster"
SLOTS_WAKE = f"{PREFIX}:slots:wake"  # a list pushed on every release; waiters block on it
# Hash job id -> the job's place in the queue, its slot sets and limits, and when it stops counting: the jobs
# waiting for slots, which take them in queue order (services/migrator/slots.py)
SLOTS_WAITING = f"{PREFIX}:slots:waiting"


def plan(plan_id: str) -> str:
    return f"{PREFIX}:plan:{plan_id}"


def job(job_id: str) -> str:
    """Hash with the job's payload, state, UPID and timestamps."""
    return f"{PREFIX}:job:{job_id}"


def guest_job(vmid: int) -> str:
    """Which job currently owns this guest; set with NX so a guest never gets two jobs."""
    return f"{PREFIX}:guest-job:{vmid}"


def lease(job_id: str) -> str:
    """Held by the one runner working on a job; expires when its worker dies."""
    return f"{PREFIX}:lease:{job_id}"


def slot_waiter(job_id: str) -> str:
    """A list a job waiting for slots blocks on (besides SLOTS_WAKE): pushed when its turn may have come."""
    return f"{PREFIX}:slots:waiter:{job_id}"


def slot_scopes(source: str, target: str) -> list[str]:
    """The three slot sets a migration from source to target holds a place in, in this order."""
    return [SLOTS_CLUSTER, slots_source(source), slots_target(target)]


def slots_storage(storage: str) -> str:
    """Disk moves onto or off a storage (storage_balancing.max_parallel_per_storage)."""
    return f"{PREFIX}:slots:storage:{storage}"


def slots_source(node: str) -> str:
    return f"{PREFIX}:slots:source:{node}"


def slots_target(node: str) -> str:
    return f"{PREFIX}:slots:target:{node}"


# One pass of the reconciler (services/migrator/recovery.py) per interval across all workers: a rate.
RECONCILER_LOCK = f"{PREFIX}:reconciler"
# Keys earlier versions wrote and this one no longer reads (the reconciler's own bookkeeping of rq, issue
# 21): deleted when a migrator starts, so an upgrade leaves nothing behind.
RETIRED = (f"{PREFIX}:jobs:lost-since", f"{PREFIX}:jobs:resuming")

COOLDOWN = f"{PREFIX}:cooldown"  # sorted set: vmid -> time until which the guest stays put

# Operator requests (shared/requests.py): one stream the planner consumes, one status hash each.
REQUEST_STREAM = f"{PREFIX}:requests"
REQUEST_INDEX = f"{PREFIX}:requests:index"  # sorted set of request ids by submission time
REQUESTS_GROUP = "planner"

DRAINED = f"{PREFIX}:drained"  # hash node -> JSON of the drain that holds it empty (until undrained)
PAUSED = f"{PREFIX}:paused"  # JSON of the pause (who, why, until), expiring with it
PLANS_ENQUEUING = f"{PREFIX}:plans:enqueuing"  # set of plan ids whose jobs are being enqueued (planner.enqueue)
PLAN_STATUS = f"{PREFIX}:plan-status"  # hash plan id -> JSON of its state (recommended, running, ...)

HEARTBEAT_TTL = 30
# JSON of the leading planner's mode of operation (its config's), beaten with its heartbeat: what
# `pvebalance status` and the page show, whatever config the reader has.
PLANNER_MODE = f"{PREFIX}:planner:mode"
# Hash "vmid:target" -> JSON of a rejected move held back (who, plan, until: `planner.reject_hold`)
REJECTED_MOVES = f"{PREFIX}:rejected-moves"
LAST_ROUND = f"{PREFIX}:planner:last-round"  # when the planner last made a balancing plan (`planner.interval`)
# Stream of each node's usage per resource, one entry a minute at most (id: the snapshot's time),
# written by the API (services/api/history.py), bounded by retention.USAGE_HISTORY_SAMPLES
USAGE_HISTORY = f"{PREFIX}:usage:history"


def request(request_id: str) -> str:
    return f"{PREFIX}:request:{request_id}"


def heartbeat(service: str, instance: str) -> str:
    """Set by a running service every few seconds, expiring HEARTBEAT_TTL after its last beat."""
    return f"{PREFIX}:alive:{service}:{instance}"


def leader(service: str) -> str:
    """The lock that makes one instance of a service the leader (shared/leader.py)."""
    return f"{PREFIX}:leader:{service}"

# The API's notifier (services/api/webhooks.py): one instance at a time sends, and where it got to
# survives its restarts, so an event is notified once.
NOTIFIER_LOCK = f"{PREFIX}:notifier:lock"
NOTIFIER_CURSOR = f"{PREFIX}:notifier:cursor"  # hash: events -> last stream id, plans -> last plan time
NOTIFIER_REQUESTS = f"{PREFIX}:notifier:requests"  # set of request ids whose end was notified
