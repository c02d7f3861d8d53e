"""Jobs whose worker died: found by their missing lease, and handed back to the queue.

A runner holds a short lease on its job (renewed while it works). A job still marked running or
waiting whose lease has expired lost its worker; it is put back on the queue, and the worker that
picks it up resumes it from its stored UPID, never POSTing a second migration.
"""

from __future__ import annotations

import threading

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from pvebalance.shared import keys
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.logging import get_logger
from pvebalance.shared.models import JobState

log = get_logger("pvebalance.migrator.recovery")


class Lease:
    """SET NX with expiry, renewed in the background; one runner per job at any time."""

    def __init__(self, redis: Redis, job_id: str, holder: str, ttl: float) -> None:
        self.redis, self.key, self.holder, self.ttl = redis, keys.lease(job_id), holder, ttl
        self._stop = threading.Event()

    def acquire(self) -> bool:
        if not self.redis.set(self.key, self.holder, nx=True, px=int(self.ttl * 1000)):
            return False
        threading.Thread(target=self._renew, name="job-lease", daemon=True).start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            self.redis.set(self.key, self.holder, xx=True, px=int(self.ttl * 1000))

    def release(self) -> None:
        self._stop.set()
        self.redis.eval(_RELEASE, 1, self.key, self.holder)


_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def recover_orphans(redis: Redis) -> list[str]:
    store = JobStore(redis)
    queue = Queue(keys.MIGRATION_QUEUE, connection=redis)
    recovered = []
    for job_id in sorted(store.active_jobs()):
        state = store.state(job_id)
        if state not in (JobState.RUNNING, JobState.WAITING) or redis.exists(keys.lease(job_id)):
            continue
        try:
            job = Job.fetch(job_id, connection=redis)
        except NoSuchJobError:
            continue
        queue.started_job_registry.remove_executions(job)
        queue.enqueue_job(job, at_front=True)
        recovered.append(job_id)
        log.warning("job lost its worker, queued again", job_id=job_id, state=state.value,
                    upid=store.load(job_id).get("upid"))
    return recovered


def watch_orphans(redis: Redis, interval: float, stop: threading.Event) -> None:
    while True:
        try:
            recover_orphans(redis)
        except Exception as exc:  # Redis away: try again next round
            log.error("orphan check failed", error=f"{type(exc).__name__}: {exc}")
        if stop.wait(interval):
            return
