"""Operator requests: what an operator (the CLI, the HTTP API, a patch tool) asks the planner to do.

Writers append a request to one stream and read its status; the planner is the only consumer of
the stream and the only one that moves a request on from `pending`. A request ends once, in a final
state with a reason (refused, done, failed); one compare-and-set script makes every change, so a
final state never changes again (the job store's rule, for requests).

Retention (shared/retention.py): a request's status expires `retention.requests_days` after its last
change; the index of requests is trimmed to that horizon on each request submitted; the stream the
planner consumes keeps the newest REQUEST_STREAM_ENTRIES.
"""

from __future__ import annotations

import time
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from . import keys
from .models import Message, new_id, parse_known, utcnow
from .retention import REQUEST_STREAM_ENTRIES, Retention

if TYPE_CHECKING:
    from redis import Redis


class RequestAction(StrEnum):
    DRAIN = "drain"
    UNDRAIN = "undrain"
    REBALANCE = "rebalance"
    APPROVE = "approve"
    REJECT = "reject"
    PAUSE = "pause"
    RESUME = "resume"


class RequestState(StrEnum):
    PENDING = "pending"  # written by the CLI or API, not yet read by the planner
    ACCEPTED = "accepted"  # the planner took it on; it has work left (a drain's moves, a plan's jobs)
    REFUSED = "refused"  # bad or impossible: nothing was changed
    DONE = "done"
    FAILED = "failed"  # taken on, but some of its work failed

    @property
    def final(self) -> bool:
        return self in (RequestState.REFUSED, RequestState.DONE, RequestState.FAILED)


class OperatorRequest(Message):
    kind: Literal["operator-request"] = "operator-request"
    request_id: str = Field(default_factory=lambda: new_id("req"))
    action: RequestAction
    who: str = Field("unknown", description="who asked: a free string (user, token name, tool)")
    at: datetime = Field(default_factory=utcnow)
    node: str | None = Field(None, description="drain, undrain: the node")
    include_stopped: bool = Field(False, description="drain: move stopped guests too")
    plan_id: str | None = Field(None, description="approve, reject: the plan")
    vmids: list[int] | None = Field(None, description="approve: only these moves of the plan")
    seconds: float | None = Field(None, gt=0, description="pause: for how long (None: until resumed)")
    reason: str = Field("", description="pause, reject: why, as the operator put it")
    dry_run: bool = Field(False, description="rebalance: plan and store (state dry-run), never enqueue")


class RequestStatus(Message):
    kind: Literal["request-status"] = "request-status"
    request: OperatorRequest
    state: RequestState = RequestState.PENDING
    reason: str = ""
    updated_at: datetime = Field(default_factory=utcnow)
    plan_id: str | None = Field(None, description="the plan this request made or runs")
    details: list[str] = Field(default_factory=list, description="e.g. each guest a drain cannot place, and why")


class RequestSummary(BaseModel):
    """What `pvebalance requests` and the API list: one line per request."""

    request_id: str
    action: RequestAction
    state: RequestState
    reason: str
    who: str


# KEYS: the request's status key. ARGV: new status JSON, new state, TTL, final states.
# A final state never changes again; returns 1 when the change was made.
_SETTLE = """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return 0 end
for s in string.gmatch(ARGV[4], '[^,]+') do
  if s == current then return 0 end
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'status', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
_FINAL = ",".join(s.value for s in RequestState if s.final)


class RequestStore:
    def __init__(self, redis: Redis, retention: Retention | None = None) -> None:
        self.redis = redis
        self.retention = retention or Retention()
        self._settle = redis.register_script(_SETTLE)

    def submit(self, request: OperatorRequest) -> RequestStatus:
        """Store the request as pending and hand it to the planner, in one step."""
        status = RequestStatus(request=request)
        ttl = self.retention.request_seconds
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.request(request.request_id), mapping={"state": status.state.value,
                                                             "status": status.model_dump_json()})
        pipe.expire(keys.request(request.request_id), ttl)
        pipe.zadd(keys.REQUEST_INDEX, {request.request_id: request.at.timestamp()})
        pipe.xadd(keys.REQUEST_STREAM, {"request": request.model_dump_json()},
                  maxlen=REQUEST_STREAM_ENTRIES, approximate=True)
        pipe.execute()
        self.trim_index(time.time() - ttl)
        return status

    def trim_index(self, older_than: float) -> int:
        """Drop the index entries of requests submitted before `older_than` whose status has expired
        (a request still open, a long drain, renews its status on each change and stays listed)."""
        old = [_text(r) for r in self.redis.zrangebyscore(keys.REQUEST_INDEX, "-inf", older_than)]
        if not old:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for request_id in old:
            pipe.exists(keys.request(request_id))
        gone = [r for r, there in zip(old, pipe.execute(), strict=True) if not there]
        if gone:
            self.redis.zrem(keys.REQUEST_INDEX, *gone)
        return len(gone)

    def status(self, request_id: str) -> RequestStatus | None:
        return parse_known(RequestStatus, self.redis.hget(keys.request(request_id), "status"))

    def settle(self, request_id: str, state: RequestState, reason: str = "", *,
               plan_id: str | None = None, details: list[str] | None = None) -> bool:
        """Move a request on (the planner's call); False when it had ended already or is unknown."""
        current = self.status(request_id)
        if current is None:
            return False
        new = current.model_copy(update={
            "state": state, "reason": reason, "updated_at": utcnow(),
            "plan_id": plan_id if plan_id is not None else current.plan_id,
            "details": details if details is not None else current.details,
        })
        done = self._settle(keys=[keys.request(request_id)],
                            args=[new.model_dump_json(), state.value, self.retention.request_seconds, _FINAL])
        return bool(done)

    def open_requests(self, action: RequestAction | None = None) -> list[RequestStatus]:
        """Requests taken on and not yet ended (a drain waiting for its node to empty, ...)."""
        found = []
        for rid in self.redis.zrange(keys.REQUEST_INDEX, 0, -1):
            status = self.status(rid.decode() if isinstance(rid, bytes) else str(rid))
            if status and status.state == RequestState.ACCEPTED and action in (None, status.request.action):
                found.append(status)
        return found

    def recent(self, count: int = 50) -> list[RequestStatus]:
        ids = self.redis.zrevrange(keys.REQUEST_INDEX, 0, count - 1)
        statuses = (self.status(r.decode() if isinstance(r, bytes) else str(r)) for r in ids)
        return [s for s in statuses if s is not None]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
