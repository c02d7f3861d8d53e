"""The rq job function, the callbacks through which rq's outcome settles the job store, and the
per-process context a job runs with."""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from redis import Redis
from rq import Retry, get_current_job
from rq.job import Job

from pvebalance.shared.config import Settings, load_settings
from pvebalance.shared.jobs import JobState, parse_job
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.logging import get_logger
from pvebalance.shared.proxmox import ProxmoxClient
from pvebalance.shared.retention import Retention

from . import handover
from .recovery import settle
from .runner import JobRunner
from .slots import Slots, SlotYield

CONFIG_ENV = "PVEBALANCE_CONFIG"
log = get_logger("pvebalance.migrator")


class JobNotDone(Exception):
    """Raised so rq records the job as failed when its action failed."""


@dataclass
class WorkerContext:
    settings: Settings


_context: WorkerContext | None = None


def set_context(settings: Settings) -> None:
    global _context
    _context = WorkerContext(settings)


# rq's own 'run me again later': the job goes to the back of the queue, its status stays consistent.
GIVE_WAY = Retry(max=1_000_000)


def run_job(payload: str) -> str | Retry:
    """rq entry point: carry out one job, of any kind (given as its JSON)."""
    global _context
    if _context is None:
        set_context(load_settings(os.environ.get(CONFIG_ENV)))
    assert _context is not None
    job = parse_job(payload)
    rq_job = get_current_job()
    assert rq_job is not None, "run_job runs inside an rq worker"
    redis = rq_job.connection
    settings = _context.settings
    store = JobStore(redis, Retention(settings.retention))
    slots = Slots(redis, settings.migrator, store, per_storage=settings.storage_balancing.max_parallel_per_storage)
    runner = JobRunner(ProxmoxClient(settings.proxmox_api), store, slots, settings, sleep=handover.sleep,
                       safe_point=handover.check)
    try:
        state = runner.run(job)
    except SlotYield:
        return GIVE_WAY  # a job in flight waits for a worker to resume it: let it have this one
    except handover.HandOver:
        # The run ends here, as one whose worker died would (lease given back, pinned slots kept); the
        # reconciler of another worker queues the job again to be resumed (handover.py). A return, not an
        # exception: a hand-over is no failure, and its log needs no traceback.
        store = JobStore(redis)
        store.set_fields(job.job_id, handed_over=1, interrupted=handover.REASON)
        log.warning("job handed over at a safe point; another worker resumes it", job_id=job.job_id,
                    state=store.load(job.job_id).fields.get("state"))
        return "handed over"
    if state is JobState.FAILED:
        raise JobNotDone(JobStore(redis).load(job.job_id).message or "failed")
    return state.value


# Jobs queued by a version before job kinds name this function.
run_migration = run_job


# rq calls these (by name, so they survive serialisation) whatever way a run ends other than success.

def on_failure(job: Job, connection: Redis, exc_type: type[BaseException] | None, exc: BaseException | None,
               tb: TracebackType | None) -> None:
    name = exc_type.__name__ if exc_type else "error"
    settle(connection, job.id, f"{name}: {exc}" if exc and str(exc) else name)


def on_stopped(job: Job, connection: Redis) -> None:
    settle(connection, job.id, "stopped through rq")


def on_horse_killed(job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
    settle(job.connection, job.id, f"the work-horse process died (wait status {ret_val})")
