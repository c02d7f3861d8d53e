"""The kinds of action a plan holds, one module each, registered below by one line each.

A kind's module defines its action (what the plan says), its job (what the planner queues and the
migrator carries out) and its executor (the migrator's part only that kind knows): base.py says what
each must give. Everything else follows from the list below: the plan's `actions` union
(shared/models.py), the jobs' union and parser (shared/jobs.py), the runner's executors
(services/migrator/runner.py), and every reader that lists jobs.

The unions are built from `KINDS` when shared/models.py and shared/jobs.py are first imported; nothing
here imports them.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from . import migrate, move_disk
from .base import ActionBase, Cleared, Context, Deferred, Executor, Failed, Gone, Job, Kind, Skip

KINDS: tuple[Kind, ...] = (
    migrate.KIND,
    move_disk.KIND,
)


def kind_named(name: str) -> Kind:
    """The registered kind of that name (an action's `kind`, a job's `action`); KeyError if there is none."""
    for kind in KINDS:
        if kind.name == name:
            return kind
    raise KeyError(name)


def _union(members: list[type[Any]], discriminator: str) -> Any:
    # A discriminated union needs two members at least: a single kind is its own model.
    if len(members) == 1:
        return members[0]
    return Annotated[Union[tuple(members)], Field(discriminator=discriminator)]  # noqa: UP007 (built at run time)


def action_union() -> Any:
    """Every registered kind's action model, as one pydantic type discriminated on `kind`."""
    return _union([k.action for k in KINDS], "kind")


def job_union() -> Any:
    """Every registered kind's job model, as one pydantic type discriminated on the job's `kind`."""
    return _union([k.job for k in KINDS], "kind")


__all__ = ["KINDS", "ActionBase", "Cleared", "Context", "Deferred", "Executor", "Failed", "Gone", "Job", "Kind",
           "Skip", "action_union", "job_union", "kind_named"]
