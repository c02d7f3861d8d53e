"""What every kind of action has (pvebalance/actions/__init__.py registers the kinds, one module each).

A kind is three things, defined together in its module:
- its **action** (`ActionBase`): a step of a plan, in `Plan.actions` (a discriminated union on `kind`);
- its **job** (`Job`): what the planner queues for one action and the migrator carries out: its id, the
  slot scopes it holds, what it copies, the node it needs;
- its **executor** (`Executor`): the migrator's part that only the kind knows, as OpenStack Watcher's
  actions have theirs. The runner (services/migrator/runner.py) does the generic part for every kind:
  the lease, the slots, the start commit, the POST exactly once (never a blind second one: the kind's
  task list is searched first), the UPID, following the task to its end, and the job's end. An executor
  says:
  - `check`: is the action still wanted and allowed, on fresh reads (the rule families included): its
    POST's parameters, or Skip / Gone / Deferred / Failed (below);
  - `look_ahead`: the same before waiting for a slot, raising only Gone;
  - `path`: where its POST goes; `tasks`: its tasks of the guest, to find a POST's task;
  - `verify`: after its task stopped, did it happen (raise Failed if not; a note for the job's end
    message where something is worth saying); `done`: without a task to follow (a resumed job whose
    POST left none), has it happened already;
  - `succeeded`: the bookkeeping of a success, and the message that ends the job.

This module and the kinds' modules import only the light part of shared/ (messages, keys, logging, the
Proxmox client's errors): the plan's models (shared/models.py) are built from them, and the engine reads
those without loading a client.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from pvebalance.shared.message import GuestType, Message, MigrationReason
from pvebalance.shared.proxmox_errors import ProxmoxError

if TYPE_CHECKING:
    from pvebalance.shared.config import Settings
    from pvebalance.shared.jobrecord import JobRecord
    from pvebalance.shared.jobstore import JobStore
    from pvebalance.shared.proxmox import ProxmoxClient


class ActionBase(BaseModel):
    """What every plan action has: its kind (a Literal in each kind's model: the union's discriminator), its
    guest, its batch and the actions it waits for."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    vmid: int
    batch: int = Field(0, ge=0, description="actions of the same batch may run in parallel")
    after: list[int] = Field(default_factory=list, description="the plan's actions (their indexes) it waits for")
    # What one is called where a plan's actions are counted ("3 migrations and 2 disk moves").
    noun: ClassVar[str]

    @abstractmethod
    def guest(self) -> str:
        """Its guest as prometheus-pve-exporter labels it: `qemu/100`, `lxc/101`."""

    @abstractmethod
    def describe(self) -> str:
        """The action in a few words, for an operator: `guest 100 (web) pve1 -> pve2`."""


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

    # /metrics (services/api/metrics_jobs.py): the stem of its kind's families ("migration": pvebalance_migrations,
    # pvebalance_migration_active, ...) and the labels of a job not yet ended, besides `id` and `state`.
    metric_stem: ClassVar[str]
    metric_labels: ClassVar[tuple[str, ...]]

    def metric_values(self) -> list[str]:
        """Its values of `metric_labels`, in order."""
        raise NotImplementedError


J = TypeVar("J", bound=Job)


class Skip(Exception):
    """The action is no longer wanted or allowed; the job ends as skipped with this reason."""


class Gone(Skip):
    """Skipped for good: the guest, its target or what it moves is gone, or not where the plan saw it."""


class Deferred(Exception):
    """The action must wait (a backup of the guest is about to start or runs); checked again after `until`."""

    def __init__(self, reason: str, until: float) -> None:
        super().__init__(reason)
        self.until = until


class Failed(Exception):
    """The action did not happen or did not land; the job ends as failed with this reason."""


def config_missing(exc: ProxmoxError) -> bool:
    """PVE's answer for a guest whose config is not on that node."""
    return exc.status == 500 and "does not exist" in exc.message


@dataclass(frozen=True)
class Cleared:
    """What a check that passed read: what the POST needs and what the job is judged by after it."""
    params: dict[str, Any]  # the POST's parameters
    known_tasks: set[str]  # UPIDs of the guest's tasks of this kind before the POST
    keep: dict[str, str] = field(default_factory=dict)  # stored on the job for `verify` (a resumed run reads it)


@dataclass(frozen=True)
class Context:
    """What an executor works with, the runner's: `api` calls the Proxmox API through its outages (within a
    patience, or for as long as it takes with None); `redis` calls Redis through its outages."""
    client: ProxmoxClient
    settings: Settings
    store: JobStore
    api: Callable[..., Any]
    redis: Callable[[Callable[[], Any]], Any]
    sleep: Callable[[float], None]


class Executor(ABC, Generic[J]):
    """One kind's own part of carrying out its jobs (the module docstring says what each method does)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.client = ctx.client
        self.settings = ctx.settings

    @abstractmethod
    def look_ahead(self, job: J) -> None: ...

    @abstractmethod
    def check(self, job: J, patience: float, resumed: bool = False) -> Cleared:
        """`resumed`: checked again for a run taken over after its slots were pinned (nothing to wait for)."""

    @abstractmethod
    def path(self, job: J) -> str: ...

    @abstractmethod
    def tasks(self, job: J) -> list[dict[str, Any]]:
        """The guest's tasks of this kind on the node the POST goes to, running or finished, oldest first."""

    @abstractmethod
    def verify(self, job: J, upid: str, ok: bool, exitstatus: str, record: JobRecord) -> str | None: ...

    @abstractmethod
    def done(self, job: J) -> bool: ...

    @abstractmethod
    def succeeded(self, job: J) -> str: ...


@dataclass(frozen=True)
class Kind:
    """One kind of action, as its module defines it and pvebalance/actions/__init__.py registers it."""
    action: type[ActionBase]
    job: type[Job]
    executor: type[Executor[Any]]

    @property
    def name(self) -> str:
        """The action's `kind` (its model's Literal), also its job's `action`."""
        return str(self.action.model_fields["kind"].default)

    def __post_init__(self) -> None:
        if self.job.action != self.name:
            raise TypeError(f"{self.job.__name__} carries {self.job.action!r}, not {self.name!r}")
