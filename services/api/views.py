"""What the API answers: response models, and how each is read from Redis.

The API only reads the stores the services write (snapshots, plans and their states, jobs, request
statuses) and writes operator requests; it never changes a plan or a job itself, but for cancelling a
job that has not started (the job store's own compare-and-set, as `pvebalance cancel` does).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias, Union, cast

from pydantic import BaseModel, Field, create_model, model_validator
from redis import Redis

from pvebalance.actions import KINDS
from pvebalance.engine import Policy
from pvebalance.engine.storage_facts import shared_stores
from pvebalance.shared import keys, snapshots
from pvebalance.shared.config import Settings
from pvebalance.shared.jobs import (
    DiskMoveJob,
    JobState,
    JobStatusEvent,
    actions_with_jobs,
    job_ids,
    migrations_with_jobs,
)
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.message import guest_id
from pvebalance.shared.models import ClusterSnapshot, DiskMove, GuestType, Migration, MigrationReason, Plan
from pvebalance.shared.planner_mode import published
from pvebalance.shared.plans import PlanState, PlanStatus, PlanStore
from pvebalance.shared.policy_now import policy_now
from pvebalance.shared.retention import Retention

from .usage import RESOURCES, spreads_now, usage_percent

# Plans in these states still have moves to come; others leave "after" equal to "now".
LIVE_PLAN_STATES = (PlanState.RECOMMENDED, PlanState.APPROVED, PlanState.RUNNING)
FAILED_OR_SKIPPED = (JobState.FAILED, JobState.SKIPPED, JobState.CANCELLED)


class NodeView(BaseModel):
    name: str
    online: bool
    maintenance: bool
    drained: bool = Field(description="held empty by a drain request until undrained")
    problem: str | None = None
    guests: int
    running: int = Field(description="guests running on the node (a drain moves these; stopped ones stay)")
    usage: dict[str, float | None] = Field(description="resource -> percent in use now (None: none to use)")
    usage_after_plan: dict[str, float | None] = Field(description="the same once the current plan's moves are done")
    mem: int
    maxmem: int
    cpu: float
    maxcpu: int
    local_disk: int
    local_maxdisk: int


class GuestView(BaseModel):
    id: str = Field(description="qemu/VMID or lxc/VMID, as prometheus-pve-exporter labels guests")
    vmid: int
    name: str
    type: GuestType
    node: str
    status: str
    mem: int
    maxmem: int
    maxcpu: int
    tags: list[str]
    hastate: str | None = None


class StorageView(BaseModel):
    """A shared storage, once (the snapshot has one entry per node; the largest reading is kept, as storage
    balancing counts it: pvebalance/engine/storage_facts.py)."""

    storage: str
    used: int = Field(description="bytes used, as the latest snapshot has it")
    total: int = Field(description="bytes of capacity (0: none reported)")
    percent: float | None = Field(description="used of total, percent (None: no capacity reported)")
    content: list[str] = Field(description="what it holds: images, rootdir, iso, backup, ...")
    nodes: list[str] = Field(description="the nodes it is available on now")


class ClusterView(BaseModel):
    snapshot_id: str
    taken_at: datetime
    age_s: float
    cluster: str
    quorate: bool
    method: str = Field(description="the dimensions balanced, joined by commas (memory,cpu)")
    mode: str
    balanciness: float = Field(description="the first balanced dimension's band, percentage points")
    spread_pp: float = Field(description="spread of the (first) balanced dimension now, percentage points")
    resources: list[str] = Field(default_factory=list, description="every dimension a node's usage is given in "
                                 "(pvebalance/engine/load.py DIMENSIONS), in order: the keys of each node's usage")
    bands: dict[str, float] = Field(default_factory=dict, description="each balanced dimension's band, pp")
    spreads: dict[str, float] = Field(default_factory=dict, description="each balanced dimension's spread now, pp")
    plan_id: str | None = Field(None, description="the plan whose moves 'usage_after_plan' counts")
    paused: dict[str, Any] | None = Field(None, description="the pause in force (who, why, until), if any")
    kept: str = Field("", description="how long Redis keeps plans, jobs and requests (the retention settings)")
    mode_of_operation: str = Field("automatic", description="automatic | manual | dry-run: the running planner's "
                                   "(it publishes its mode), else the API's config's")
    balancing_enabled: bool = Field(True, description="balancing.enable, from the same source")
    mode_from: str = Field("config", description="planner: as the running planner reports it; config: no planner seen")
    nodes: list[NodeView]
    guests: list[GuestView]
    storages: list[StorageView] = Field(default_factory=list, description="each shared storage's use, by id")


class WithJob(BaseModel):
    """What every action's view adds to the action: its guest's id and its job."""

    id: str = Field(description="qemu/VMID or lxc/VMID, as prometheus-pve-exporter labels guests")
    job_id: str
    job_state: JobState | None = Field(None, description="None: not enqueued (plan not approved, or not yet)")
    job_message: str = ""


class MoveView(Migration, WithJob):
    """A migration of the plan with its job."""


class DiskMoveView(DiskMove, WithJob):
    """A disk move of the plan with its job: `source` and `target` are storage ids, `node` the guest's node."""

    size_gib: float = Field(description="its size, GiB (what the move copies)")

    @model_validator(mode="before")
    @classmethod
    def _size_gib(cls, data: Any) -> Any:
        if isinstance(data, dict) and "size_gib" not in data and "size" in data:
            data = {**data, "size_gib": round(data["size"] / 2**30, 2)}
        return data


# Each registered kind's view (pvebalance/actions/): the action with its job; a kind without a view of its
# own here is shown as its action with WithJob's fields.
_VIEWS: dict[str, type[WithJob]] = {"migrate": MoveView, "move-disk": DiskMoveView}
for _kind in KINDS:
    if _kind.name not in _VIEWS:
        _VIEWS[_kind.name] = create_model(f"{_kind.action.__name__}View", __base__=cast(Any, (_kind.action, WithJob)))
if TYPE_CHECKING:
    ActionView: TypeAlias = WithJob
else:
    ActionView = Annotated[Union[tuple(_VIEWS.values())], Field(discriminator="kind")]  # noqa: UP007


class PlanView(BaseModel):
    plan: Plan = Field(description="the plan as stored: its actions, migrations, before/after per node and, with "
                       "storage balancing on, `storage` (each balanced storage's use before and after, the groups' "
                       "spreads, why disks stay)")
    status: PlanStatus | None = Field(None, description="its state: recommended, approved, running, done, ...")
    moves: list[MoveView] = Field(description="its migrations with their jobs, in order")
    actions: list[ActionView] = Field(default_factory=list, description="every action with its job, in the plan's "
                                      "order (kind: migrate, move-disk)")


class JobView(BaseModel):
    job_id: str
    plan_id: str
    action: str = Field("migrate", description="migrate (source and target are nodes) or move-disk (storages)")
    id: str
    vmid: int
    name: str
    type: GuestType
    source: str
    target: str
    disk: str | None = Field(None, description="a disk move's disk (scsi0, rootfs, ...)")
    node: str | None = Field(None, description="the node a disk move runs on (the guest's)")
    reason: MigrationReason
    state: JobState | None
    message: str = ""
    upid: str | None = None
    duration_s: float | None = None
    started_at: datetime | None = Field(None, description="when it started (its running event)")
    created_at: datetime | None = None
    updated_at: datetime | None = None


class JobDetail(JobView):
    events: list[JobStatusEvent]


def _when(value: float | None) -> datetime | None:
    try:
        return datetime.fromtimestamp(value, UTC) if value is not None else None
    except (ValueError, OverflowError, OSError):
        return None


class ReadSide:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis, self.settings = redis, settings
        self.retention = Retention(settings.retention)
        self.jobs = JobStore(redis, self.retention)
        self.plans = PlanStore(redis, self.retention)

    def policy(self) -> Policy:
        """The policy the planner plans with now (shared/policy_now.py)."""
        return policy_now(self.redis, self.settings)

    def snapshot(self) -> ClusterSnapshot | None:
        return snapshots.latest(self.redis)

    def _json(self, key: str) -> dict[str, Any] | None:
        raw = self.redis.get(key)
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def drained(self) -> set[str]:
        return {k.decode() if isinstance(k, bytes) else str(k) for k in self.redis.hkeys(keys.DRAINED)}

    def pending_moves(self, plan: Plan | None, status: PlanStatus | None) -> list[Migration]:
        """Moves of the plan still to come: the plan is live and the move's job has not failed or been skipped."""
        if plan is None or status is None or status.state not in LIVE_PLAN_STATES:
            return []
        return [m for m, job_id in migrations_with_jobs(plan) if (status.vmids is None or m.vmid in status.vmids)
                and self.jobs.state(job_id) not in FAILED_OR_SKIPPED]

    def storages(self, snapshot: ClusterSnapshot) -> list[StorageView]:
        return [StorageView(storage=s.id, used=s.used, total=s.total,
                            percent=round(100.0 * s.used / s.total, 2) if s.total > 0 else None,
                            content=sorted(s.content), nodes=sorted(s.nodes))
                for s in sorted(shared_stores(snapshot).values(), key=lambda s: s.id)]

    def cluster(self, snapshot: ClusterSnapshot) -> ClusterView:
        plan = self.plans.latest()
        status = self.plans.status(plan.plan_id) if plan else None
        pending = self.pending_moves(plan, status)
        policy = self.policy()
        now = usage_percent(snapshot, policy)
        after = usage_percent(snapshot, policy, pending) if pending else now
        drained = self.drained()
        counts: dict[str, int] = {}
        running: dict[str, int] = {}
        for g in snapshot.guests:
            counts[g.node] = counts.get(g.node, 0) + 1
            running[g.node] = running.get(g.node, 0) + (1 if g.running else 0)
        nodes = [NodeView(name=n.name, online=n.online, maintenance=n.maintenance, drained=n.name in drained,
                          problem=n.problem, guests=counts.get(n.name, 0), running=running.get(n.name, 0),
                          usage=now[n.name],
                          usage_after_plan=after[n.name], mem=n.mem, maxmem=n.maxmem, cpu=n.cpu, maxcpu=n.maxcpu,
                          local_disk=n.local_disk, local_maxdisk=n.local_maxdisk) for n in snapshot.nodes]
        guests = [GuestView(id=guest_id(g.type, g.vmid), vmid=g.vmid, name=g.name, type=g.type, node=g.node,
                            status=g.status, mem=g.mem, maxmem=g.maxmem, maxcpu=g.maxcpu, tags=g.tags,
                            hastate=g.hastate) for g in snapshot.guests]
        spreads = spreads_now(snapshot, policy)
        return ClusterView(snapshot_id=snapshot.snapshot_id, taken_at=snapshot.taken_at,
                           age_s=round(snapshot.age_seconds(), 3), cluster=snapshot.cluster, quorate=snapshot.quorate,
                           method=",".join(policy.dimensions), mode=policy.mode,
                           balanciness=policy.band(policy.dimensions[0]), spread_pp=next(iter(spreads.values())),
                           resources=list(RESOURCES), bands={d: policy.band(d) for d in policy.dimensions},
                           spreads=spreads, plan_id=plan.plan_id if plan else None,
                           paused=self._json(keys.PAUSED), kept=self.retention.kept(), nodes=nodes, guests=guests,
                           storages=self.storages(snapshot), **self.operation())

    def operation(self) -> dict[str, Any]:
        """The mode of operation the running planner publishes (services/planner), else this config's."""
        planner = published(self.redis)
        if planner is not None:
            return {"mode_of_operation": planner.mode_of_operation, "balancing_enabled": planner.enable,
                    "mode_from": "planner"}
        bal = self.settings.balancing
        return {"mode_of_operation": bal.mode_of_operation, "balancing_enabled": bal.enable, "mode_from": "config"}

    def plan_view(self, plan: Plan) -> PlanView:
        actions: list[WithJob] = []
        for a, job_id in actions_with_jobs(plan):  # a parked guest moves twice, each with its own job
            record = self.jobs.load(job_id)
            actions.append(_VIEWS[a.kind](**a.model_dump(), id=a.guest(), job_id=job_id, job_state=record.state,
                                          job_message=record.message))
        moves = [a for a in actions if isinstance(a, MoveView)]
        return PlanView(plan=plan, status=self.plans.status(plan.plan_id), moves=moves, actions=actions)

    def job_view(self, job_id: str) -> JobView | None:
        record = self.jobs.load(job_id)
        job = record.job
        if job is None:
            return None
        disk = (job.disk, job.node) if isinstance(job, DiskMoveJob) else (None, None)
        return JobView(job_id=job.job_id, plan_id=job.plan_id, action=job.action, id=guest_id(job.guest_type, job.vmid),
                       vmid=job.vmid, name=job.name, type=job.guest_type, source=job.source, target=job.target,
                       disk=disk[0], node=disk[1], reason=job.reason,
                       state=record.state, message=record.message, upid=record.upid, duration_s=record.duration_s,
                       started_at=_when(record.at(JobState.RUNNING)), created_at=_when(record.created_at),
                       updated_at=_when(record.updated_at))

    def listed_jobs(self, plan_id: str | None = None) -> list[str]:
        """Jobs to list, newest first: a plan's own (ids follow from its moves), or the active ones
        and those in the retained event stream."""
        if plan_id is not None:
            plan = self.plans.plan(plan_id)
            return job_ids(plan) if plan else []
        seen: dict[str, None] = {}
        for _, event in reversed(self.jobs.events(count=self.jobs.retention.events)):
            seen.setdefault(event.job_id)
        for job_id in sorted(self.jobs.active_jobs()):
            seen.setdefault(job_id)
        return list(seen)

    def events_of(self, job_id: str) -> list[JobStatusEvent]:
        return [e for _, e in self.jobs.events(count=self.jobs.retention.events) if e.job_id == job_id]
