"""Running again what rq lost.

rq runs the jobs, and its lists and registries say where each run is: waiting in the queue (or, for a
moment, in its dequeue's intermediate list), running (StartedJobRegistry), waiting for the moves it
depends on (DeferredJobRegistry), or over (finished, failed). rq finds its own lost runs: a run whose
worker died is moved to the failed registry by StartedJobRegistry.cleanup (which this pass calls, as
every worker's maintenance does), and one stuck in the intermediate list by the workers' maintenance
(IntermediateQueue.cleanup). The job store says whether the job itself has ended.

A job is lost when the job store has it live (queued, waiting, running), no runner holds its lease,
and rq holds no run of it to come: no rq job, or one that is in none of the lists and registries
above (its run failed, was stopped, or returned without ending the job: a hand-over). The reconciler
runs it again, at the front of the queue (its runner resumes it: a job in flight follows its task,
never POSTs twice), or, after MAX_TAKEOVERS, ends it failed with rq's reason. A job that never
started within its deadline is ended (jobqueue.end_overdue), so the planner never stalls.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.timeouts import TimerDeathPenalty

from pvebalance.shared import keys
from pvebalance.shared.config import Settings
from pvebalance.shared.jobqueue import end_overdue, enqueue_job
from pvebalance.shared.jobrecord import JobRecord
from pvebalance.shared.jobs import JobState, job_ids
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.logging import get_logger
from pvebalance.shared.plans import PlanStore
from pvebalance.shared.redisconn import Outage
from pvebalance.shared.retention import Retention

log = get_logger("pvebalance.migrator.recovery")

MAX_TAKEOVERS = 5  # times one job is run again after its run ended early, before it is ended as failed
LOST_AFTER = 15.0  # seconds a new job may be missing from rq: the planner stores a job, then enqueues it
# rq statuses of a job that waits in a registry this pass does not list (rq 3's rate limits, dependents
# about to be enqueued): rq still holds a run of it.
_WAITING = {s for s in JobStatus if s.value in ("deferred", "scheduled", "rate_limited", "ready_to_enqueue")}


def settle(redis: Redis, job_id: str, reason: str) -> None:
    """rq ended this job's run (an exception, a timeout, a stop, a killed work-horse, a dead worker)."""
    store = JobStore(redis)
    record = store.load(job_id)
    if not record.live:
        return
    store.set_fields(job_id, interrupted=reason[-500:])
    log.warning("a job's run ended before the job did; it will be run again", job_id=job_id,
                state=record.fields.get("state"), upid=record.upid, reason=reason[-300:])


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
        with contextlib.suppress(RedisError):  # they hold nothing this version needs; a later start retries
            self.redis.delete(*keys.RETIRED)
        while not stop.wait(self.interval):
            try:
                self.run_once()
                outage.ok()
            except RedisError as exc:
                outage.failed(exc)
            except Exception:  # a bug: say where, and keep reconciling
                log.exception("job reconciliation failed")

    def run_once(self) -> list[str]:
        """One pass; returns the ids of the jobs it acted on. One pass per interval across all workers (a
        rate, not a mutex: two passes that overlap still run a job again once, see JobStore.take_over)."""
        if not self.redis.set(keys.RECONCILER_LOCK, self.me, nx=True, px=int(self.interval * 900)):
            return []
        self.started.cleanup()  # rq's detection of runs whose worker died: to its failed registry
        acted = end_overdue(self.store, self.settings)
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
        if not record.live:
            return self.store.forget_ended(job_id)  # a leftover: the hash is gone or the job ended
        if self.redis.exists(keys.lease(job_id)) or self.rq_holds(job_id):
            return False  # a runner works on it, or rq will run it
        if time.time() - (record.created_at or 0) < self.lost_after and not self.redis.exists(Job.key_for(job_id)):
            return False  # just made: the planner puts a job in the job store, then in rq's queue
        return self._run_again(record)

    def rq_holds(self, job_id: str) -> bool:
        """rq has a run of this job to come or under way. Read in one transaction, so a run moving from
        one list to the next (queue -> intermediate -> started) is seen in exactly one."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(Job.key_for(job_id), "status")
        pipe.lpos(self.queue.key, job_id)
        pipe.lpos(self.queue.intermediate_queue_key, job_id)
        pipe.zrange(self.started.key, 0, -1)
        pipe.zscore(self.queue.deferred_job_registry.key, job_id)
        pipe.zscore(self.queue.scheduled_job_registry.key, job_id)
        status, queued, dequeued, started, deferred, scheduled = pipe.execute()
        if queued is not None or dequeued is not None or deferred is not None or scheduled is not None:
            return True
        if job_id in {StartedJobRegistry.parse_job_id(entry) for entry in started}:
            return True  # running; if its worker died, rq's cleanup moves it to the failed registry
        if status is None:
            return False
        try:
            return JobStatus(status.decode() if isinstance(status, bytes) else status) in _WAITING
        except ValueError:
            return True  # a status this rq does not know: leave it to rq

    def _run_again(self, record: JobRecord) -> bool:
        job_id = record.job_id
        job = self.store.job(job_id)
        if job is None:
            return False
        try:
            rq_job: Job | None = Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            rq_job = None
        reason = record.interrupted or _rq_reason(rq_job) or \
            f"rq says the job is {rq_job.get_status() if rq_job else 'gone'}"
        if record.takeovers >= MAX_TAKEOVERS:
            note = f"; its task {record.upid} may still run" if record.upid else ""
            message = f"given up after {record.takeovers + 1} runs{note}: {reason}"
            if self.store.transition(job, JobState.FAILED, message, upid=record.upid):
                log.error("job given up", job_id=job_id, reason=message)
            return True
        if not self.store.take_over(record):
            return False  # another pass took it over meanwhile
        if rq_job is None:
            # queued as the planner queued it: after the jobs of its plan it waits for that have not ended
            # (none for a job in flight: its task runs, and is followed at once)
            after = [] if record.in_flight else self._waits(job_id, job.plan_id)
            enqueue_job(self.queue, self.settings, job, after, at_front=True)
        elif job_id in self.queue.failed_job_registry:
            with contextlib.suppress(InvalidJobOperation):  # no longer there: queued again by rq's own retry
                self.queue.failed_job_registry.requeue(job_id, at_front=True)
        else:
            self.queue.enqueue_job(rq_job, at_front=True)
        log.warning("job lost by rq: queued again to be resumed", job_id=job_id, in_flight=record.in_flight,
                    upid=record.upid, handed_over=record.handed_over, reason=reason[-300:])
        return True


    def _waits(self, job_id: str, plan_id: str) -> list[str]:
        """The jobs the plan says `job_id` waits for (its action's `after`) that are live and known to rq."""
        plan = PlanStore(self.redis).plan(plan_id)
        if plan is None:
            return []
        ids = job_ids(plan)
        if job_id not in ids:
            return []
        before = [ids[i] for i in plan.actions[ids.index(job_id)].after]
        return [r.job_id for r in self.store.load_many(before) if r.live and Job.exists(r.job_id, self.redis)]


def _rq_reason(rq_job: Job | None) -> str:
    if rq_job is None:
        return ""
    try:
        result = rq_job.latest_result()
    except Exception:
        return ""
    text = (getattr(result, "exc_string", None) or "").strip()
    return text.splitlines()[-1] if text else ""
