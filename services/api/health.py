"""/healthz (the process answers) and /readyz (Redis answers, a fresh snapshot, a planner alive)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis import Redis
from redis.exceptions import RedisError, ResponseError

from pvebalance.shared import keys
from pvebalance.shared.heartbeat import alive

from .routes_read import ctx

router = APIRouter(tags=["health"])


def planners_alive(redis: Redis) -> list[str]:
    """Planners that beat their heartbeat, or that read the snapshot stream within the heartbeat TTL.

    A planner blocks on the stream for a second at a time, and each read (even one that returns
    nothing) resets its consumer's `idle` in Redis, so the consumer group shows a live planner
    whether or not it beats a heartbeat of its own.
    """
    found = [f"heartbeat:{name}" for name in alive(redis, "planner")]
    try:
        consumers = redis.xinfo_consumers(keys.SNAPSHOT_STREAM, keys.PLANNER_GROUP)
    except ResponseError:  # no stream or no group yet: no planner has ever started
        consumers = []
    for consumer in consumers:
        name = consumer.get("name") or consumer.get(b"name") or b""
        idle = consumer.get("idle", consumer.get(b"idle", 10**12))
        if int(idle) < keys.HEARTBEAT_TTL * 1000:
            found.append(f"consumer:{name.decode() if isinstance(name, bytes) else name}")
    return found


def planner_count(redis: Redis) -> int:
    """How many planners run: one heartbeat each (leader and standby both beat). Only a planner that
    beats none (an older version) is counted by the snapshot stream's live consumers; a beating
    planner is also such a consumer, and counting both made one planner two."""
    found = planners_alive(redis)
    beating = [f for f in found if f.startswith("heartbeat:")]
    return len(beating) if beating else len(found)


class Health(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    ready: bool
    redis: bool
    snapshot_age_s: float | None = Field(None, description="None: no snapshot")
    max_snapshot_age_s: float
    planners: list[str] = Field(description="planners seen alive: by heartbeat, or reading the snapshot stream")
    problems: list[str]


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "not ready"}})
def readyz(request: Request) -> JSONResponse:
    context = ctx(request)
    limit = context.settings.planner.max_snapshot_age
    problems: list[str] = []
    redis_ok, age, planners = True, None, []
    try:
        context.redis.ping()
        snapshot = context.read.snapshot()
        age = round(snapshot.age_seconds(), 3) if snapshot else None
        planners = planners_alive(context.redis)
    except RedisError as exc:
        redis_ok = False
        problems.append(f"Redis does not answer: {type(exc).__name__}")
    if redis_ok:
        if age is None:
            problems.append("no cluster snapshot (is the collector running?)")
        elif age > limit:
            problems.append(f"the latest snapshot is {age:.0f} s old (planner.max_snapshot_age: {limit:.0f} s)")
        if not planners:
            problems.append("no planner alive")
    body = Readiness(ready=not problems, redis=redis_ok, snapshot_age_s=age, max_snapshot_age_s=limit,
                     planners=planners, problems=problems)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if body.ready else 503)
