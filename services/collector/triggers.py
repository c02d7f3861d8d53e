"""When the collector takes a snapshot besides every `collector.interval`: when something happened.

- A plan's last migration ended (the job events say a job reached its final state, and no job is
  active any more): the planner confirms the balance, or plans what is left, on the first snapshot
  it may plan on, and that is one taken `planner.settle_seconds` after the last migration ended
  (the node figures lag the guests; Planner.unsettled refuses a sooner one). So the snapshot is
  taken then, not up to an interval later.
- An operator request arrived (drain, rebalance, ...): the planner answers it on the latest
  snapshot; a fresh one shows the cluster as the operator sees it.

The collector reads both streams (job events, operator requests) from where they stood when it
started, with blocking reads of at most a second, so a stop is noticed within a second. Only the
leading collector runs this (its run loop), so a second collector adds no snapshots.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from redis import Redis
from redis.exceptions import RedisError

from pvebalance.shared import keys
from pvebalance.shared.jobs import JobStatusEvent
from pvebalance.shared.jobstore import JobStore

MAX_BLOCK = 1.0  # seconds a blocking read waits, so that a stop is seen within this
# A snapshot is stamped when its reads begin (Collector.snapshot); a little after the settle time the
# planner's comparison (taken_at - ended >= settle_seconds) holds whatever the rounding of the two clocks.
MARGIN = 0.05

INTERVAL = "interval"
MIGRATIONS_ENDED = "the last migration ended"
OPERATOR_REQUEST = "an operator request"


class Triggers:
    def __init__(self, redis: Redis, settle_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.jobs = JobStore(redis)
        self.settle_seconds = settle_seconds
        self.clock = clock
        self.cursors: dict[str, str] = {}  # where each stream stood when the collector started reading it
        with contextlib.suppress(RedisError):  # away now: from where the streams stand once it answers
            self._start_cursors()
        # Snapshots wanted before the interval ends: once the figures settle after the last migration's end
        # (the last: a job ended later, by the reconciler say, moves it on), and at once for a request.
        self.settled_at: float | None = None
        self.requested_at: float | None = None

    def wait(self, seconds: float, stop: threading.Event) -> str:
        """Wait until the next snapshot is due: after `seconds` (the interval), or sooner when something
        happened meanwhile. Why it is due (INTERVAL, MIGRATIONS_ENDED, OPERATOR_REQUEST); INTERVAL on stop."""
        deadline = self.clock() + seconds
        while not stop.is_set():
            now = self.clock()
            when, why = min((t, w) for t, w in ((deadline, INTERVAL), (self.settled_at, MIGRATIONS_ENDED),
                                                (self.requested_at, OPERATOR_REQUEST)) if t is not None)
            if now >= when:
                if why == MIGRATIONS_ENDED:
                    self.settled_at = None
                elif why == OPERATOR_REQUEST:
                    self.requested_at = None
                return why
            self.read(block=min(when - now, MAX_BLOCK))
        return INTERVAL

    def read(self, block: float | None = None) -> None:
        """Read what arrived on the two streams (waiting up to `block` seconds for it) and note when the
        next snapshot is due because of it."""
        if not self.cursors:
            self._start_cursors()
        answer = self.redis.xread(self.cursors, block=max(int(block * 1000), 1) if block else None)
        for stream, entries in answer or []:
            name = _text(stream)
            for entry_id, fields in entries:
                self.cursors[name] = _text(entry_id)
                if name == keys.REQUEST_STREAM:
                    self.requested_at = self.requested_at or self.clock()
                elif _ended(fields) and not self.jobs.active_jobs():
                    ended = self.jobs.last_change_at() or self.clock()
                    self.settled_at = ended + self.settle_seconds + MARGIN

    def _start_cursors(self) -> None:
        self.cursors = {stream: _last_id(self.redis, stream) for stream in (keys.EVENT_STREAM, keys.REQUEST_STREAM)}


def _ended(fields: dict[Any, Any]) -> bool:
    """Whether the event says a job reached its final state (one this version cannot read: no)."""
    raw = fields.get(b"event") or fields.get("event")
    try:
        return JobStatusEvent.model_validate_json(raw or b"").state.terminal
    except ValidationError:
        return False


def _last_id(redis: Redis, stream: str) -> str:
    last = redis.xrevrange(stream, count=1)
    return _text(last[0][0]) if last else "0-0"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
