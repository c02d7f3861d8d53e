"""Messages exchanged between the services, each a pydantic model with a schema version.

Data flows one way: collector -> ClusterSnapshot -> planner -> Plan (its actions) -> jobs (shared/jobs.py)
-> migrator -> JobStatusEvent. A reader refuses a message whose schema_version it does not know instead of
guessing at its meaning.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from pvebalance.actions import ActionBase, action_union

# The kinds of action (pvebalance/actions/, one module each) and the messages' base are defined apart and
# named here too, where every reader of plans and snapshots has always found them.
from pvebalance.actions.migrate import Migration as Migration
from pvebalance.actions.move_disk import DiskMove as DiskMove

from .message import SCHEMA_VERSION as SCHEMA_VERSION
from .message import GuestType as GuestType
from .message import Message as Message
from .message import MigrationReason as MigrationReason
from .message import new_id as new_id
from .message import parse_known as parse_known
from .message import utcnow as utcnow


class NodeState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    online: bool = True
    maintenance: bool = False
    cpu: float = Field(0.0, description="fraction of all the node's cores in use (0..1)")
    maxcpu: int = 1
    mem: int = Field(0, description="bytes used, host and guests")
    maxmem: int = 1
    local_disk: int = Field(0, description="bytes used on the node's local (non-shared) guest storages")
    local_maxdisk: int = Field(0, description="capacity of the node's local guest storages")
    # Smoothed over the last hour of PVE's RRD (None until read): what `used` mode balances on.
    cpu_avg: float | None = None
    cpu_p95: float | None = None
    mem_avg: float | None = None
    psi: dict[str, float] = Field(default_factory=dict, description="PVE 9 pressure (RRD hour average)")
    # Set when an online node reports figures no real node has (maxmem 0 or missing, use far above
    # capacity): the engine then neither moves guests onto it nor counts it, and leaves its guests.
    problem: str | None = Field(None, description="why this node's figures cannot be planned on")
    # /nodes/{node}/status cpuinfo.model (None until read): `host` CPU type VMs move only between equal models
    cpu_model: str | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None


class GuestDisk(BaseModel):
    """One disk of a guest's config (`scsi0`, `efidisk0`, `rootfs`, `mp1`, ...). A CD-ROM drive with an
    image on a storage is listed with `media: cdrom` (PVE moves no CD-ROM; a migration copies none)."""

    model_config = ConfigDict(extra="forbid")
    key: str
    storage: str
    size: int = Field(0, description="bytes: the config's size=")
    shared: bool = Field(False, description="on a storage shared between nodes: a migration does not copy it")
    media: Literal["cdrom"] | None = Field(None, description="cdrom: a CD-ROM drive's image, not a disk")

    @property
    def cdrom(self) -> bool:
        return self.media == "cdrom"


class StorageState(BaseModel):
    """A storage as one node sees it (a /cluster/resources `type: storage` entry)."""

    model_config = ConfigDict(extra="forbid")
    node: str
    storage: str
    shared: bool = False
    content: list[str] = Field(default_factory=list, description="images, rootdir, iso, backup, ...")
    disk: int = Field(0, description="bytes used")
    maxdisk: int = Field(0, description="bytes of capacity")
    active: bool = Field(True, description="`status` available: the node can use it now")

    @property
    def holds_guest_disks(self) -> bool:
        return "images" in self.content or "rootdir" in self.content


class GuestState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vmid: int
    name: str
    type: GuestType
    node: str
    status: str = "running"
    template: bool = False
    lock: str | None = None
    tags: list[str] = Field(default_factory=list)
    pool: str | None = None
    hastate: str | None = None
    cpu: float = Field(0.0, description="fraction of the guest's own vCPUs in use (0..1)")
    maxcpu: int = 1
    mem: int = 0
    maxmem: int = 0
    maxdisk: int = 0
    local_disk: int = Field(0, description="bytes of disks on non-shared storage (copied by a migration)")
    disks: list[GuestDisk] = Field(default_factory=list, description="every disk of its config")
    local_resources: list[str] = Field(default_factory=list)
    # A config with snapshots names its newest (`parent`): PVE refuses to move a disk a snapshot
    # uses and delete the source, so the disks of such a guest stay on their storage.
    has_snapshots: bool = Field(False, description="its config has snapshots (`parent` set)")
    # Smoothed over the collector's recent snapshots (None until seen twice)
    cpu_avg: float | None = None
    mem_avg: float | None = None
    psi: dict[str, float] = Field(default_factory=dict, description="PVE 9 pressure of a running VM")
    # From a VM's config (None when the snapshot has no config for it): a node with fewer cores than
    # `vcpus` cannot start it, and a `host` CPU type runs only where the CPU model is the same.
    vcpus: int | None = Field(None, description="sockets x cores of a VM's config (or its vcpus, if more)")
    cputype: str | None = Field(None, description="a VM config's cpu type (`host`, `x86-64-v2-AES`, ...)")

    @property
    def running(self) -> bool:
        return self.status == "running"

    def local_storage_bytes(self) -> dict[str, int]:
        """Bytes of its local disks per storage id: what a migration copies onto the target's storage
        of the same id (a snapshot without disk facts gives nothing)."""
        out: dict[str, int] = {}
        for d in self.disks:
            if not d.shared and not d.cdrom:
                out[d.storage] = out.get(d.storage, 0) + d.size
        return out


class HaRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rule: str
    type: Literal["node-affinity", "resource-affinity"]
    resources: list[str]
    nodes: dict[str, int] = Field(default_factory=dict, description="node -> priority")
    strict: bool = False
    affinity: Literal["positive", "negative"] | None = None
    disabled: bool = False


class InFlightMigration(BaseModel):
    """A migration running when a plan is made: a live migration holds the guest's memory on both its
    source and its target until it ends, so the engine counts it on both (pvebalance/engine/fit.py)."""

    model_config = ConfigDict(extra="forbid")
    job_id: str
    vmid: int
    source: str
    target: str
    mem_bytes: int = 0
    online: bool = True
    local_disks: dict[str, int] = Field(default_factory=dict, description="storage -> bytes its local disks "
                                        "take on the target's storage of that id")


class ClusterSnapshot(Message):
    kind: Literal["snapshot"] = "snapshot"
    snapshot_id: str = Field(default_factory=lambda: new_id("snap"))
    taken_at: datetime = Field(default_factory=utcnow)  # the collector's: when its reads began
    cluster: str = ""
    quorate: bool = True
    ha_auto_rebalance: bool = False
    nodes: list[NodeState]
    guests: list[GuestState]
    ha_rules: list[HaRule] = Field(default_factory=list)
    storages: list[StorageState] = Field(default_factory=list)
    pools: dict[str, list[int]] = Field(default_factory=dict)
    # HA resources whose PVE 9.2 `auto-rebalance` flag is 0 (/cluster/ha/resources; the default is 1):
    # PVE's own auto-rebalance leaves them alone, so the balancer may move them.
    ha_auto_rebalance_off: list[int] = Field(default_factory=list)
    # HA resources whose `failback` flag is 0 (/cluster/ha/resources; the default is 1): PVE leaves
    # them on any node their node-affinity rule allows instead of moving them back to its top group.
    ha_failback_off: list[int] = Field(default_factory=list)
    # The planner's view, not the collector's: pvebalance's own migrations in flight (jobstore.in_flight)
    in_flight: list[InFlightMigration] = Field(default_factory=list)

    def age_seconds(self, now: datetime | None = None) -> float:
        return ((now or utcnow()) - self.taken_at).total_seconds()


class GroupOutcome(BaseModel):
    """One storage group of storage balancing: its spread before and after the plan."""

    model_config = ConfigDict(extra="forbid")
    storages: list[str]
    spread_before_pp: float
    spread_after_pp: float
    method: Literal["none", "exact", "greedy"] = Field(
        description="none: nothing to do or nothing movable; exact: the HiGHS model's plan; greedy: one move at "
        "a time")
    proven: bool = Field(False, description="exact and proven: no plan has fewer moves (nor, with as many, fewer GiB)")


# A plan's steps, one kind each: every kind registered in pvebalance/actions/__init__.py, told apart by `kind`
# (type checkers see their common base: narrow with isinstance).
if TYPE_CHECKING:
    Action: TypeAlias = ActionBase
else:
    Action = action_union()


class NodeUsage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    used: float
    total: float
    percent: float


class DimensionUsage(BaseModel):
    """One balanced dimension (pvebalance/engine/load.py DIMENSIONS) across the nodes."""

    model_config = ConfigDict(extra="forbid")
    spread_pp: float
    nodes: dict[str, NodeUsage]


class UsageSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spread_pp: float  # the first balanced dimension's, as are `nodes`
    nodes: dict[str, NodeUsage]
    dimensions: dict[str, DimensionUsage] = Field(
        default_factory=dict, description="each dimension the plan balances, in the plan's order (the first is "
        "also spread_pp and nodes)")


class StorageBalance(BaseModel):
    """Storage balancing's part of a plan (pvebalance/engine/storage_balance.py): each balanced storage's use
    before and after its disk moves, each group's spread, and why disks on them stay."""

    model_config = ConfigDict(extra="forbid")
    band_pp: float = Field(description="storage_balancing.balanciness")
    max_usage: float = Field(description="storage_balancing.max_usage, percent")
    before: dict[str, NodeUsage] = Field(default_factory=dict, description="storage -> bytes used, of its capacity")
    after: dict[str, NodeUsage] = Field(default_factory=dict)
    groups: list[GroupOutcome] = Field(default_factory=list)
    stays: list[str] = Field(default_factory=list, description="why a disk on a balanced storage stays, in words")


class Unmet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rule: str
    vmids: list[int]
    reason: str


class GroupSplit(BaseModel):
    """How long a together-group (affinity) is split while a plan runs: from the first of its guests
    landing (or the plan's start, if it was split before) to the last, at the migrator's limits and
    expected durations (pvebalance/engine/schedule.py)."""

    model_config = ConfigDict(extra="forbid")
    group: str
    vmids: list[int]
    batch: int | None = Field(description="the one batch of its moves; None if they depend on each other")
    split_s: float = Field(description="seconds it is split at most")


PlanOutcome = Literal["balanced", "planned", "partial", "infeasible"]


class Plan(Message):
    kind: Literal["plan"] = "plan"
    plan_id: str = Field(default_factory=lambda: new_id("plan"))
    snapshot_id: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    method: str
    mode: str
    balanciness: float  # the first dimension's band, percentage points
    bands: dict[str, float] = Field(default_factory=dict, description="each balanced dimension's band (its "
                                    "balanciness), percentage points, in the plan's order")
    before: UsageSummary
    after: UsageSummary
    actions: list[Action] = Field(default_factory=list, description="what the plan does, in order")
    violations: list[str] = Field(default_factory=list)
    unmet: list[Unmet] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    outcome: PlanOutcome = Field("planned", description="balanced (nothing to do), planned, partial "
                                 "(some rules unmet: see unmet), infeasible (no safe move helps: see outcome_reason)")
    outcome_reason: str = ""
    # Nodes in `before`/`after` that the spread leaves out (and nothing moves onto), with the reason:
    # "maintenance" (being emptied or held empty), "offline", "ignored", "no capacity".
    held_out: dict[str, str] = Field(default_factory=dict)
    splits: list[GroupSplit] = Field(default_factory=list, description="affinity groups split while it runs")
    expected_seconds: float = Field(0.0, ge=0, description="expected time from its first migration's start to its "
                                    "last one's end: the queue over the nodes' migration links "
                                    "(pvebalance/engine/timing.py)")
    storage: StorageBalance | None = Field(None, description="storage balancing's figures, when it is on")

    @model_validator(mode="before")
    @classmethod
    def _actions_from_migrations(cls, data: Any) -> Any:
        """A plan stored before actions (or written by hand) lists `migrations`: they are its actions. A plan
        read back carries `migrations` too (the view below, serialized for JSON readers): the actions rule."""
        if isinstance(data, dict) and "migrations" in data:
            data = dict(data)
            migrations = data.pop("migrations")
            if "actions" not in data and isinstance(migrations, list):
                data["actions"] = legacy_order(migrations)
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def migrations(self) -> list[Migration]:
        """The migrate actions, in order: what every reader of node balance reads."""
        return [a for a in self.actions if isinstance(a, Migration)]

    @property
    def disk_moves(self) -> list[DiskMove]:
        return [a for a in self.actions if isinstance(a, DiskMove)]

    def of_guests(self, vmids: Collection[int] | None) -> Plan:
        """The plan with only these guests' actions (None: all of them), as an approval of some guests' moves
        chooses them."""
        chosen = None if vmids is None else set(vmids)
        return self if chosen is None else self.only(lambda a: a.vmid in chosen)

    def only(self, keep: Callable[[Action], bool]) -> Plan:
        """The plan with only the actions `keep` accepts, each still waiting for those it waited for that stay
        (an approval of some guests' moves, a drain that leaves stopped guests)."""
        kept = [i for i, a in enumerate(self.actions) if keep(a)]
        new = {old: n for n, old in enumerate(kept)}
        actions = [self.actions[i].model_copy(update={"after": [new[j] for j in self.actions[i].after if j in new]})
                   for i in kept]
        return self.model_copy(update={"actions": actions})


def legacy_order(migrations: list[Any]) -> list[Any]:
    """A plan stored before actions lists `migrations` (no `kind`, no `after`): each is a migrate action
    waiting, as the planner of that version made it wait, for the earlier migrations out of its target and
    its guest's earlier one."""
    leaving: dict[str, list[int]] = {}
    last_of: dict[Any, int] = {}
    out = []
    for i, m in enumerate(migrations):
        fields = m if isinstance(m, dict) else m.model_dump() if isinstance(m, Migration) else None
        if fields is None or "after" in (m if isinstance(m, dict) else m.model_fields_set):
            out.append(m)
            continue
        vmid, source, target = fields.get("vmid"), str(fields.get("source")), str(fields.get("target"))
        after = sorted(set(leaving.get(target, [])) | ({last_of[vmid]} if vmid in last_of else set()))
        out.append({"kind": "migrate", **m, "after": after} if isinstance(m, dict)
                   else m.model_copy(update={"after": after}))
        leaving.setdefault(source, []).append(i)
        last_of[vmid] = i
    return out
