"""Read endpoints: the cluster now, plans, jobs, and the job event stream (Server-Sent Events)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field, ValidationError

from pvebalance.shared import keys
from pvebalance.shared.jobs import JobState, JobStatusEvent
from pvebalance.shared.models import PlanOutcome
from pvebalance.shared.plans import PlanState

from .auth import Reader
from .context import ApiContext
from .history import UsageHistory, history
from .views import ClusterView, JobDetail, JobView, PlanView

router = APIRouter(prefix="/api/v1", tags=["read"])

Responses = dict[int | str, dict[str, Any]]
NOT_FOUND: Responses = {404: {"description": "no such thing"}}
NEEDS_TOKEN: Responses = {401: {"description": "no token (api.read_requires_token), or a token that matches none"}}
STREAM_ID = r"^\d{1,20}-\d{1,20}$"


def ctx(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.ctx
    return context


@router.get("/cluster", response_model=ClusterView, responses={**NEEDS_TOKEN, 503: {"description": "no snapshot yet"}})
def cluster(request: Request, _: Reader) -> ClusterView:
    """Nodes with their usage per resource now and after the current plan, guests, shared storages' use, and the
    snapshot's age."""
    read = ctx(request).read
    snapshot = read.snapshot()
    if snapshot is None:
        raise HTTPException(503, "no cluster snapshot yet: is the collector running?")
    return read.cluster(snapshot)


class PlanSummary(BaseModel):
    """One recent plan, as `pvebalance plans` lists it."""

    plan_id: str
    created_at: datetime
    state: PlanState | None = Field(None, description="None: its state is gone or unreadable")
    reason: str = Field("", description="why it is in that state (who rejected it and why, ...)")
    outcome: PlanOutcome
    outcome_reason: str
    migrations: int
    disk_moves: int = Field(0, description="its move-disk actions (storage balancing)")
    spread_before_pp: float
    spread_after_pp: float


@router.get("/plans", response_model=list[PlanSummary], responses=NEEDS_TOKEN)
def plans(request: Request, _: Reader,
          limit: Annotated[int, Query(ge=1, le=500, description="how many, newest first")] = 20) -> list[PlanSummary]:
    """Recent plans, newest first, each with its state and outcome (the whole plan: /plans/{plan_id})."""
    return [PlanSummary(plan_id=p.plan_id, created_at=p.created_at, state=s.state if s else None,
                        reason=s.reason if s else "", outcome=p.outcome, outcome_reason=p.outcome_reason,
                        migrations=len(p.migrations), disk_moves=len(p.disk_moves), spread_before_pp=p.before.spread_pp,
                        spread_after_pp=p.after.spread_pp)
            for p, s in ctx(request).read.plans.recent(limit)]


@router.get("/plans/latest", response_model=PlanView, responses={**NEEDS_TOKEN, **NOT_FOUND})
def latest_plan(request: Request, _: Reader) -> PlanView:
    """The newest plan: its actions (migrations, disk moves) with reasons and each one's job state, before/after
    per node (and per storage, with storage balancing on), its state."""
    read = ctx(request).read
    plan = read.plans.latest()
    if plan is None:
        raise HTTPException(404, f"no plan yet ({read.retention.plans_kept()})")
    return read.plan_view(plan)


@router.get("/plans/{plan_id}", response_model=PlanView, responses={**NEEDS_TOKEN, **NOT_FOUND})
def plan_by_id(request: Request, plan_id: str, _: Reader) -> PlanView:
    read = ctx(request).read
    plan = read.plans.plan(plan_id)
    if plan is None:
        raise HTTPException(404, f"no plan {plan_id} ({read.retention.plans_kept()})")
    return read.plan_view(plan)


@router.get("/usage/history", response_model=UsageHistory, responses=NEEDS_TOKEN)
def usage_history(request: Request, _: Reader,
                  hours: Annotated[int, Query(ge=1, le=12, description="the last this many hours")] = 6
                  ) -> UsageHistory:
    """Each node's usage per resource over the last hours, one sample a minute at most (kept 12 hours)."""
    return history(ctx(request).redis, hours)


@router.get("/jobs", response_model=list[JobView], responses=NEEDS_TOKEN)
def jobs(request: Request, _: Reader,
         state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
         plan_id: Annotated[str | None, Query(description="only the jobs of this plan")] = None,
         vmid: Annotated[int | None, Query(ge=0, description="only the jobs of this guest")] = None,
         limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[JobView]:
    """Jobs (migrations, disk moves), newest first: active ones and those in the retained event stream."""
    read = ctx(request).read
    found: list[JobView] = []
    for job_id in read.listed_jobs(plan_id):
        view = read.job_view(job_id)
        if view is None or (state is not None and view.state != state) or (vmid is not None and view.vmid != vmid):
            continue
        found.append(view)
        if len(found) >= limit:
            break
    return found


@router.get("/jobs/{job_id}", response_model=JobDetail, responses={**NEEDS_TOKEN, **NOT_FOUND})
def job(request: Request, job_id: str, _: Reader) -> JobDetail:
    """One job and every status event of it still in the stream."""
    read = ctx(request).read
    view = read.job_view(job_id)
    if view is None:
        raise HTTPException(404, f"no job {job_id}")
    return JobDetail(**view.model_dump(), events=read.events_of(job_id))


@router.get("/events", response_class=EventSourceResponse, responses=NEEDS_TOKEN)
async def events(request: Request, _: Reader,
                 after: Annotated[str | None, Query(pattern=STREAM_ID, description="a stream id: events after it "
                                                    "(default: only new ones)")] = None,
                 last_event_id: Annotated[str | None, Header(pattern=STREAM_ID)] = None
                 ) -> AsyncIterator[ServerSentEvent]:
    """Job status events as Server-Sent Events (`event: job`, `id:` the stream id, `data:` the event),
    resumable with `Last-Event-ID`; a comment line every 15 s keeps proxies from closing it."""
    redis = ctx(request).async_redis
    cursor = last_event_id or after or "$"
    while not await request.is_disconnected():
        entries = await redis.xread({keys.EVENT_STREAM: cursor}, count=100, block=5000)
        for _stream, items in entries or []:
            for raw_id, fields in items:
                cursor = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                raw = fields.get(b"event") or fields.get("event") or b""
                try:
                    event = JobStatusEvent.model_validate_json(raw)
                except ValidationError:
                    continue  # a newer writer's schema: skipped, as `pvebalance jobs` skips it
                yield ServerSentEvent(data=event, event="job", id=cursor)
