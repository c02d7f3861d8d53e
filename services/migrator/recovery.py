"""Keeping the job store and rq in step: whatever ends an rq job settles the migration job too.

rq is the source of truth for whether a job is queued, running or over; the job store for how the
migration went. They meet in two places:

- `settle` is rq's failure, stopped and horse-killed callback (and runs for jobs whose worker died,
  through rq's own StartedJobRegistry.cleanup). A job that rq ended while the job store still has it
  active is marked to be taken over.
- `Reconciler.run_once`, every few seconds in one worker at a time, compares each active job with
  rq: a job rq has ended is queued again (its runner resumes it: a job in flight follows its task,
  never POSTs twice) or, after MAX_TAKEOVERS, ended failed with rq's reason; a job rq calls queued but
  that no queue holds (a dequeue that popped it and lost it, rq issues #758 and #2079) is queued
  again, once; a job that never started within its deadline is ended, so the planner never stalls.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.timeouts import TimerDeathPenalty

from pvebalance.shared import keys
from pvebalance.shared.config import Settings
from pvebalance.shared.jobqueue import end_overdue, enqueue_migration
from pvebalance.shared.jobstore import JobStore, in_flight
from pvebalance.shared.logging import get_logger
from pvebalance.shared.models import JobState
from pvebalance.shared.redisconn import Outage
from pvebalance.shared.retention import Retention

log = get_logger("pvebalance.migrator.recovery")

MAX_TAKEOVERS = 5  # times one job is queued again after its run ended early, before it is ended as failed
LOST_AFTER = 15.0  # seconds a 'queued' job may be in no queue list (a dequeue in progress takes ms)


def settle(redis: Redis, job_id: str, reason: str) -> None:
    """rq ended this job (an exception, a timeout, a stop, a killed work-horse, a dead worker)."""
    store = JobStore(redis)
    record = store.load(job_id)
    state = record.get("state")
    if not state or JobState(state).terminal:
        return
    store.set_fields(job_id, interrupted=reason[-500:])
    log.warning("a job's run ended before the job did; it will be taken over", job_id=job_id, state=state,
                upid=record.get("upid"), reason=reason[-300:])


class Reconciler:
    def __init__(self, redis: Redis, settings: Settings, interval: float = 2.0, lost_after: float = LOST_AFTER) -> None:
        self.redis = redis
        self.lost_after = lost_after
        self.settings = settings
        self.interval = interval
        self.store = JobStore(redis, Retention(settings.retention))
        self.queue = Queue(keys.MIGRATION_QUEUE, connection=redis)
        # rq runs failure callbacks under a death penalty; the signal-based default works only in a
        # process's main thread, and the reconciler runs in its own.
        self.started = StartedJobRegistry(queue=self.queue, death_penalty_class=TimerDeathPenalty)
        self.me = uuid.uuid4().hex

    def run(self, stop: threading.Event) -> None:
        outage = Outage(log, "Redis", "the job reconciler")
        while not stop.wait(self.interval):
            try:
                self.run_once()
                outage.ok()
            except RedisError as exc:
                outage.failed(exc)
            except Exception:  # a bug: say where, and keep reconciling
                log.exception("job reconciliation failed")

    def run_once(self) -> list[str]:
        """One pass; returns the ids of the jobs it acted on. Only one worker passes at a time."""
        if not self.redis.set(keys.RECONCILER_LOCK, self.me, nx=True, px=int(self.interval * 900)):
            return []
        # rq's own detection of runs whose worker died: their failure callback (settle) runs here.
        self.started.cleanup()
        acted = end_overdue(self.store, self.settings)
        # A job marked 'resuming' that ended without a run (given up, cancelled) must not keep
        # runners waiting for slots giving their workers away.
        ended = self.redis.sdiff(keys.RESUMING, keys.ACTIVE_JOBS)
        if ended:
            self.redis.srem(keys.RESUMING, *ended)
        for job_id in sorted(self.store.active_jobs()):
            try:
                if self._reconcile(job_id):
                    acted.append(job_id)
            except RedisError:
                raise
            except Exception:  # one odd job must not stop the others being looked after
                log.exception("could not reconcile a job", job_id=job_id)
        return acted

    def _reconcile(self, job_id: str) -> bool:
        record = self.store.load(job_id)
        state = record.get("state")
        if not state or JobState(state).terminal:
            self.redis.srem(keys.ACTIVE_JOBS, job_id)  # a leftover: the hash is gone or the job ended
            return True
        if self.redis.exists(keys.lease(job_id)):
            return False  # a runner is working on it
        try:
            rq_job: Job | None = Job.fetch(job_id, connection=self.redis)
            status = rq_job.get_status() if rq_job else None
        except NoSuchJobError:
            rq_job, status = None, None
        if status is JobStatus.QUEUED:
            return self._find_lost(job_id)
        if rq_job is None and state == JobState.QUEUED.value and \
                time.time() - float(record.get("created_at") or 0) < self.lost_after:
            return False  # just created: the planner puts a job in the job store, then in rq's queue
        self.redis.hdel(keys.LOST_SINCE, job_id)
        if status in (JobStatus.DEFERRED, JobStatus.SCHEDULED):
            return False  # waiting for the moves it depends on
        if status is JobStatus.STARTED and job_id in self.started:
            return False  # running; if its worker died, rq's cleanup above will say so
        return self._take_over(job_id, record, rq_job, status)

    def _find_lost(self, job_id: str) -> bool:
        """A job rq calls queued must be in the queue (or, for a moment, its intermediate list)."""
        queued = self.redis.lpos(self.queue.key, job_id) is not None
        if queued:
            self.redis.hdel(keys.LOST_SINCE, job_id)
            return False
        now = time.time()
        if self.redis.hsetnx(keys.LOST_SINCE, job_id, now) and self.lost_after > 0:
            return False
        since = float(self.redis.hget(keys.LOST_SINCE, job_id) or now)
        if now - since < self.lost_after:
            return False
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrem(self.queue.intermediate_queue_key, 0, job_id)
        pipe.rpush(self.queue.key, job_id)
        pipe.hdel(keys.LOST_SINCE, job_id)
        pipe.execute()
        log.warning("job was queued in no queue (popped by a dequeue that never ran it): queued again",
                    job_id=job_id, lost_s=round(now - since, 1))
        return True

    def _take_over(self, job_id: str, record: dict[str, str], rq_job: Job | None, status: Any) -> bool:
        job = self.store.job(job_id)
        if job is None:
            return False
        takeovers = int(record.get("takeovers") or 0)
        reason = record.get("interrupted") or _rq_reason(rq_job) or f"rq says the job is {status or 'gone'}"
        if takeovers >= MAX_TAKEOVERS:
            note = f"; its task {record['upid']} may still run" if record.get("upid") else ""
            message = f"given up after {takeovers + 1} runs{note}: {reason}"
            if self.store.transition(job, JobState.FAILED, message):
                log.error("job given up", job_id=job_id, reason=message)
            return True
        if rq_job is None:
            enqueue_migration(self.queue, self.settings, job, at_front=True)
        elif job_id in self.queue.failed_job_registry:
            self.queue.failed_job_registry.requeue(job_id, at_front=True)
        else:
            self.queue.enqueue_job(rq_job, at_front=True)
        self.redis.hdel(keys.job(job_id), "interrupted", "handed_over")
        if not record.get("handed_over"):  # a worker stopped on purpose handed it over: no takeover spent
            self.store.count(job_id, "takeovers")
        if in_flight(record):
            # Its pinned slots may be what every busy worker waits for: they give way (see Slots.wait).
            self.redis.sadd(keys.RESUMING, job_id)
        log.warning("job taken over: queued again to be resumed", job_id=job_id, rq_status=str(status),
                    in_flight=in_flight(record), upid=record.get("upid"), reason=reason[-300:])
        return True


def _rq_reason(rq_job: Job | None) -> str:
    if rq_job is None:
        return ""
    try:
        result = rq_job.latest_result()
    except Exception:
        return ""
    text = (getattr(result, "exc_string", None) or "").strip()
    return text.splitlines()[-1] if text else ""
