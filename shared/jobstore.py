"""Migration jobs in Redis: the job hash, the guest claim, and the status event stream.

The job store is the one owner of a job's state. Every change goes through one Lua script that
compares and sets: a job that has reached a final state never changes again, so whoever tries to
end a job a second time (a second runner, a callback, the reconciler) changes nothing. Ending a
job also, in the same step, takes it out of the active set, frees its guest claim and its
migration slots, and wakes a worker waiting for a slot. Each change is written twice, onto the
job's hash and onto the event stream.

Retention (shared/retention.py): a job's hash carries no TTL while the job is active and expires
`retention.jobs_days` after it ended (the figure the planner stored on the job when it made it, so
whoever ends the job applies the same one); the event stream keeps the newest `retention.events`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from redis import Redis

from . import keys
from .models import SCHEMA_VERSION, InFlightMigration, JobState, JobStatusEvent, MigrationJob
from .retention import Retention

TERMINAL = ",".join(s.value for s in JobState if s.terminal)

# KEYS: job hash, active set, guest claim, event stream, 3 slot sets, slot wake-up list.
# ARGV: new state, job id, event JSON, stream maxlen, states it may come from ('' = any that is not
#       final; NEW = only a job not stored yet: its creation), terminal states, seconds an ended job
#       is kept unless the job says (its keep_s field), then field/value pairs for the hash.
# Returns 1 when the change was made, 0 when the job's current state forbade it.
NEW = "!new"
_TRANSITION = """
local unpack = unpack or table.unpack
local current = redis.call('HGET', KEYS[1], 'state') or ''
for s in string.gmatch(ARGV[6], '[^,]+') do
  if s == current then return 0 end
end
if ARGV[5] == '!new' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
elseif ARGV[5] ~= '' then
  local allowed = false
  for s in string.gmatch(ARGV[5], '[^,]+') do
    if s == current then allowed = true end
  end
  if not allowed then return 0 end
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], unpack(ARGV, 8))
local final = false
for s in string.gmatch(ARGV[6], '[^,]+') do
  if s == ARGV[1] then final = true end
end
if final then
  redis.call('EXPIRE', KEYS[1], tonumber(redis.call('HGET', KEYS[1], 'keep_s') or ARGV[7]))
  redis.call('SREM', KEYS[2], ARGV[2])
  if redis.call('GET', KEYS[3]) == ARGV[2] then redis.call('DEL', KEYS[3]) end
  local freed = 0
  for i = 5, 7 do freed = freed + redis.call('ZREM', KEYS[i], ARGV[2]) end
  if freed > 0 then
    redis.call('LPUSH', KEYS[8], '1')
    redis.call('LTRIM', KEYS[8], 0, 63)
  end
else
  redis.call('SADD', KEYS[2], ARGV[2])
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'event', ARGV[3])
return 1
"""


class JobStore:
    def __init__(self, redis: Redis, retention: Retention | None = None) -> None:
        self.redis = redis
        self.retention = retention or Retention()
        self._transition_script = redis.register_script(_TRANSITION)

    def claim_guest(self, vmid: int, job_id: str) -> str | None:
        """Claim the guest for this job; returns the job that already holds it, if any."""
        if self.redis.set(keys.guest_job(vmid), job_id, nx=True, ex=self.retention.guest_claim_seconds):
            return None
        holder = self.redis.get(keys.guest_job(vmid))
        holder_id = holder.decode() if isinstance(holder, bytes) else holder
        if holder_id == job_id:
            return None
        return str(holder_id) if holder_id else None

    def create(self, job: MigrationJob) -> bool:
        """Store a new queued job, in one step; False when a job with this id exists already. It carries
        how long it is kept once ended, which whoever ends it applies."""
        return self._change(job, JobState.QUEUED, "", NEW, {"payload": job.model_dump_json(),
                                                             "created_at": time.time(),
                                                             "keep_s": self.retention.job_seconds})

    def load(self, job_id: str) -> dict[str, str]:
        raw = self.redis.hgetall(keys.job(job_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    def load_many(self, job_ids: list[str]) -> list[dict[str, str]]:
        """The records of these jobs, in one round trip ({} for a job that is not stored)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(keys.job(job_id))
        return [{_text(k): _text(v) for k, v in raw.items()} for raw in pipe.execute()]

    def job(self, job_id: str) -> MigrationJob | None:
        payload = self.load(job_id).get("payload")
        return MigrationJob.model_validate_json(payload) if payload else None

    def state(self, job_id: str) -> JobState | None:
        value = self.load(job_id).get("state")
        return JobState(value) if value else None

    def cancel(self, job_id: str) -> JobState | None:
        """Cancel a job that has not started migrating; returns its state afterwards (None: no such job)."""
        job = self.job(job_id)
        if job is None:
            return None
        if self.transition(job, JobState.CANCELLED, "cancelled by the operator",
                           only_from=(JobState.QUEUED, JobState.WAITING)):
            return JobState.CANCELLED
        return self.state(job_id)

    def transition(
        self,
        job: MigrationJob,
        state: JobState,
        message: str = "",
        upid: str | None = None,
        duration_s: float | None = None,
        only_from: tuple[JobState, ...] = (),
        **fields: Any,
    ) -> bool:
        """Move the job to `state` unless it has ended (or is not in `only_from`); True if it moved.

        A final state also frees the guest claim and the job's slots and leaves the active set.
        """
        values: dict[str, Any] = dict(fields)
        if upid:
            values["upid"] = upid
        if duration_s is not None:
            values["duration_s"] = duration_s
        return self._change(job, state, message, ",".join(s.value for s in only_from), values, upid, duration_s)

    def _change(self, job: MigrationJob, state: JobState, message: str, only_from: str, fields: dict[str, Any],
                upid: str | None = None, duration_s: float | None = None) -> bool:
        event = JobStatusEvent(
            job_id=job.job_id, plan_id=job.plan_id, vmid=job.vmid, source=job.source, target=job.target,
            state=state, message=message, upid=upid, duration_s=duration_s,
        )
        values: dict[str, Any] = {"message": message, f"at_{state.value}": time.time(), **fields}
        flat = [str(x) for kv in values.items() for x in kv]
        job_keys = [keys.job(job.job_id), keys.ACTIVE_JOBS, keys.guest_job(job.vmid), keys.EVENT_STREAM,
                    *keys.slot_scopes(job.source, job.target), keys.SLOTS_WAKE]
        args = [state.value, job.job_id, event.model_dump_json(), self.retention.events, only_from, TERMINAL,
                self.retention.job_seconds, *flat]
        return bool(self._transition_script(keys=job_keys, args=args))

    def set_fields(self, job_id: str, **fields: Any) -> None:
        """Bookkeeping that is not a state change (attempt counters, when a POST was sent)."""
        self.redis.hset(keys.job(job_id), mapping={k: str(v) for k, v in fields.items()})

    def count(self, job_id: str, field: str) -> int:
        return int(self.redis.hincrby(keys.job(job_id), field, 1))

    def start_cooldown(self, vmid: int, seconds: float) -> None:
        self.redis.zadd(keys.COOLDOWN, {str(vmid): time.time() + seconds})

    def cooling_down(self) -> frozenset[int]:
        now = time.time()
        self.redis.zremrangebyscore(keys.COOLDOWN, "-inf", now)
        return frozenset(int(_text(v)) for v in self.redis.zrangebyscore(keys.COOLDOWN, now, "+inf"))

    def finished_since(self, since: float) -> list[JobStatusEvent]:
        """The migrations that succeeded since `since` (epoch seconds), oldest first: the guests'
        recent moves, for the adaptive cooldown. The event stream's entry ids are its times."""
        return [e for _, e in self.events(after=f"{int(since * 1000)}-0", count=self.retention.events)
                if e.state is JobState.SUCCEEDED]

    def last_change_at(self) -> float | None:
        """When a job last changed state (epoch seconds; None before any job): with no job active, when the
        last one ended. The event stream's entry ids are its times."""
        last = self.redis.xrevrange(keys.EVENT_STREAM, count=1)
        return int(_text(last[0][0]).split("-")[0]) / 1000 if last else None

    def active_jobs(self) -> set[str]:
        return {_text(j) for j in self.redis.smembers(keys.ACTIVE_JOBS)}

    def in_flight_migrations(self, but: str = "") -> list[InFlightMigration]:
        """The migrations in flight now (POSTed, not ended), but job `but`: each holds its guest's memory
        on both nodes until it ends, which the engine and the pre-flight count (pvebalance/engine/fit.py)."""
        out = []
        ids = sorted(self.active_jobs() - {but})
        # one round trip: a drain has every job of the plan active, and this runs before each POST
        for job_id, record in zip(ids, self.load_many(ids), strict=True):
            if not in_flight(record) or not record.get("payload"):
                continue
            job = MigrationJob.model_validate_json(record["payload"])
            out.append(InFlightMigration(job_id=job_id, vmid=job.vmid, source=job.source, target=job.target,
                                         mem_bytes=job.mem_bytes, online=job.online, local_disks=job.local_disks))
        return out

    def events(self, after: str = "0-0", count: int = 1000,
               on_skip: Callable[[str, str], None] | None = None) -> list[tuple[str, JobStatusEvent]]:
        """The status events after `after`. One this version cannot read (a newer writer's schema
        version, say: the reader refuses what it does not know, by design) is skipped, and `on_skip`
        gets its entry id and why."""
        out = []
        for raw_id, fields in self.redis.xrange(keys.EVENT_STREAM, min=f"({after}" if after != "0-0" else "-",
                                                count=count):
            entry_id = _text(raw_id)
            raw = fields.get(b"event") or fields.get("event")
            try:
                out.append((entry_id, JobStatusEvent.model_validate_json(raw or b"")))
            except ValidationError:
                if on_skip is not None:
                    on_skip(entry_id, unreadable_reason(raw))
        return out


def in_flight(record: dict[str, str]) -> bool:
    """A migrate POST was sent (or may have been): the job follows a Proxmox task, never POSTs blindly."""
    return bool(record.get("upid") or record.get("posted_at"))


def unreadable_reason(raw: Any) -> str:
    """Why a status event cannot be read, in a few words."""
    if not raw:
        return "it has no 'event' field"
    try:
        doc = json.loads(raw)
    except ValueError:
        return "not JSON"
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if isinstance(doc, dict) and version != SCHEMA_VERSION:
        return f"schema_version {version!r} is not one this version reads ({SCHEMA_VERSION})"
    try:
        JobStatusEvent.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        return f"{'.'.join(str(p) for p in first['loc']) or 'event'}: {first['msg']}"
    return "unreadable"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
