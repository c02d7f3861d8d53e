"""Carry out one job (any kind: pvebalance/actions/) against the Proxmox API, exactly once, and
say how it ended.

Before the POST: take the slots, check the action against the live cluster (its kind's check), then
pin the slots and mark the job running in one step (a job cancelled meanwhile does not start). From the
POST on, the job is in flight: its slots stay pinned until the job ends, and its end comes from the
Proxmox task and from what the kind verifies (where the guest or the disk is), never from an error that
interrupted the follower. An answer that may have come from a POST that reached Proxmox (no answer, a
timeout, a garbled body, a 5xx) is never followed by a blind second POST: the node's task list is
searched for the job's task first. A job resumed by another worker follows the stored UPID, or searches
for the task of a POST it may have sent.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeGuard, TypeVar

import structlog

from pvebalance.actions import KINDS, Context, Deferred, Executor, Failed, Skip
from pvebalance.shared import keys
from pvebalance.shared.config import Settings
from pvebalance.shared.jobqueue import expected_seconds
from pvebalance.shared.jobrecord import JobRecord
from pvebalance.shared.jobs import Job, JobState
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.logging import get_logger
from pvebalance.shared.proxmox import MALFORMED, ProxmoxClient, ProxmoxError, upid_node
from pvebalance.shared.redisconn import Outage, retry_redis

from .lease import Lease
from .slots import SlotCancelled, SlotRequest, Slots, SlotTimeout, SlotYield

log = get_logger("pvebalance.migrator")
T = TypeVar("T")

# Without a list of the guest's tasks from before the POST (a worker died right after pinning its
# slots), a task counts as the POST's if it started at most this long before the POST was sent.
CLOCK_SLACK = 2.0
REDIS_PATIENCE = 600.0  # how long a runner holding a live migration waits for Redis to record it


class JobRunner:
    def __init__(self, client: ProxmoxClient, store: JobStore, slots: Slots, settings: Settings,
                 sleep: Callable[[float], None] = time.sleep, safe_point: Callable[[], None] = lambda: None) -> None:
        self.client = client
        self.store = store
        self.slots = slots
        self.settings = settings
        # Every wait is a safe point: `sleep` (and `safe_point`, called each round of a slot wait) may
        # raise to stop the run there, as a worker that is being stopped does (handover.py)
        self.sleep = sleep
        self.safe_point = safe_point
        ctx = Context(client, settings, store, self._api, self._redis, sleep)
        self.kinds: dict[str, Executor[Any]] = {kind.name: kind.executor(ctx) for kind in KINDS}
        self._api_outage = Outage(log, "the Proxmox API", "the job")
        self._redis_outage = Outage(log, "Redis", "the job")

    # --- calling the API and Redis through their outages ------------------------------------------

    def _api(self, fn: Callable[[], T], patience: float | None = None) -> T:
        """Call the API until it answers: transient failures and refused credentials are waited out
        (a ticket is renewed by the client; a revoked token needs an operator, and the log says so).
        `patience` bounds the wait (before the POST); None waits for as long as it takes (in flight)."""
        poll = self.settings.migrator.poll_interval
        delay, started = poll, time.monotonic()
        while True:
            try:
                result = fn()
            except ProxmoxError as exc:
                if not (exc.transient or exc.auth):
                    raise
                if exc.auth and self._api_outage.since is None:
                    log.error("Proxmox refuses pvebalance's credentials: migrations wait until an operator "
                              "fixes proxmox_api (token revoked or password changed?)", error=exc.message)
                self._api_outage.failed(exc)
                if patience is not None and time.monotonic() - started > patience:
                    raise
                self.sleep(delay)
                delay = min(delay * 2, 30 * poll)
                continue
            self._api_outage.ok()
            return result

    def _redis(self, fn: Callable[[], T]) -> T:
        return retry_redis(fn, self._redis_outage, give_up_after=REDIS_PATIENCE, sleep=self.sleep)

    # --- the job ----------------------------------------------------------------------------------

    def kind(self, job: Job) -> Executor[Any]:
        return self.kinds[job.action]

    def run(self, job: Job) -> JobState:
        with structlog.contextvars.bound_contextvars(job_id=job.job_id, plan_id=job.plan_id, vmid=job.vmid,
                                                    action=job.action):
            holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            lease = Lease(self.store.redis, job.job_id, holder, self.settings.migrator.slot_ttl)
            if not lease.acquire():
                log.info("another worker is running this job")
                return self.store.state(job.job_id) or JobState.QUEUED
            try:
                return self._run(job)
            finally:
                lease.release()

    def _run(self, job: Job) -> JobState:
        record = self.store.load(job.job_id)
        if record.state is not None and record.terminal:
            log.info("job already ended", state=record.state.value)
            return record.state
        started = time.monotonic()
        req = SlotRequest.of(job)
        try:
            if record.in_flight:
                if not self.slots.adopt(req):
                    return self.store.state(job.job_id) or JobState.FAILED
                upid = record.upid or self._resume_post(job, record.posted_at or 0.0, record.known_tasks)
                log.info("resuming the task of an earlier worker", upid=upid)
            else:
                upid = self._prepare_and_post(job, req, record)
            note = self._follow(job, upid) if upid is not None else None
        except SlotCancelled:
            log.info("cancelled before it started")
            return self.store.state(job.job_id) or JobState.CANCELLED
        except Skip as exc:
            return self._end(job, JobState.SKIPPED, str(exc), started)
        except (Failed, SlotTimeout) as exc:
            return self._end(job, JobState.FAILED, str(exc), started)
        except ProxmoxError as exc:  # a refusal before anything started
            return self._end(job, JobState.FAILED, exc.message, started)
        message = self.kind(job).succeeded(job)
        return self._end(job, JobState.SUCCEEDED, f"{message} ({note})" if note else message, started)

    def _end(self, job: Job, state: JobState, message: str, started: float) -> JobState:
        duration = round(time.monotonic() - started, 3)
        upid = self._redis(lambda: self.store.load(job.job_id)).upid
        if self._redis(lambda: self.store.transition(job, state, message, upid=upid, duration_s=duration)):
            log.info("job ended", state=state.value, reason=message, duration_s=duration)
            return state
        ended = self.store.state(job.job_id) or state
        log.info("job had already ended", state=ended.value)
        return ended

    # --- before: slots, pre-flight, the POST ------------------------------------------------------

    def _prepare_and_post(self, job: Job, req: SlotRequest, record: JobRecord) -> str | None:
        kind = self.kind(job)

        def waiting() -> None:
            self.store.transition(job, JobState.WAITING, "waiting for a slot", only_from=(JobState.QUEUED,))
            kind.look_ahead(job)  # raises Gone: a move that can no longer happen does not wait

        def cancelled() -> bool:
            self.safe_point()
            state = self.store.state(job.job_id)
            return state is not None and state.terminal

        patience = self.settings.migrator.task_timeout_base
        waiting_since = record.at(JobState.WAITING)
        # a run taken up again after giving way keeps the reason it showed (no second event for it)
        deferred_for = record.message.removeprefix("deferred: ") if record.state is JobState.WAITING else ""
        while True:
            self.slots.wait(req, on_wait=waiting, cancelled=cancelled, waiting_since=waiting_since)
            try:
                with self.slots.held(req) as commit:
                    # It lists the guest's tasks of this kind before ours too: a task found later that is not
                    # among them is this POST's (an earlier job's task of the same guest may be seconds old).
                    cleared = kind.check(job, patience)
                    committed = commit(job)  # the start: slots pinned, job running, its event
            except Deferred as exc:  # its slots went back with the `held` block: others move meanwhile
                waiting_since = waiting_since or time.time()
                deferred_for = self._defer(job, exc, waiting_since, deferred_for, cancelled)
                continue
            if committed == -1:
                raise SlotCancelled()
            if committed == 1:
                break
            log.warning("slots expired before the POST (Redis away?): waiting for them again")
        known = cleared.known_tasks
        self._redis(lambda: self.store.set_fields(job.job_id, known_tasks=",".join(sorted(known)), **cleared.keep))
        posted_at = self.store.load(job.job_id).posted_at or time.time()
        return self._post(job, cleared.params, posted_at, known)

    def _defer(self, job: Job, deferred: Deferred, waiting_since: float, said: str,
               cancelled: Callable[[], bool]) -> str:
        """Wait as a job waiting for a slot does (state waiting, within `slot_wait_timeout` of its first
        wait), then let the caller look again; Skip once that time is up. Returns the reason now shown."""
        limit = waiting_since + self.settings.migrator.slot_wait_timeout
        now = time.time()
        if now >= limit:
            raise Skip(f"{deferred} (still so after waiting {self.settings.migrator.slot_wait_timeout:.0f} s: "
                       f"the next plan decides again)")
        reason = str(deferred)
        if reason != said:  # one event per reason, not one per look
            self._redis(lambda: self.store.transition(job, JobState.WAITING, f"deferred: {reason}",
                                                      only_from=(JobState.QUEUED, JobState.WAITING)))
            log.info("job deferred", reason=reason, until=round(deferred.until))
        # In steps, so that a cancelled job or a backup job moved meanwhile is seen within a step.
        poll = self.settings.migrator.poll_interval
        self.sleep(max(min(min(deferred.until, limit) - now, 30 * poll), poll))
        if cancelled():
            raise SlotCancelled()
        if self._redis(lambda: self.store.redis.llen(f"rq:queue:{keys.MIGRATION_QUEUE}")):
            # Other jobs wait for a worker (moves of guests no backup holds, perhaps): give this one up,
            # to the back of the queue, rather than sleep on it through the backup.
            raise SlotYield()
        return reason

    def _post(self, job: Job, params: dict[str, Any], since: float, known: set[str] | None) -> str | None:
        path = self.kind(job).path(job)
        attempts = 5
        for attempt in range(1, attempts + 1):
            try:
                answer = self.client.post(path, **params)
                upid = str(answer)
                upid_node(upid)
            except ProxmoxError as exc:
                if exc.auth:
                    self._api(lambda: self.client.get("/version"))  # nothing was started: wait for access
                    continue
                if not exc.transient:
                    raise Failed(exc.message) from None  # Proxmox refused: nothing started
                # Before any second POST, look for the task of the first. No answer, a timeout, a garbled
                # answer or a gateway error may hide a POST that reached Proxmox, perhaps to be carried out
                # late: look for a while. A 500 with PVE's message is PVE's own refusal: one look is enough.
                ambiguous = exc.ambiguous
                log.warning("request failed; looking for a task it may have started", path=path, error=exc.message,
                            attempt=attempt, may_have_reached_proxmox=ambiguous)
                window = 2 * self.settings.proxmox_api.timeout + 5 if ambiguous else 0.0
                found = self._find_task(job, since, window, known)
                if found:
                    upid = found
                elif attempt == attempts:
                    raise Failed(f"the request failed {attempts} times and no task of it exists: "
                                 f"{exc.message}") from None
                else:
                    self.sleep(self.settings.migrator.poll_interval * attempt)
                    continue
            self._record_upid(job, upid)
            return upid
        raise Failed("Proxmox kept refusing the credentials")

    def _record_upid(self, job: Job, upid: str) -> None:
        if not self._redis(lambda: self.store.record_upid(job, upid)):  # the lease makes this unreachable
            log.error("the job is no longer running: its task's UPID was not stored", upid=upid)
        log.info("task started", upid=upid, source=job.source, target=job.target)

    def _resume_post(self, job: Job, posted_at: float, known: set[str] | None) -> str | None:
        """An earlier worker pinned the slots and may have POSTed, but no UPID was stored."""
        found = self._find_task(job, posted_at, self.settings.proxmox_api.timeout, known)
        if found:
            self._record_upid(job, found)
            return found
        kind = self.kind(job)
        if kind.done(job):
            return None  # it happened; its task is no longer listed
        log.info("no task of an earlier request: the request never reached Proxmox, sending it")
        # Its slots are pinned already, and the backups were looked at right before they were: no waiting.
        cleared = kind.check(job, self.settings.migrator.task_timeout_base, resumed=True)
        self._redis(lambda: self.store.set_fields(job.job_id, known_tasks=",".join(sorted(cleared.known_tasks)),
                                                  **cleared.keep))
        return self._post(job, cleared.params, time.time(), cleared.known_tasks)

    def _find_task(self, job: Job, since: float, window: float, known: set[str] | None) -> str | None:
        """The task of this job's POST, looked for over `window` s (a slow POST may be carried out
        after its client gave up): the first of the guest's tasks that was not there before the POST, or,
        without that list, the first started since the POST."""
        deadline = time.monotonic() + window
        while True:
            tasks = self._api(lambda: self.kind(job).tasks(job))
            if known is not None:
                new = [t for t in tasks if str(t["upid"]) not in known]
            else:
                new = [t for t in tasks if float(t.get("starttime", 0)) >= since - CLOCK_SLACK]
            if new:
                return str(new[0]["upid"])
            if time.monotonic() > deadline:
                return None
            self.sleep(self.settings.migrator.poll_interval)

    # --- after: follow the task, then check where the guest is ------------------------------------

    def _expected(self, job: Job) -> float:
        return expected_seconds(self.settings, job)

    def _wait_task(self, job: Job, upid: str) -> dict[str, Any]:
        """Poll the task until it stops, through any outage; warn once if it runs longer than expected."""
        node = upid_node(upid)
        poll = self.settings.migrator.poll_interval
        delay, started, warned = poll / 10, time.monotonic(), False
        while True:
            status = self._api(lambda: self._task_status(node, upid))
            if status["status"] == "stopped":
                return status
            if not warned and time.monotonic() - started > self._expected(job):
                warned = True
                log.warning("task runs longer than expected; still following it (slots stay held)",
                            upid=upid, expected_s=round(self._expected(job)))
            self.sleep(delay)
            delay = min(delay * 1.5, poll)

    def _task_status(self, node: str, upid: str) -> dict[str, Any]:
        """The task's status; any other answer (`{"data": null}`, a list, a string, an object without a
        `status`, a stop without an exit status, a 5xx whatever its words) is a garbled answer, waited out by
        `_api`: the task runs on whatever a read says, so only PVE's own end of it may end the job and free
        its slots. A 4xx (PVE's 'no such task', a 400, after a node restart) ends the following."""
        try:
            answer = self.client.get(f"/nodes/{node}/tasks/{upid}/status")
        except ProxmoxError as exc:
            if exc.status is not None and exc.status >= 500 and not exc.transient:
                # words PVE refuses a request with ("can't migrate", "does not exist") say nothing of a task
                raise ProxmoxError(exc.message, status=exc.status, host=exc.host, kind=MALFORMED) from None
            raise
        if not is_task_status(answer):
            raise ProxmoxError(f"task status of {upid} is not a task status: {str(answer)[:80]!r}", kind=MALFORMED)
        return answer

    def _follow(self, job: Job, upid: str) -> str | None:
        """Follow the task to its end, then let the kind verify what happened (a note, or Failed)."""
        try:
            status = self._wait_task(job, upid)
        except ProxmoxError as exc:
            # The task cannot be read (say, 'no such task' after a node restart): the cluster tells.
            log.warning("task unreadable; judging by what the cluster shows", upid=upid, error=exc.message)
            status = {"exitstatus": f"unknown ({exc.message})"}
        exitstatus = str(status.get("exitstatus", ""))
        ok = exitstatus == "OK" or exitstatus.startswith("WARNINGS")
        record = self._redis(lambda: self.store.load(job.job_id))
        deadline = time.monotonic() + self.settings.migrator.task_timeout_base
        while True:
            try:
                return self.kind(job).verify(job, upid, ok, exitstatus, record)
            except ProxmoxError as exc:
                # The task has ended: a 5xx on the reads that judge it, whatever its words ("can't migrate VM"
                # is no refusal of a read), says nothing of what it did. Read again for a while, rather than
                # end the job failed while its action happened.
                if exc.status is None or exc.status < 500 or time.monotonic() > deadline:
                    raise
                log.warning("the cluster could not be read to judge the ended task; reading again",
                            upid=upid, error=exc.message)
                self.sleep(self.settings.migrator.poll_interval)


def is_task_status(answer: Any) -> TypeGuard[dict[str, Any]]:
    """PVE's task status (Tasks.pm read_task_status): an object whose `status` is `running`, or `stopped`
    with the task's `exitstatus` ("OK", "WARNINGS: n", or the error)."""
    if not isinstance(answer, dict):
        return False
    status = answer.get("status")
    if status == "running":
        return True
    exitstatus = answer.get("exitstatus")
    return status == "stopped" and isinstance(exitstatus, str) and exitstatus != ""
