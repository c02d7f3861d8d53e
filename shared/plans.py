"""Plans in Redis and the state of each: the planner is the only writer; the CLI and API read.

A plan is stored once, as made, and never changed; its state lives beside it. States:
recommended (made in manual or dry-run mode, waiting for an operator), approved (an operator said
yes; its jobs are being enqueued), running (its jobs are enqueued), done (every job ended),
superseded (a newer plan made it stale before it was approved), rejected (an operator said no, and
why when they said), dry-run (made for a `rebalance --dry-run`: shown, never enqueued, never approvable).

Retention (shared/retention.py): a plan expires `retention.plans_days` after it was made; its index
entry and its state go with it (trimmed on each plan saved), and the index and state hash expire
too when no plan was saved for that long.
"""

from __future__ import annotations

import time
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from . import keys
from .models import Message, Plan, parse_known, utcnow
from .retention import Retention

if TYPE_CHECKING:
    from redis import Redis


class PlanState(StrEnum):
    RECOMMENDED = "recommended"
    APPROVED = "approved"
    RUNNING = "running"
    DONE = "done"
    SUPERSEDED = "superseded"
    REJECTED = "rejected"
    DRY_RUN = "dry-run"


class PlanStatus(Message):
    kind: Literal["plan-status"] = "plan-status"
    plan_id: str
    state: PlanState
    reason: str = ""
    at: datetime = Field(default_factory=utcnow)
    request_id: str | None = Field(None, description="the operator request that made or approved it")
    vmids: list[int] | None = Field(None, description="approved with only these moves")


class PlanStore:
    def __init__(self, redis: Redis, retention: Retention | None = None) -> None:
        self.redis = redis
        self.retention = retention or Retention()

    def save(self, plan: Plan, status: PlanStatus) -> None:
        raw = plan.model_dump_json()
        ttl = self.retention.plan_seconds
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.plan(plan.plan_id), raw, ex=ttl)
        pipe.set(keys.PLAN_LATEST, raw, ex=ttl)
        pipe.zadd(keys.PLAN_INDEX, {plan.plan_id: plan.created_at.timestamp()})
        pipe.hset(keys.PLAN_STATUS, plan.plan_id, status.model_dump_json())
        pipe.expire(keys.PLAN_INDEX, ttl)
        pipe.expire(keys.PLAN_STATUS, ttl)
        pipe.execute()
        self.forget_older_than(time.time() - ttl)

    def plan(self, plan_id: str) -> Plan | None:
        return parse_known(Plan, self.redis.get(keys.plan(plan_id)))

    def latest(self) -> Plan | None:
        return parse_known(Plan, self.redis.get(keys.PLAN_LATEST))

    def status(self, plan_id: str) -> PlanStatus | None:
        return parse_known(PlanStatus, self.redis.hget(keys.PLAN_STATUS, plan_id))

    def set_state(self, plan_id: str, state: PlanState, reason: str = "", **fields: object) -> PlanStatus:
        old = self.status(plan_id)
        status = PlanStatus(plan_id=plan_id, state=state, reason=reason,
                            request_id=fields.get("request_id", old.request_id if old else None),
                            vmids=fields.get("vmids", old.vmids if old else None))
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.PLAN_STATUS, plan_id, status.model_dump_json())
        pipe.expire(keys.PLAN_STATUS, self.retention.plan_seconds)
        pipe.execute()
        return status

    def recent(self, count: int = 20) -> list[tuple[Plan, PlanStatus | None]]:
        found = []
        for raw_id in self.redis.zrevrange(keys.PLAN_INDEX, 0, count - 1):
            plan_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            plan = self.plan(plan_id)
            if plan is not None:
                found.append((plan, self.status(plan_id)))
        return found

    def in_state(self, *states: PlanState) -> list[PlanStatus]:
        statuses = (parse_known(PlanStatus, raw) for raw in self.redis.hvals(keys.PLAN_STATUS))
        return sorted((s for s in statuses if s is not None and s.state in states), key=lambda s: s.at)

    def forget_older_than(self, timestamp: float) -> None:
        """Plans expire on their own; their index entries and states are dropped here (by `save`)."""
        old = self.redis.zrangebyscore(keys.PLAN_INDEX, "-inf", timestamp)
        if old:
            self.redis.zrem(keys.PLAN_INDEX, *old)
            self.redis.hdel(keys.PLAN_STATUS, *old)
