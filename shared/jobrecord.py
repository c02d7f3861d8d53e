"""A job's record as stored in its Redis hash, typed; and the job states, grouped once.

The hash is written only by the job store (shared/jobstore.py); every reader gets a `JobRecord`
from `JobStore.load`/`load_many`. Reading is lenient, as every stored message is (`parse_known`):
a record written by an older or newer version, with a field this one does not know or cannot read,
still loads, its unreadable parts `None`, so a reader never crashes on a job it only lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from .jobs import Job, JobState, parse_known_job

# The states, grouped once: every reader and every Lua script of the job store use these.
TERMINAL: frozenset[JobState] = frozenset(s for s in JobState if s.terminal)
LIVE: frozenset[JobState] = frozenset(JobState) - TERMINAL
# A job may start migrating (the start commit) only from these; a cancel is allowed from them too.
STARTABLE: tuple[JobState, ...] = (JobState.QUEUED, JobState.WAITING)


def lua_list(states: Iterable[JobState]) -> str:
    """States as the comma-separated argument the job store's and the slots' Lua scripts take."""
    return ",".join(sorted(s.value for s in states))


@dataclass(frozen=True)
class JobRecord:
    """One job's hash. `fields` keeps the raw text (what `pvebalance job ID` prints)."""

    job_id: str
    fields: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, job_id: str, raw: Mapping[bytes | str, bytes | str]) -> JobRecord:
        return cls(job_id, {_text(k): _text(v) for k, v in raw.items()})

    def __bool__(self) -> bool:
        """False for a job that is not stored (expired, or never made)."""
        return bool(self.fields)

    # --- what the job is and where it stands ---------------------------------------------------------

    @cached_property
    def job(self) -> Job | None:
        """The job itself; None when absent or written in a schema this version does not read."""
        return parse_known_job(self.fields.get("payload") or None)

    @property
    def payload(self) -> str | None:
        return self.fields.get("payload") or None

    @property
    def state(self) -> JobState | None:
        """None when the job is not stored, or its state is one this version does not know."""
        try:
            return JobState(self.fields["state"])
        except (KeyError, ValueError):
            return None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def live(self) -> bool:
        return self.state in LIVE

    @property
    def message(self) -> str:
        return self.fields.get("message", "")

    @property
    def upid(self) -> str | None:
        return self.fields.get("upid") or None

    @property
    def in_flight(self) -> bool:
        """A migrate POST was sent (or may have been): the job follows a Proxmox task, never POSTs blindly."""
        return bool(self.upid or self.fields.get("posted_at"))

    # --- times (epoch seconds) ------------------------------------------------------------------------

    @property
    def created_at(self) -> float | None:
        return _number(self.fields.get("created_at"))

    @property
    def posted_at(self) -> float | None:
        """When the start commit let the POST go (set with state running)."""
        return _number(self.fields.get("posted_at"))

    @property
    def duration_s(self) -> float | None:
        return _number(self.fields.get("duration_s"))

    def at(self, state: JobState) -> float | None:
        """When the job last entered `state`."""
        return _number(self.fields.get(f"at_{state.value}"))

    @property
    def updated_at(self) -> float | None:
        """When the job last changed state."""
        times = [t for k, v in self.fields.items() if k.startswith("at_") and (t := _number(v)) is not None]
        return max(times, default=None)

    # --- the runner's and the reconciler's bookkeeping ------------------------------------------------

    @property
    def known_tasks(self) -> set[str] | None:
        """The guest's migration tasks listed before this job's POST (None: the list was not taken)."""
        if "known_tasks" not in self.fields:
            return None
        return {u for u in self.fields["known_tasks"].split(",") if u}

    @property
    def takeovers(self) -> int:
        return int(_number(self.fields.get("takeovers")) or 0)

    @property
    def handed_over(self) -> bool:
        return bool(self.fields.get("handed_over"))

    @property
    def interrupted(self) -> str:
        return self.fields.get("interrupted", "")


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
