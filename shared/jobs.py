"""Jobs: one plan action each, as the planner queues them and the migrator carries them out; their
states; and the status event every change of state writes.

Each kind of job carries one kind of plan action (shared/models.py `Action`) with what the migrator
needs to carry it out: `MigrationJob` a `migrate`, `DiskMoveJob` a `move-disk`. They share `Job`'s
fields and say, each for itself, which slot scopes they hold (shared/keys.py) and what moves from
where to where (the event's `source` and `target`: nodes for a migration, storages for a disk move).
A new kind is one more class here and its name in `AnyJob`, its action in shared/models.py, and its
module in services/migrator/actions/ (docs/how-it-works.md, "Adding a kind of action").
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field, TypeAdapter, ValidationError

from . import keys
from .models import Action, DiskMove, GuestType, Message, Migration, MigrationReason, Plan, utcnow

if TYPE_CHECKING:
    from .config import Settings


class JobState(StrEnum):
    QUEUED = "queued"
    WAITING = "waiting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.SKIPPED, JobState.CANCELLED)


class Job(Message):
    """What every job has. `source` and `target` are what it moves between (nodes, storages)."""

    action: ClassVar[str]  # the plan action kind it carries
    # Whether it changes the guest's config in a way /cluster/resources does not show (a disk on another
    # storage): its end then makes the collector read the config again (keys.GUEST_CONFIG_GENERATION).
    changes_config: ClassVar[bool] = False
    job_id: str
    plan_id: str
    vmid: int
    name: str
    guest_type: GuestType
    source: str
    target: str
    reason: MigrationReason = MigrationReason.BALANCE
    # Its place in the migrator's queue: when its plan was made (epoch seconds), then its action's index in
    # the plan (`job_ids` order). Jobs waiting for slots take them in this order (services/migrator/slots.py),
    # as the plan's expected time assumes (engine/timing.py); a job stored without one goes first.
    place: tuple[float, int] = (0.0, 0)

    @classmethod
    def id_of(cls, plan_id: str, action: Any, step: int) -> str:
        """Its id for the plan's action (`step`: that guest's how many-th action of this kind): deterministic,
        so that queueing a plan again never doubles a job."""
        raise NotImplementedError

    @classmethod
    def of(cls, plan_id: str, action: Any, step: int, settings: Settings) -> Job:
        """The job carrying the plan's action."""
        raise NotImplementedError

    def slot_scopes(self) -> list[str]:
        """The slot sets it holds a place in, from its start commit until it ends (shared/jobstore.py)."""
        raise NotImplementedError

    def copied_bytes(self) -> int:
        """What it copies: its expected time follows (MigratorSettings.expected_seconds)."""
        raise NotImplementedError

    @property
    def needs_node(self) -> str:
        """The node it cannot start without (offline or in maintenance: it is skipped before it starts)."""
        raise NotImplementedError

    def describe(self) -> str:
        """In a few words, for rq's job list and logs."""
        raise NotImplementedError


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


class DiskMoveJob(Job):
    """One disk of a guest to another storage (`source` and `target` are storage ids), on `node`."""

    action: ClassVar[str] = "move-disk"
    changes_config: ClassVar[bool] = True
    kind: Literal["disk-move-job"] = "disk-move-job"
    reason: MigrationReason = MigrationReason.STORAGE
    node: str
    disk: str
    size: int = Field(0, description="bytes the target must hold")
    bwlimit_mib: float | None = Field(None, description="MiB/s passed to PVE (storage_balancing.bwlimit)")

    @staticmethod
    def id_for(plan_id: str, vmid: int, disk: str) -> str:
        return f"move-disk-{plan_id}-{vmid}-{disk}"

    @classmethod
    def id_of(cls, plan_id: str, action: DiskMove, step: int) -> str:
        return cls.id_for(plan_id, action.vmid, action.disk)

    @classmethod
    def of(cls, plan_id: str, action: DiskMove, step: int, settings: Settings) -> DiskMoveJob:
        d = action
        return cls(job_id=cls.id_for(plan_id, d.vmid, d.disk), plan_id=plan_id, vmid=d.vmid, name=d.name,
                   guest_type=d.guest_type, source=d.source, target=d.target, node=d.node, disk=d.disk,
                   size=d.size, bwlimit_mib=settings.storage_balancing.bwlimit)

    def slot_scopes(self) -> list[str]:
        # the cluster-wide limit counts every job; each storage takes part in at most so many moves
        return [keys.SLOTS_CLUSTER, keys.slots_storage(self.source), keys.slots_storage(self.target)]

    def copied_bytes(self) -> int:
        return self.size

    @property
    def needs_node(self) -> str:
        return self.node  # PVE moves the disk on the node the guest is on

    def describe(self) -> str:
        return f"move {self.guest_type.value} {self.vmid} {self.disk} {self.source} -> {self.target}"


# Every kind of job, registered by its place in this union; JOB_KINDS follows from it.
AnyJob = Annotated[MigrationJob | DiskMoveJob, Field(discriminator="kind")]
JOB_KINDS: dict[str, type[Job]] = {k.action: k for k in get_args(get_args(AnyJob)[0])}
_JOBS: TypeAdapter[MigrationJob | DiskMoveJob] = TypeAdapter(AnyJob)


def parse_job(raw: str | bytes) -> MigrationJob | DiskMoveJob:
    """A stored job, strictly (raises ValidationError): the runner must not guess at a job it cannot read."""
    return _JOBS.validate_json(raw)


def parse_known_job(raw: str | bytes | None) -> MigrationJob | DiskMoveJob | None:
    """A stored job, or None when there is none or it is one this version cannot read (a lister's view)."""
    if not raw:
        return None
    try:
        return parse_job(raw)
    except ValidationError:
        return None


def _steps(plan: Plan) -> list[tuple[Action, int]]:
    """Each action with its step: the how many-th action of its kind for its guest."""
    seen: dict[tuple[str, int], int] = {}
    out = []
    for a in plan.actions:
        seen[a.kind, a.vmid] = seen.get((a.kind, a.vmid), 0) + 1
        out.append((a, seen[a.kind, a.vmid]))
    return out


def job_ids(plan: Plan) -> list[str]:
    """Each of the plan's actions' job id, in the plan's order."""
    return [JOB_KINDS[a.kind].id_of(plan.plan_id, a, step) for a, step in _steps(plan)]


def actions_with_jobs(plan: Plan) -> list[tuple[Action, str]]:
    """Each of the plan's actions with its job id, in order."""
    return list(zip(plan.actions, job_ids(plan), strict=True))


def migrations_with_jobs(plan: Plan) -> list[tuple[Migration, str]]:
    """Each of the plan's migrations with its job id, in order (a parked guest moves twice)."""
    return [(a, job_id) for a, job_id in actions_with_jobs(plan) if isinstance(a, Migration)]


def jobs_of(plan: Plan, settings: Settings) -> list[Job]:
    """The job of each of the plan's actions, in the plan's order, each with its place in the queue."""
    made = plan.created_at.timestamp()
    return [JOB_KINDS[a.kind].of(plan.plan_id, a, step, settings).model_copy(update={"place": (made, index)})
            for index, (a, step) in enumerate(_steps(plan))]


class JobStatusEvent(Message):
    kind: Literal["job-status"] = "job-status"
    job_id: str
    plan_id: str
    vmid: int
    action: str = Field("migrate", description="the job's action kind: migrate (source/target are nodes), "
                        "move-disk (storages)")
    source: str
    target: str
    state: JobState
    at: datetime = Field(default_factory=utcnow)
    upid: str | None = None
    message: str = ""
    duration_s: float | None = None
