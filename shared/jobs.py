"""Jobs: one plan action each, as the planner queues them and the migrator carries them out; their
states; and the status event every change of state writes.

Each kind of job carries one kind of plan action (shared/models.py `Action`) with what the migrator
needs to carry it out; both are defined in the kind's module (pvebalance/actions/: `MigrationJob` a
`migrate`, `DiskMoveJob` a `move-disk`). They share `Job`'s fields and say, each for itself, which slot
scopes they hold (shared/keys.py) and what moves from where to where (the event's `source` and `target`:
nodes for a migration, storages for a disk move). This module reads any registered kind's job
(docs/how-it-works.md, "Adding a kind of action").
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, TypeAlias

from pydantic import Field, TypeAdapter, ValidationError

from pvebalance.actions import Job as Job
from pvebalance.actions import job_union, kind_named
from pvebalance.actions.migrate import MigrationJob as MigrationJob
from pvebalance.actions.move_disk import DiskMoveJob as DiskMoveJob

from .models import Action, Message, Migration, Plan, utcnow

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


# Every registered kind's job (pvebalance/actions/__init__.py `KINDS`), told apart by its `kind`.
if TYPE_CHECKING:
    AnyJob: TypeAlias = Job
else:
    AnyJob = job_union()
_JOBS: TypeAdapter[Job] = TypeAdapter(AnyJob)


def parse_job(raw: str | bytes) -> Job:
    """A stored job, strictly (raises ValidationError): the runner must not guess at a job it cannot read."""
    return _JOBS.validate_json(raw)


def parse_known_job(raw: str | bytes | None) -> Job | None:
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
    return [kind_named(a.kind).job.id_of(plan.plan_id, a, step) for a, step in _steps(plan)]


def actions_with_jobs(plan: Plan) -> list[tuple[Action, str]]:
    """Each of the plan's actions with its job id, in order."""
    return list(zip(plan.actions, job_ids(plan), strict=True))


def migrations_with_jobs(plan: Plan) -> list[tuple[Migration, str]]:
    """Each of the plan's migrations with its job id, in order (a parked guest moves twice)."""
    return [(a, job_id) for a, job_id in actions_with_jobs(plan) if isinstance(a, Migration)]


def jobs_of(plan: Plan, settings: Settings) -> list[Job]:
    """The job of each of the plan's actions, in the plan's order, each with its place in the queue."""
    made = plan.created_at.timestamp()
    return [kind_named(a.kind).job.of(plan.plan_id, a, step, settings).model_copy(update={"place": (made, index)})
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
