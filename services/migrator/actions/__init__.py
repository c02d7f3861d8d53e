"""The kinds of job the migrator carries out, one module each (base.py says what a kind does).

A new kind: its job in shared/jobs.py, its module here, and one line below."""

from __future__ import annotations

from .base import ActionKind, Cleared, Context
from .migrate import Migrate
from .move_disk import MoveDisk

KINDS: dict[str, type[ActionKind]] = {  # type: ignore[type-arg]
    "migrate": Migrate,
    "move-disk": MoveDisk,
}

__all__ = ["KINDS", "ActionKind", "Cleared", "Context"]
