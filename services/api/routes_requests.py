"""Operator requests over HTTP: the same actions as the CLI, handed to the planner.

Each answers 202 with the request's id: the request is stored pending and the planner (the one
consumer of the request stream, and the only one that settles a request) takes it on; its state is
read at /api/v1/requests/{id}. What the API can see at once is refused at once (404 for a node the
cluster does not have or a plan that does not exist); the rest (does the drain fit, is the plan
still approvable) is the planner's to decide, and the request ends refused with its reason.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from pvebalance.shared.jobs import JobState
from pvebalance.shared.logging import get_logger
from pvebalance.shared.requests import OperatorRequest, RequestAction, RequestState, RequestStatus

from .auth import Reader, Writer
from .jsontypes import JsonTyped
from .routes_read import NEEDS_TOKEN, NOT_FOUND, Responses, ctx

log = get_logger("pvebalance.api")
router = APIRouter(prefix="/api/v1", tags=["operator requests"])

WRITE_ERRORS: Responses = {400: {"description": "a body that cannot be read at all (not UTF-8 JSON)"},
                           401: {"description": "no token, or a token that matches none"},
                           403: {"description": "a read-only token"}}


class Body_(JsonTyped):
    model_config = ConfigDict(extra="forbid")


class DrainBody(Body_):
    include_stopped: bool = Field(False, description="move stopped guests off the node too")


class RebalanceBody(Body_):
    dry_run: bool = Field(False, description="plan and store the plan (state dry-run): never enqueued, never "
                          "approvable, and a plan waiting for approval stays waiting")


class ApproveBody(Body_):
    vmids: list[int] | None = Field(None, description="only these moves of the plan (default: all)")


class RejectBody(Body_):
    reason: str = Field("", max_length=500, description="why: kept with the plan's state, shown with the plan")


class PauseBody(Body_):
    seconds: float | None = Field(None, gt=0, description="for how long (default: until resumed)")
    reason: str = Field("", max_length=500)


class Accepted(BaseModel):
    request_id: str
    state: RequestState
    status_url: str = Field(description="where the request's state is read")


def _submit(request: Request, who: str, action: RequestAction, **fields: object) -> Accepted:
    context = ctx(request)
    operator_request = OperatorRequest(action=action, who=who, **fields)
    submitted = context.requests.submit(operator_request)
    log.info("operator request submitted", request_id=operator_request.request_id, action=action.value, who=who)
    return Accepted(request_id=operator_request.request_id, state=submitted.state,
                    status_url=f"/api/v1/requests/{operator_request.request_id}")


def _known_node(request: Request, node: str) -> None:
    """404 for a node the latest snapshot does not have (with no snapshot yet, the planner decides)."""
    snapshot = ctx(request).read.snapshot()
    # the planner matches node names without regard to case: so does this check
    if snapshot is not None and node.lower() not in {n.name.lower() for n in snapshot.nodes}:
        names = ", ".join(sorted(n.name for n in snapshot.nodes))
        raise HTTPException(404, f"no node {node} in the cluster (nodes: {names})")


def _known_plan(request: Request, plan_id: str) -> None:
    if ctx(request).read.plans.plan(plan_id) is None:
        raise HTTPException(404, f"no plan {plan_id} ({ctx(request).read.retention.plans_kept()})")


@router.post("/nodes/{node}/drain", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted,
             responses={**WRITE_ERRORS, **NOT_FOUND})
def drain(request: Request, node: str, who: Writer,
          body: Annotated[DrainBody | None, Body()] = None) -> Accepted:
    """Move every guest off the node and keep it empty until undrained; refused (with the guests that do
    not fit) when the rest of the cluster cannot take them."""
    _known_node(request, node)
    return _submit(request, who.name, RequestAction.DRAIN, node=node,
                   include_stopped=(body or DrainBody()).include_stopped)


@router.post("/nodes/{node}/undrain", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted,
             responses={**WRITE_ERRORS, **NOT_FOUND})
def undrain(request: Request, node: str, who: Writer) -> Accepted:
    _known_node(request, node)
    return _submit(request, who.name, RequestAction.UNDRAIN, node=node)


@router.post("/rebalance", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted,
             responses=WRITE_ERRORS)
def rebalance(request: Request, who: Writer, body: Annotated[RebalanceBody | None, Body()] = None) -> Accepted:
    """Plan now, on the latest snapshot."""
    return _submit(request, who.name, RequestAction.REBALANCE, dry_run=(body or RebalanceBody()).dry_run)


@router.post("/plans/{plan_id}/approve", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted,
             responses={**WRITE_ERRORS, **NOT_FOUND})
def approve(request: Request, plan_id: str, who: Writer,
            body: Annotated[ApproveBody | None, Body()] = None) -> Accepted:
    _known_plan(request, plan_id)
    return _submit(request, who.name, RequestAction.APPROVE, plan_id=plan_id, vmids=(body or ApproveBody()).vmids)


@router.post("/plans/{plan_id}/reject", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted,
             responses={**WRITE_ERRORS, **NOT_FOUND})
def reject(request: Request, plan_id: str, who: Writer, body: Annotated[RejectBody | None, Body()] = None) -> Accepted:
    _known_plan(request, plan_id)
    return _submit(request, who.name, RequestAction.REJECT, plan_id=plan_id, reason=(body or RejectBody()).reason)


@router.post("/pause", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted,
             responses=WRITE_ERRORS)
def pause(request: Request, who: Writer, body: Annotated[PauseBody | None, Body()] = None) -> Accepted:
    """No new migrations until resumed (or `seconds` have passed); running ones finish."""
    given = body or PauseBody()
    return _submit(request, who.name, RequestAction.PAUSE, seconds=given.seconds, reason=given.reason)


@router.post("/resume", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted,
             responses=WRITE_ERRORS)
def resume(request: Request, who: Writer) -> Accepted:
    return _submit(request, who.name, RequestAction.RESUME)


class Cancelled(BaseModel):
    job_id: str
    state: JobState


@router.post("/jobs/{job_id}/cancel", response_model=Cancelled, tags=["jobs"],
             responses={**WRITE_ERRORS, **NOT_FOUND, 409: {"description": "the job has started or ended"}})
def cancel(request: Request, job_id: str, who: Writer) -> Cancelled:
    """Cancel a job that has not started migrating (queued or waiting), as `pvebalance cancel` does: the
    job store's compare-and-set, not a request to the planner, so the answer is final at once."""
    state = ctx(request).read.jobs.cancel(job_id)
    if state is None:
        raise HTTPException(404, f"no job {job_id}")
    if state != JobState.CANCELLED:
        raise HTTPException(409, f"job {job_id} is {state.value}: only queued or waiting jobs can be cancelled")
    log.info("job cancelled", job_id=job_id, who=who.name)
    return Cancelled(job_id=job_id, state=state)


@router.get("/requests", response_model=list[RequestStatus], responses=NEEDS_TOKEN, tags=["read"])
def recent_requests(request: Request, _: Reader) -> list[RequestStatus]:
    """The latest 50 operator requests, newest first."""
    return ctx(request).requests.recent(50)


@router.get("/requests/{request_id}", response_model=RequestStatus, responses={**NEEDS_TOKEN, **NOT_FOUND},
            tags=["read"])
def request_status(request: Request, request_id: str, _: Reader) -> RequestStatus:
    """A request's state: pending, accepted, refused, done or failed, with the reason and details."""
    found = ctx(request).requests.status(request_id)
    if found is None:
        raise HTTPException(404, f"no request {request_id} ({ctx(request).read.retention.requests_kept()})")
    return found
