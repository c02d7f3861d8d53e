"""Carry out one MigrationJob against the Proxmox API, exactly once, and say how it ended.

Order of work: take the slots, check the guest against the live cluster, POST the migration,
store its UPID before anything else, follow the task to its end, then check that the guest is on
its target. A job that finds a UPID already stored (its first worker died) follows that task and
never POSTs a second migration.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from pvebalance.shared.config import Settings
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.logging import get_logger
from pvebalance.shared.models import GuestType, JobState, MigrationJob
from pvebalance.shared.proxmox import ProxmoxClient, ProxmoxError, retry_transient, upid_node

from .recovery import Lease
from .slots import SlotCancelled, SlotRequest, Slots, SlotTimeout

log = get_logger("pvebalance.migrator")
T = TypeVar("T")


class Skip(Exception):
    """The migration is no longer wanted or allowed; the job ends as skipped with this reason."""


class Failed(Exception):
    """The migration did not happen or did not land; the job ends as failed with this reason."""


class MigrationRunner:
    def __init__(self, client: ProxmoxClient, store: JobStore, slots: Slots, settings: Settings,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.store = store
        self.slots = slots
        self.settings = settings
        self.sleep = sleep

    def _retry(self, fn: Callable[[], T], attempts: int = 5) -> T:
        poll = self.settings.migrator.poll_interval
        return retry_transient(fn, attempts, initial=poll, max_wait=30 * poll, sleep=self.sleep)

    def run(self, job: MigrationJob) -> JobState:
        with structlog.contextvars.bound_contextvars(job_id=job.job_id, plan_id=job.plan_id, vmid=job.vmid):
            lease = Lease(self.store.redis, job.job_id, f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
                          self.settings.migrator.slot_ttl)
            if not lease.acquire():
                log.info("another worker is running this job")
                return self.store.state(job.job_id) or JobState.QUEUED
            try:
                return self._run(job)
            finally:
                lease.release()

    def _cancelled(self, job: MigrationJob) -> bool:
        return self.store.state(job.job_id) is JobState.CANCELLED

    def _run(self, job: MigrationJob) -> JobState:
        record = self.store.load(job.job_id)
        state = JobState(record["state"]) if record.get("state") else None
        if state is not None and state.terminal:
            log.info("job already ended", state=state.value)
            return state
        started = time.monotonic()
        req = SlotRequest(job.job_id, job.source, job.target)
        try:
            def waiting() -> None:
                self.store.transition(job, JobState.WAITING, "waiting for a migration slot")

            with self.slots.held(req, on_wait=waiting, cancelled=lambda: self._cancelled(job)):
                upid = record.get("upid") or self._start(job)
                if record.get("upid"):
                    log.info("resuming the migration task of an earlier worker", upid=upid)
                self._follow(job, upid)
        except SlotCancelled:
            log.info("cancelled while waiting for a slot")
            return JobState.CANCELLED
        except Skip as exc:
            return self._end(job, JobState.SKIPPED, str(exc), started)
        except (Failed, SlotTimeout) as exc:
            return self._end(job, JobState.FAILED, str(exc), started)
        except ProxmoxError as exc:
            return self._end(job, JobState.FAILED, exc.message, started)
        self.store.start_cooldown(job.vmid, self.settings.balancing.cooldown_minutes * 60)
        return self._end(job, JobState.SUCCEEDED, f"{job.name} is on {job.target}", started)

    def _end(self, job: MigrationJob, state: JobState, message: str, started: float) -> JobState:
        duration = round(time.monotonic() - started, 3)
        upid = self.store.load(job.job_id).get("upid")
        self.store.transition(job, state, message, upid=upid, duration_s=duration)
        log.info("migration ended", state=state.value, reason=message, duration_s=duration)
        return state

    # --- before: pre-flight and the POST ---------------------------------------------------------

    def _guest_entry(self, vmid: int) -> dict[str, Any] | None:
        for entry in self._retry(lambda: self.client.get("/cluster/resources", type="vm")):
            if int(entry.get("vmid", -1)) == vmid:
                return dict(entry)
        return None

    def _preflight(self, job: MigrationJob) -> dict[str, Any]:
        entry = self._guest_entry(job.vmid)
        if entry is None:
            raise Skip(f"guest {job.vmid} no longer exists")
        if entry["node"] == job.target:
            raise Skip(f"guest {job.vmid} is already on {job.target}")
        if entry["node"] != job.source:
            raise Skip(f"guest {job.vmid} was moved to {entry['node']} since the plan was made")
        nodes = {n["node"]: n for n in self._retry(lambda: self.client.get("/cluster/resources", type="node"))}
        target = nodes.get(job.target)
        if target is None:
            raise Skip(f"target node {job.target} is not in the cluster any more")
        if target.get("status") != "online" or target.get("hastate") == "maintenance":
            raise Skip(f"target node {job.target} is offline or in maintenance")
        limit = target["maxmem"] * self.settings.balancing.max_node_usage / 100
        if entry.get("status") == "running" and target["mem"] + entry.get("mem", 0) > limit:
            raise Skip(f"target node {job.target} no longer has room for {job.name}")
        return entry

    def _wait_unlocked(self, job: MigrationJob, entry: dict[str, Any]) -> None:
        deadline = time.monotonic() + self.settings.migrator.task_timeout_base
        while entry.get("lock"):
            if time.monotonic() > deadline:
                raise Failed(f"guest {job.vmid} stayed locked ({entry['lock']})")
            log.info("guest is locked by another task, waiting", lock=entry["lock"])
            self.sleep(self.settings.migrator.poll_interval)
            entry = self._preflight(job)

    def _start(self, job: MigrationJob) -> str:
        entry = self._preflight(job)
        self._wait_unlocked(job, entry)
        kind = job.guest_type.value
        path = f"/nodes/{job.source}/{kind}/{job.vmid}/migrate"
        params: dict[str, Any] = {"target": job.target}
        running = entry.get("status") == "running"
        if job.guest_type is GuestType.QEMU:
            check = self._retry(lambda: self.client.get(path, target=job.target))
            if job.target not in check.get("allowed_nodes", [job.target]):
                reasons = check.get("not_allowed_nodes", {}).get(job.target)
                raise Skip(f"Proxmox does not allow {job.target} for this guest: {reasons}")
            if check.get("local_resources") and running:
                raise Skip(f"guest uses local devices: {', '.join(check['local_resources'])}")
            if check.get("local_disks"):
                if not job.with_local_disks:
                    raise Skip("guest has local disks and with_local_disks is off")
                params["with-local-disks"] = True
            params["online"] = running
        else:
            params["restart"] = running
        if self._cancelled(job):
            raise SlotCancelled()
        upid = str(self._retry(lambda: self.client.post(path, **params)))
        upid_node(upid)  # refuse anything that is not a UPID before storing it
        self.store.set_upid(job.job_id, upid)
        self.store.transition(job, JobState.RUNNING, f"task {upid}", upid=upid)
        log.info("migration started", upid=upid, source=job.source, target=job.target)
        return upid

    # --- after: follow the task, then check where the guest is ------------------------------------

    def _timeout(self, job: MigrationJob) -> float:
        m = self.settings.migrator
        return m.task_timeout_base + m.task_timeout_per_gib * (job.mem_bytes + job.local_disk_bytes) / 2**30

    def _wait_task(self, upid: str, deadline: float) -> dict[str, Any]:
        node = upid_node(upid)
        poll = self.settings.migrator.poll_interval
        delay = poll / 10
        while True:
            status = self._retry(lambda: self.client.get(f"/nodes/{node}/tasks/{upid}/status"), attempts=8)
            if status.get("status") == "stopped":
                return dict(status)
            if time.monotonic() > deadline:
                raise Failed(f"task {upid} still running after the timeout")
            self.sleep(delay)
            delay = min(delay * 1.5, poll)

    def _follow(self, job: MigrationJob, upid: str) -> None:
        deadline = time.monotonic() + self._timeout(job)
        status = self._wait_task(upid, deadline)
        exitstatus = str(status.get("exitstatus", ""))
        if exitstatus != "OK" and not exitstatus.startswith("WARNINGS"):
            raise Failed(exitstatus or "task ended without an exit status")
        if ":hamigrate:" in upid:
            # The hamigrate task only queued the request; the HA manager migrates afterwards.
            self._wait_ha_landing(job, deadline)
        entry = self._guest_entry(job.vmid)
        if entry is None or entry["node"] != job.target:
            where = entry["node"] if entry else "nowhere"
            raise Failed(f"task {upid} ended {exitstatus} but guest {job.vmid} is on {where}")

    def _wait_ha_landing(self, job: MigrationJob, deadline: float) -> None:
        while True:
            entry = self._guest_entry(job.vmid)
            if entry and entry["node"] == job.target and not entry.get("lock") and entry.get("hastate") != "migrate":
                return
            if time.monotonic() > deadline:
                raise Failed(f"HA migration of {job.vmid} did not land on {job.target} in time")
            self.sleep(self.settings.migrator.poll_interval)
