"""What a kind of job does, apart from what every job does.

The runner (services/migrator/runner.py) does the generic part for every kind: the lease, the slots,
the start commit, the POST exactly once (never a blind second one: the kind's task list is searched
first), the UPID, following the task to its end, and the job's end. A kind (one module each in this
package, registered in `__init__.py`) says what only it knows, as OpenStack Watcher's actions do:

- `check`: is the action still wanted and allowed, on fresh reads (the rule families included): its
  POST's parameters, or Skip / Gone / Deferred / Failed (services/migrator/preflight.py);
- `look_ahead`: the same before waiting for a slot, raising only Gone;
- `path`: where its POST goes; `tasks`: its tasks of the guest, to find a POST's task;
- `verify`: after its task stopped, did it happen (raise Failed if not; a note for the job's end
  message where something is worth saying); `done`: without a task to
  follow (a resumed job whose POST left none), has it happened already;
- `succeeded`: the bookkeeping of a success, and the message that ends the job.
Its slot scopes are the job's own (shared/jobs.py `slot_scopes`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pvebalance.shared.config import Settings
from pvebalance.shared.jobrecord import JobRecord
from pvebalance.shared.jobs import Job
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.proxmox import ProxmoxClient

J = TypeVar("J", bound=Job)
T = TypeVar("T")


@dataclass(frozen=True)
class Cleared:
    """What a check that passed read: what the POST needs and what the job is judged by after it."""
    params: dict[str, Any]  # the POST's parameters
    known_tasks: set[str]  # UPIDs of the guest's tasks of this kind before the POST
    keep: dict[str, str] = field(default_factory=dict)  # stored on the job for `verify` (a resumed run reads it)


@dataclass(frozen=True)
class Context:
    """What a kind works with, the runner's: `api` calls the Proxmox API through its outages (within a
    patience, or for as long as it takes with None); `redis` calls Redis through its outages."""
    client: ProxmoxClient
    settings: Settings
    store: JobStore
    api: Callable[..., Any]
    redis: Callable[[Callable[[], Any]], Any]
    sleep: Callable[[float], None]


class ActionKind(ABC, Generic[J]):
    """One kind of job's own part."""

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
