"""The policy in force now, and the cluster as the planner sees it: one definition for every reader.

The planner plans with it; the API (usage, placement, metrics), `pvebalance best-node` and the demo
answer with it, so that "where would a new guest go" and "is the cluster balanced" mean what the
next plan will mean. It is the settings' policy plus what lives in Redis: the nodes operators
drained, those in a maintenance window, the guests cooling down after a move, the last day's moves
(the adaptive cooldown, no-return), the moves an operator rejected, and the migrator's limits
(the schedule orders a plan's moves by them).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from pvebalance.engine import Policy
from pvebalance.engine.policy import HISTORY_WINDOW

from . import keys, snapshots
from .config import Settings
from .holds import held_moves
from .jobstore import JobStore
from .models import ClusterSnapshot
from .windows import nodes_in_windows


def drained_nodes(redis: Any) -> dict[str, dict[str, Any]]:
    """Nodes an operator drained and has not undrained: node -> the drain (request id, who, ...)."""
    return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in redis.hgetall(keys.DRAINED).items()}


def policy_now(redis: Any, settings: Settings, now: float | None = None) -> Policy:
    """The policy the planner plans with at `now` (default: now)."""
    now = time.time() if now is None else now
    cluster = settings.proxmox_cluster
    windowed = nodes_in_windows(cluster.maintenance_windows, datetime.fromtimestamp(now, UTC))
    drained = set(drained_nodes(redis)) | windowed
    if drained - set(cluster.maintenance_nodes):
        cluster = cluster.model_copy(update={"maintenance_nodes": sorted(set(cluster.maintenance_nodes) | drained)})
    jobs = JobStore(redis)
    policy = Policy.from_settings(settings.balancing, cluster, cooldown=jobs.cooling_down(),
                                  recent_moves=jobs.finished_since(now - HISTORY_WINDOW), now=now)
    return replace(policy, migrator=settings.migrator, held=held_moves(redis, now))


def snapshot_now(redis: Any) -> ClusterSnapshot | None:
    """The collector's latest snapshot with pvebalance's migrations in flight: each holds its guest's
    memory on both its nodes until it ends, which plans, drain checks and placement count
    (pvebalance/engine/fit.py). None before the collector's first snapshot."""
    latest = snapshots.latest(redis)
    return with_in_flight(redis, latest) if latest is not None else None


def with_in_flight(redis: Any, snapshot: ClusterSnapshot) -> ClusterSnapshot:
    """`snapshot` with the migrations in flight now."""
    return snapshot.model_copy(update={"in_flight": JobStore(redis).in_flight_migrations()})
