"""How a job (any kind, shared/jobs.py) goes onto rq's queue, and when one that never started is given up.

Used by the planner (which enqueues every job) and by the migrator's reconciler (which enqueues a
job again when rq lost it), so both enqueue it the same way.
"""

from __future__ import annotations

import time
from typing import Any

from rq import Callback, Queue
from rq.job import Dependency

from .config import Settings
from .jobrecord import JobRecord
from .jobs import Job, JobState
from .jobstore import JobStore
from .logging import get_logger
from .retention import Retention

log = get_logger("pvebalance.jobs")

JOB_FUNC = "pvebalance.services.migrator.jobs.run_job"


def expected_seconds(settings: Settings, job: Job) -> float:
    return settings.migrator.expected_seconds(job.copied_bytes())


def enqueue_job(queue: Queue, settings: Settings, job: Job, after: list[str] | None = None,
                at_front: bool = False) -> None:
    """One rq job per job, same id; rq's outcome reaches the job store through the callbacks."""
    keep = Retention(settings.retention).job_seconds  # rq's record of the run goes with the job's own
    options: dict[str, Any] = {
        # A run follows its task to the end however long it takes; this only stops a hung run.
        "timeout": int(settings.migrator.slot_wait_timeout + 10 * expected_seconds(settings, job)),
        "result_ttl": keep,
        "failure_ttl": keep,
        "on_failure": Callback("pvebalance.services.migrator.jobs.on_failure"),
        "on_stopped": Callback("pvebalance.services.migrator.jobs.on_stopped"),
        "depends_on": Dependency(jobs=after, allow_failure=True) if after else None,
        "description": job.describe(),
        "at_front": at_front,
    }
    queue.enqueue_call(JOB_FUNC, args=(job.model_dump_json(),), job_id=job.job_id, **options)


def deadline_of(record: JobRecord, settings: Settings) -> float:
    """When a job that has not started migrating is given up: it waited for a slot and a worker too long."""
    m = settings.migrator
    return (record.created_at or time.time()) + m.slot_wait_timeout + m.task_timeout_base + 60


def end_overdue(store: JobStore, settings: Settings, now: float | None = None) -> list[str]:
    """End the active jobs that never started migrating within their deadline, so nothing stalls on them."""
    now = time.time() if now is None else now
    ended = []
    for job_id in sorted(store.active_jobs()):
        record = store.load(job_id)
        job = store.job(job_id)
        if job is None or record.in_flight or now < deadline_of(record, settings):
            continue
        waited = round(now - (record.created_at or now))
        if store.transition(job, JobState.FAILED, f"not started within {waited} s (no worker took it, or no "
                                                  "migration slot came free)"):
            log.warning("job overdue, ended", job_id=job_id, waited_s=waited)
            ended.append(job_id)
    return ended
