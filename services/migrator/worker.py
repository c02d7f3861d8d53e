"""An rq worker process for migration jobs, which rides out Redis outages (and Sentinel failovers)
instead of exiting.

Its connection comes from shared/redisconn.py like every service's: with `redis.sentinels` it is a
client of Sentinel's master (`Sentinel.master_for`), which rq takes as it takes any client, and its
work-horses inherit it (a job's `connection`), so a failover is a short outage to both."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from types import FrameType
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job

from pvebalance.shared import keys
from pvebalance.shared.config import Settings
from pvebalance.shared.jobrecord import STARTABLE
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.logging import get_logger
from pvebalance.shared.redisconn import REDIS_AWAY, Outage, connect_waiting, retry_redis

from .handover import HANDOVER_SIGNAL, install_in_horse
from .jobs import on_horse_killed, set_context
from .recovery import Reconciler

log = get_logger("pvebalance.migrator.worker")

# rq blocks in its dequeue for worker_ttl - 15 s and needs the socket to wait longer than that
# (redis-py 8's default 5 s cut every dequeue short). A shorter worker TTL also lets a dead worker's
# registration lapse sooner.
WORKER_TTL = 60
WORKER_SOCKET_TIMEOUT = WORKER_TTL + 15
# How often the worker checks on its work-horse (and renews the run's heartbeat in rq).
JOB_MONITORING_INTERVAL = 5
# How often an idle worker runs rq's maintenance (rq's default: 10 min): among it, failing a run stuck in
# the dequeue's intermediate list (a worker that died between its dequeue and its run), which the
# reconciler then runs again (recovery.py).
MAINTENANCE_INTERVAL = 30
STOPPED_WHILE_AWAY = "stop requested while Redis is away: the worker exits without waiting for it"


class MigrationWorker(Worker):
    """rq's worker, with the hand-over at a stop (handover.py) and a stop that holds while Redis is away."""

    stopping = False  # a stop was requested (SIGTERM, SIGINT): no job is taken after it

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """rq's warm stop, which asks Redis whether a job is running: where Redis is away, the stop
        still holds. Without a work-horse the worker leaves at once, as rq leaves an idle one; with one,
        it waits for it (the horse hands its job over: handover.py) and takes no job after it. Before,
        Redis' error went up through rq's dequeue loop, which retried Redis for as long as it was away
        and then went on working: the stop was lost (a test's worker retried for 9 minutes)."""
        self.stopping = True
        try:
            super().request_stop(signum, frame)  # type: ignore[no-untyped-call]  # rq leaves it unannotated
        except REDIS_AWAY:
            if not self.horse_pid:
                raise StopRequested() from None

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        if self.stopping:  # a stop rq could not record (Redis away) while a work-horse ran: it has ended
            raise StopRequested()
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def _set_ip_address(self, connection: Redis) -> None:
        try:
            super()._set_ip_address(connection)
        except ValueError:
            # fakeredis' TCP server (the demo's embedded Redis) answers CLIENT INFO in a shape
            # redis-py cannot parse; the address is only informational.
            self.ip_address = "unknown"

    def setup_work_horse_signals(self) -> None:
        install_in_horse()  # SIGTERM and HANDOVER_SIGNAL hand the job over (handover.py)

    def handle_warm_shutdown_request(self) -> None:
        """SIGTERM: say what the worker waits for, and have its work-horse hand the job over at its next
        safe point instead of following the migration to its end (handover.py)."""
        horse = self.horse_pid
        job_id = self.get_current_job_id() if horse else None
        if not horse or not job_id:
            log.info("stop requested: no migration job running; the worker exits")
            return
        try:
            record = JobStore(self.connection).load(job_id)
        except REDIS_AWAY:  # what the job waits for is in Redis: hand it over all the same
            log.warning("stop requested while Redis is away: handing the running job over to another worker "
                        "at its next safe point", job_id=job_id)
            with contextlib.suppress(ProcessLookupError):
                os.kill(horse, HANDOVER_SIGNAL)
            return
        job, state, upid = record.job, record.fields.get("state", "?"), record.upid
        if record.terminal:
            log.info("stop requested: its last job has ended; the worker exits", job_id=job_id, state=state)
            return
        waits_for = (f"its migration task {upid} (it goes on in Proxmox)" if upid else
                     "a migration slot or the pre-flight" if record.state in STARTABLE else state)
        log.warning("stop requested: handing the running job over to another worker at its next safe point "
                    "(seconds, not the migration's end); another worker resumes it", job_id=job_id,
                    vmid=job.vmid if job else None, move=f"{job.source} -> {job.target}" if job else None,
                    state=state, waits_for=waits_for)
        with contextlib.suppress(ProcessLookupError):  # it has just ended
            os.kill(horse, HANDOVER_SIGNAL)

    def unsubscribe(self) -> None:
        """rq's, without its wait of up to a minute at every stop: once unsubscribed, redis-py's pubsub
        thread waits up to its sleep_time (rq gives 60 s) for a new subscription, and rq's unsubscribe joins
        it without a bound (measured: 60 s between 'stopping on request' and the exit, a third of the time).
        The thread is a daemon that closes its pubsub itself once it wakes."""
        thread = self.pubsub_thread
        if not thread:
            return
        log.info("unsubscribing from the worker's channel", channel=self.pubsub_channel_name)
        with contextlib.suppress(RedisError):
            self.pubsub.unsubscribe()
        try:
            thread.stop(timeout=1)  # redis-py >= 6: a bounded join
        except TypeError:
            thread.stop()  # older redis-py: stop() only clears the flag

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        # rq lets a Redis error here kill the worker while its work-horse migrates on; a heartbeat
        # missed during an outage is only a heartbeat.
        try:
            super().maintain_heartbeats(job, execution)
        except REDIS_AWAY as exc:
            log.warning("Redis away: heartbeat of the running job missed", job_id=job.id, error=str(exc))


def worker_name() -> str:
    """Unique across containers too: host networking gives every container the same host name and pid."""
    return f"migrator-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def run_worker(settings: Settings, burst: bool = False, name: str | None = None,
               stop: threading.Event | None = None) -> None:
    stop = stop or threading.Event()
    redis = connect_waiting(settings.redis, log, stop, socket_timeout=WORKER_SOCKET_TIMEOUT)
    if redis is None:
        return
    set_context(settings)
    reconciler = Reconciler(redis, settings)
    threading.Thread(target=reconciler.run, args=(stop,), name="job-reconciler", daemon=True).start()
    outage = Outage(log, "Redis", "the migrator worker")
    try:
        while not stop.is_set():
            worker = MigrationWorker(
                [Queue(keys.MIGRATION_QUEUE, connection=redis)], connection=redis, name=name or worker_name(),
                worker_ttl=WORKER_TTL, job_monitoring_interval=JOB_MONITORING_INTERVAL,
                maintenance_interval=MAINTENANCE_INTERVAL,
                work_horse_killed_handler=on_horse_killed,
            )
            try:
                worker.work(burst=burst, logging_level=settings.logging.level, with_scheduler=False)
                return
            except REDIS_AWAY as exc:
                if worker.stopping:  # rq's own goodbye (its registration) needs Redis: leave without it
                    log.info(STOPPED_WHILE_AWAY)
                    return
                try:
                    outage.failed(exc)
                    retry_redis(redis.ping, outage, stop=stop)
                except StopRequested:  # a stop while waiting (rq's signal handlers stay installed)
                    log.info(STOPPED_WHILE_AWAY)
                    return
                name = None  # the old registration may linger until it expires; register afresh
    finally:
        stop.set()
