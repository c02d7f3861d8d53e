"""`migrate`: a guest to another node (`POST /nodes/{source}/{type}/{vmid}/migrate`).

The plan's action (`Migration`) says which guest goes where and why; its job (`MigrationJob`) holds a slot
in the cluster, on the source and on the target. The check is the pre-flight
(services/migrator/preflight.py: the guest, the target's room and state, Proxmox's own pre-check, the
rule families on fresh reads, the backups); after the task, the guest must be on its target (an
HA-managed guest's `hamigrate` task only queues the move: it is waited for).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from pvebalance.shared import keys
from pvebalance.shared.logging import get_logger
from pvebalance.shared.message import GuestType, MigrationReason, guest_id

from .base import ActionBase, Cleared, Context, Executor, Failed, Job, Kind

if TYPE_CHECKING:
    from pvebalance.shared.config import Settings
    from pvebalance.shared.jobrecord import JobRecord


class Migration(ActionBase):
    """A plan's action of kind `migrate`: the guest to another node."""

    kind: Literal["migrate"] = "migrate"
    vmid: int
    name: str
    type: GuestType
    source: str
    target: str
    reason: MigrationReason
    detail: str = Field("", description="the rule or figure behind the move, in words")
    online: bool = Field(description="live migration (running VM); containers restart instead")
    mem_bytes: int = 0
    local_disk_bytes: int = 0
    local_disks: dict[str, int] = Field(default_factory=dict, description="storage -> bytes of local disks copied")
    spread_before_pp: float = 0.0
    spread_after_pp: float = 0.0
    batch: int = Field(0, description="moves in the same batch may run in parallel")
    after: list[int] = Field(default_factory=list, description="the plan's actions (their indexes) it waits for: "
                             "the earlier migrations out of its target, its guest's earlier action")

    noun: ClassVar[str] = "migration"

    def guest(self) -> str:
        return guest_id(self.type, self.vmid)

    def describe(self) -> str:
        return f"guest {self.vmid} ({self.name}) {self.source} -> {self.target}"

    @property
    def gib_moved(self) -> float:
        return ((self.mem_bytes if self.online else 0) + self.local_disk_bytes) / 2**30


class MigrationJob(Job):
    action: ClassVar[str] = "migrate"
    kind: Literal["migration-job"] = "migration-job"
    online: bool
    with_local_disks: bool = False
    mem_bytes: int = 0
    local_disk_bytes: int = 0
    local_disks: dict[str, int] = Field(default_factory=dict, description="storage -> bytes of local disks copied")

    @staticmethod
    def id_for(plan_id: str, vmid: int, step: int = 1) -> str:
        """Deterministic per plan, guest and step (a guest parked on a third node moves twice), so
        re-enqueueing a plan never doubles a migration."""
        return f"migrate-{plan_id}-{vmid}" + (f"-{step}" if step > 1 else "")

    @classmethod
    def id_of(cls, plan_id: str, action: Migration, step: int) -> str:
        return cls.id_for(plan_id, action.vmid, step)

    @classmethod
    def of(cls, plan_id: str, action: Migration, step: int, settings: Settings) -> MigrationJob:
        m = action
        return cls(job_id=cls.id_for(plan_id, m.vmid, step), plan_id=plan_id, vmid=m.vmid, name=m.name,
                   guest_type=m.type, source=m.source, target=m.target, online=m.online,
                   with_local_disks=m.local_disk_bytes > 0 and settings.balancing.with_local_disks,
                   mem_bytes=m.mem_bytes,
                   local_disk_bytes=m.local_disk_bytes, local_disks=m.local_disks, reason=m.reason)

    def slot_scopes(self) -> list[str]:
        return keys.slot_scopes(self.source, self.target)

    def copied_bytes(self) -> int:
        return self.mem_bytes + self.local_disk_bytes

    @property
    def needs_node(self) -> str:
        return self.target

    def describe(self) -> str:
        return f"migrate {self.guest_type.value} {self.vmid} {self.source} -> {self.target}"

    metric_stem: ClassVar[str] = "migration"
    metric_labels: ClassVar[tuple[str, ...]] = ("node", "target")

    def metric_values(self) -> list[str]:
        return [self.source, self.target]


log = get_logger("pvebalance.migrator")


class Migrate(Executor[MigrationJob]):
    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        # The pre-flight checks a migration with the engine's own fit and rule families; the engine reads the
        # plan's models, built from this module, so it is loaded here, where a worker runs jobs.
        from pvebalance.services.migrator.preflight import Preflight

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
        from pvebalance.shared.jobqueue import expected_seconds  # the queue's module: loaded where jobs run

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


KIND = Kind(action=Migration, job=MigrationJob, executor=Migrate)
