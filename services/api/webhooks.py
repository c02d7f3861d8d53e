"""Webhooks (`notifications.webhooks`): plan made, migration failed, drain done, request refused.

The API process watches what the services already write to Redis (the plan index, the job event
stream, request statuses), so no service waits on a webhook: a migration is carried out by a worker
that never posts anything, and a webhook that hangs or fails only delays its own later posts.
One API instance at a time sends (a lock in Redis), from a cursor kept in Redis, so a restarted or
second API does not send an event twice. Each webhook has its own queue and sender thread; a post is
retried with exponential backoff (tenacity) on connection errors, 429 and 5xx, up to `attempts`.
What was queued but not yet sent when the process stops is lost (at most once, never twice).

Body: {"event": "migration_failed", "at": ISO time, "data": {...}} as JSON.
"""

from __future__ import annotations

import queue
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from redis.exceptions import RedisError
from tenacity import RetryError, retry_if_exception, stop_after_attempt, wait_exponential
from tenacity import Retrying as TenacityRetrying

from pvebalance.shared import keys
from pvebalance.shared.config import Webhook
from pvebalance.shared.heartbeat import INSTANCE
from pvebalance.shared.jobs import JobState
from pvebalance.shared.logging import get_logger
from pvebalance.shared.redisconn import Outage
from pvebalance.shared.requests import RequestAction, RequestState

from .context import ApiContext

log = get_logger("pvebalance.api.webhooks")

LOCK_TTL = 15
POLL_SECONDS = 1.0


class Retryable(Exception):
    """An answer worth trying again: 429 or a 5xx."""


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, Retryable | httpx.TransportError)


class Sender:
    """One webhook's queue and the thread that posts it, with retries."""

    def __init__(self, hook: Webhook, client: httpx.Client, backoff: float = 0.5) -> None:
        self.hook, self.client, self.backoff = hook, client, backoff
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=10_000)
        self.sent = 0
        self.given_up = 0

    def offer(self, body: dict[str, Any]) -> None:
        if body["event"] not in self.hook.events:
            return
        try:
            self.queue.put_nowait(body)
        except queue.Full:
            log.warning("webhook queue full: notification dropped", url=self.hook.url, notification=body["event"])

    def post(self, body: dict[str, Any]) -> None:
        def attempt() -> None:
            answer = self.client.post(self.hook.url, json=body, timeout=self.hook.timeout)
            if answer.status_code == 429 or answer.status_code >= 500:
                raise Retryable(f"HTTP {answer.status_code}")
            answer.raise_for_status()

        try:
            for tried in TenacityRetrying(stop=stop_after_attempt(self.hook.attempts),
                                          wait=wait_exponential(multiplier=self.backoff, max=60),
                                          retry=retry_if_exception(_retryable)):
                with tried:
                    attempt()
            self.sent += 1
        except (RetryError, httpx.HTTPError, Retryable) as exc:
            self.given_up += 1
            cause = exc.last_attempt.exception() if isinstance(exc, RetryError) else exc
            log.warning("webhook not delivered", url=self.hook.url, notification=body["event"],
                        error=f"{type(cause).__name__}: {cause}")

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                body = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if body is not None:
                self.post(body)


class Notifier:
    def __init__(self, context: ApiContext, client: httpx.Client | None = None, backoff: float = 0.5) -> None:
        self.context = context
        self.client = client or httpx.Client()
        self.senders = [Sender(h, self.client, backoff) for h in context.settings.notifications.webhooks]
        self.outage = Outage(log, "Redis", "the notifier")
        self.instance = f"{INSTANCE}-{uuid.uuid4().hex[:6]}"  # two notifiers never share the lock

    def _notify(self, event: str, data: dict[str, Any]) -> None:
        body = {"event": event, "at": datetime.now(UTC).isoformat(), "data": data}
        for sender in self.senders:
            sender.offer(body)

    def _hold_lock(self) -> bool:
        redis = self.context.redis
        if redis.set(keys.NOTIFIER_LOCK, self.instance, nx=True, ex=LOCK_TTL):
            return True
        holder = redis.get(keys.NOTIFIER_LOCK)
        if (holder.decode() if isinstance(holder, bytes) else holder) == self.instance:
            redis.expire(keys.NOTIFIER_LOCK, LOCK_TTL)
            return True
        return False

    def _start_cursor(self) -> None:
        """The first notifier of a Redis starts from now: what happened before it is not news."""
        redis = self.context.redis
        if redis.hget(keys.NOTIFIER_CURSOR, "events") is not None:
            return
        last = redis.xrevrange(keys.EVENT_STREAM, count=1)
        events = last[0][0] if last else b"0-0"
        for status in self.context.requests.recent(1000):
            if status.state.final:
                redis.sadd(keys.NOTIFIER_REQUESTS, status.request.request_id)
        redis.hset(keys.NOTIFIER_CURSOR, mapping={"events": events, "plans": datetime.now(UTC).timestamp()})

    def step(self) -> None:
        """One look at Redis: queue what is new since the cursor. Only the lock holder looks."""
        if not self.senders or not self._hold_lock():
            return
        self._start_cursor()
        redis, read = self.context.redis, self.context.read
        cursor = redis.hget(keys.NOTIFIER_CURSOR, "events")
        after = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        for entry_id, event in read.jobs.events(after, count=1000):
            if event.state == JobState.FAILED:  # a job of any kind: its `action` says which (migrate, move-disk)
                self._notify("migration_failed", event.model_dump(mode="json"))
            after = entry_id
        redis.hset(keys.NOTIFIER_CURSOR, "events", after)

        since = float(redis.hget(keys.NOTIFIER_CURSOR, "plans") or 0)
        for raw_id, score in redis.zrangebyscore(keys.PLAN_INDEX, f"({since}", "+inf", withscores=True):
            plan = read.plans.plan(raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id))
            # A plan with nothing to do is made on every snapshot of a balanced cluster: not news.
            if plan is not None and (plan.actions or plan.outcome in ("partial", "infeasible")):
                self._notify("plan_made", {"plan_id": plan.plan_id, "outcome": plan.outcome,
                                           "outcome_reason": plan.outcome_reason,
                                           "migrations": len(plan.migrations),
                                           "disk_moves": len(plan.disk_moves),
                                           "spread_before_pp": plan.before.spread_pp,
                                           "spread_after_pp": plan.after.spread_pp})
            since = max(since, float(score))
        redis.hset(keys.NOTIFIER_CURSOR, "plans", since)

        for status in self.context.requests.recent(200):
            if not status.state.final or not redis.sadd(keys.NOTIFIER_REQUESTS, status.request.request_id):
                continue
            redis.expire(keys.NOTIFIER_REQUESTS, self.context.requests.retention.request_seconds)
            data = status.model_dump(mode="json")
            if status.state == RequestState.REFUSED:
                self._notify("request_refused", data)
            elif status.state == RequestState.DONE and status.request.action == RequestAction.DRAIN:
                self._notify("drain_done", data)

    def run(self, stop: threading.Event) -> None:
        for sender in self.senders:
            threading.Thread(target=sender.run, args=(stop,), name="webhook-sender", daemon=True).start()
        while not stop.is_set():
            try:
                self.step()
                self.outage.ok()
            except RedisError as exc:
                self.outage.failed(exc)
            except Exception:  # a bug: say where, keep notifying
                log.exception("notifier step failed")
            stop.wait(POLL_SECONDS)
