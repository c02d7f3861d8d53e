"""`migrate`: a guest to another node (`POST /nodes/{source}/{type}/{vmid}/migrate`).

The check is the pre-flight (services/migrator/preflight.py: the guest, the target's room and state,
Proxmox's own pre-check, the rule families on fresh reads, the backups); after the task, the guest
must be on its target (an HA-managed guest's `hamigrate` task only queues the move: it is waited for).
"""

from __future__ import annotations

import time
from typing import Any

from pvebalance.shared.jobqueue import expected_seconds
from pvebalance.shared.jobrecord import JobRecord
from pvebalance.shared.jobs import MigrationJob
from pvebalance.shared.logging import get_logger

from ..preflight import Failed, Preflight
from .base import ActionKind, Cleared, Context

log = get_logger("pvebalance.migrator")


class Migrate(ActionKind[MigrationJob]):
    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.preflight = Preflight(ctx.client, ctx.settings, ctx.api, ctx.sleep,
                                   in_flight=lambda but: ctx.redis(lambda: ctx.store.in_flight_migrations(but)))

    def look_ahead(self, job: MigrationJob) -> None:
        self.preflight.look_ahead(job)

    def check(self, job: MigrationJob, patience: float, resumed: bool = False) -> Cleared:
        # a resumed run's slots are pinned, and the backups were looked at right before they were
        cleared = self.preflight.clear(job, patience, backups=False) if resumed else self.preflight.clear(job, patience)
        return Cleared(cleared.params, cleared.known_tasks)

    def path(self, job: MigrationJob) -> str:
        return f"/nodes/{job.source}/{job.guest_type.value}/{job.vmid}/migrate"

    def tasks(self, job: MigrationJob) -> list[dict[str, Any]]:
        return self.preflight.migration_tasks(job)

    def _where(self, job: MigrationJob) -> str | None:
        entry = self.ctx.api(lambda: self.preflight.guest_entry(job.vmid, job.guest_type,
                                                                nodes=[job.target, job.source]))
        return entry["node"] if entry else None

    def done(self, job: MigrationJob) -> bool:
        return self._where(job) == job.target

    def verify(self, job: MigrationJob, upid: str, ok: bool, exitstatus: str, record: JobRecord) -> str | None:
        if ok and ":hamigrate:" in upid:
            # The hamigrate task only queued the request; the HA manager migrates afterwards.
            self._wait_ha_landing(job)
        where = self._where(job)
        if where == job.target:
            if not ok:
                log.warning("task did not end OK but the guest is on its target", exitstatus=exitstatus)
            return None
        if not ok:
            raise Failed(exitstatus or "task ended without an exit status")
        if where is not None and where != job.source:
            # The task moved it (it ended OK); someone or HA moved it on before this run looked (a run
            # resumed after an outage looks late). The migration happened once: the job succeeded.
            log.warning("task ended OK; the guest has moved on since", upid=upid, now_on=where)
            return None
        raise Failed(f"task {upid} ended {exitstatus} but guest {job.vmid} is on {where or 'no node'}")

    def _wait_ha_landing(self, job: MigrationJob) -> None:
        deadline = time.monotonic() + expected_seconds(self.settings, job)
        while True:
            entry = self.ctx.api(lambda: self.preflight.guest_entry(job.vmid, job.guest_type,
                                                                    nodes=[job.target, job.source]))
            if entry and entry["node"] == job.target and not entry.get("lock") and entry.get("hastate") != "migrate":
                return
            if time.monotonic() > deadline:
                raise Failed(f"HA migration of {job.vmid} did not land on {job.target} in time")
            self.ctx.sleep(self.settings.migrator.poll_interval)

    def succeeded(self, job: MigrationJob) -> str:
        self.ctx.redis(lambda: self.ctx.store.start_cooldown(job.vmid, self.settings.balancing.cooldown_minutes * 60))
        return f"{job.name} is on {job.target}"
