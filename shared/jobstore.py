"""Jobs in Redis (every kind: shared/jobs.py): the job hash, the guest claim, and the status event stream.

The job store is the one writer of a job's state, and services read its hash through it (a typed
`JobRecord`, shared/jobrecord.py; only the slots' Lua looks at a state itself, to drop ended holders).
Every change of state goes through a Lua script that compares and sets, and writes the change twice,
onto the job's hash and onto the event stream (one event per change, none otherwise): a job that has
reached a final state never changes again, so whoever tries to end a job a second time (a second
runner, a callback, the reconciler) changes nothing. Ending a job also, in the same step, takes it
out of the active set, frees its guest claim and its migration slots, and wakes a worker waiting for
a slot. Starting one (`start`: queued or waiting -> running) pins its migration slots in the same
step, or does nothing if a slot has lapsed or the job may no longer start; the slots' own arithmetic
(taking, renewing, adopting) stays in services/migrator/slots.py.

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
from .jobrecord import LIVE, STARTABLE, TERMINAL, JobRecord, lua_list
from .jobs import DiskMoveJob, Job, JobState, JobStatusEvent, MigrationJob, parse_job
from .models import SCHEMA_VERSION, DiskMove, InFlightMigration
from .retention import Retention

FINAL_STATES = lua_list(TERMINAL)  # as the Lua scripts take them

# KEYS: job hash, active set, guest claim, event stream, slot wake-up list, then the job's slot sets.
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
  for i = 6, #KEYS do freed = freed + redis.call('ZREM', KEYS[i], ARGV[2]) end
  if freed > 0 then
    redis.call('LPUSH', KEYS[5], '1')
    redis.call('LTRIM', KEYS[5], 0, 63)
  end
else
  redis.call('SADD', KEYS[2], ARGV[2])
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'event', ARGV[3])
return 1
"""

# The start commit, right before the POST. KEYS: job hash, active set, event stream, then the job's slot
# scopes. ARGV: job id (the slots' holder), now, states it may start from, event JSON, stream maxlen,
# message. The job must still be startable (not cancelled or ended) and hold every slot unexpired; then
# its slots are pinned (+inf: freed only when the job ends), the job is marked running with the time of
# the POST, and the event written, in one step. Returns 1, 0 (a slot lapsed: wait again) or -1 (the job
# may not start).
_START = """
local state = redis.call('HGET', KEYS[1], 'state') or ''
local ok = false
for s in string.gmatch(ARGV[3], '[^,]+') do if s == state then ok = true end end
if not ok then return -1 end
for i = 4, #KEYS do
  local score = redis.call('ZSCORE', KEYS[i], ARGV[1])
  if not score then return 0 end
  if score ~= 'inf' and score ~= '+inf' and tonumber(score) <= tonumber(ARGV[2]) then return 0 end
end
for i = 4, #KEYS do redis.call('ZADD', KEYS[i], '+inf', ARGV[1]) end
redis.call('HSET', KEYS[1], 'state', 'running', 'posted_at', ARGV[2], 'at_running', ARGV[2], 'message', ARGV[6])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[4])
return 1
"""

# KEYS: job hash. ARGV: the state it must be in, UPID, message. The UPID of a running job's task, stored
# the moment it is known and before anything else can look; no state change, so no event.
_RECORD_UPID = """
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'upid', ARGV[2], 'message', ARGV[3])
return 1
"""

START_MESSAGE = "starting"

# KEYS: job hash. ARGV: the takeovers and handed_over fields as the caller read them, live states. A job
# lost by rq is taken over once however many reconcilers saw it lost: only the one that finds the fields
# as it read them counts the takeover (a hand-over counts none) and clears the run's leftovers.
_TAKE_OVER = """
if (redis.call('HGET', KEYS[1], 'takeovers') or '0') ~= ARGV[1] then return 0 end
if (redis.call('HGET', KEYS[1], 'handed_over') or '') ~= ARGV[2] then return 0 end
local state = redis.call('HGET', KEYS[1], 'state') or ''
local live = false
for s in string.gmatch(ARGV[3], '[^,]+') do if s == state then live = true end end
if not live then return 0 end
if ARGV[2] == '' then redis.call('HINCRBY', KEYS[1], 'takeovers', 1) end
redis.call('HDEL', KEYS[1], 'handed_over', 'interrupted')
return 1
"""


class JobStore:
    def __init__(self, redis: Redis, retention: Retention | None = None) -> None:
        self.redis = redis
        self.retention = retention or Retention()
        self._transition_script = redis.register_script(_TRANSITION)
        self._start_script = redis.register_script(_START)
        self._upid_script = redis.register_script(_RECORD_UPID)
        self._take_over_script = redis.register_script(_TAKE_OVER)

    def claim_guest(self, vmid: int, job_id: str) -> str | None:
        """Claim the guest for this job; returns the job that already holds it, if any."""
        if self.redis.set(keys.guest_job(vmid), job_id, nx=True, ex=self.retention.guest_claim_seconds):
            return None
        holder = self.redis.get(keys.guest_job(vmid))
        holder_id = holder.decode() if isinstance(holder, bytes) else holder
        if holder_id == job_id:
            return None
        return str(holder_id) if holder_id else None

    def create(self, job: Job) -> bool:
        """Store a new queued job, in one step; False when a job with this id exists already. It carries
        how long it is kept once ended, which whoever ends it applies."""
        return self._change(job, JobState.QUEUED, "", NEW, {"payload": job.model_dump_json(),
                                                             "created_at": time.time(),
                                                             "keep_s": self.retention.job_seconds})

    def load(self, job_id: str) -> JobRecord:
        """The job's record (false when the job is not stored)."""
        return JobRecord.of(job_id, self.redis.hgetall(keys.job(job_id)))

    def load_many(self, job_ids: list[str]) -> list[JobRecord]:
        """The records of these jobs, in one round trip (a false record for a job that is not stored)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(keys.job(job_id))
        return [JobRecord.of(job_id, raw) for job_id, raw in zip(job_ids, pipe.execute(), strict=True)]

    def job(self, job_id: str) -> Job | None:
        """The job itself, strictly: a payload this version cannot read raises (the runner must not guess)."""
        payload = self.load(job_id).payload
        return parse_job(payload) if payload else None

    def state(self, job_id: str) -> JobState | None:
        return self.load(job_id).state

    def cancel(self, job_id: str) -> JobState | None:
        """Cancel a job that has not started migrating; returns its state afterwards (None: no such job)."""
        job = self.job(job_id)
        if job is None:
            return None
        if self.transition(job, JobState.CANCELLED, "cancelled by the operator", only_from=STARTABLE):
            return JobState.CANCELLED
        return self.state(job_id)

    def transition(
        self,
        job: Job,
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

    def _change(self, job: Job, state: JobState, message: str, only_from: str, fields: dict[str, Any],
                upid: str | None = None, duration_s: float | None = None) -> bool:
        event = JobStatusEvent(
            job_id=job.job_id, plan_id=job.plan_id, vmid=job.vmid, action=job.action, source=job.source,
            target=job.target, state=state, message=message, upid=upid, duration_s=duration_s,
        )
        if state.terminal and job.changes_config:
            # before the end is written: whoever sees the job ended reads the guest's new config
            self.redis.hincrby(keys.GUEST_CONFIG_GENERATION, str(job.vmid), 1)
        values: dict[str, Any] = {"message": message, f"at_{state.value}": time.time(), **fields}
        flat = [str(x) for kv in values.items() for x in kv]
        job_keys = [keys.job(job.job_id), keys.ACTIVE_JOBS, keys.guest_job(job.vmid), keys.EVENT_STREAM,
                    keys.SLOTS_WAKE, *job.slot_scopes()]
        args = [state.value, job.job_id, event.model_dump_json(), self.retention.events, only_from, FINAL_STATES,
                self.retention.job_seconds, *flat]
        return bool(self._transition_script(keys=job_keys, args=args))

    def start(self, job: Job, now: float | None = None) -> int:
        """The start commit, right before the POST: the job (queued or waiting) becomes running, its slots
        pinned and its event written, in one step. 1 when it started; 0 when one of its slots has lapsed
        (nothing changed: it waits for them again); -1 when the job may no longer start (cancelled, ended)."""
        now = time.time() if now is None else now
        event = JobStatusEvent(job_id=job.job_id, plan_id=job.plan_id, vmid=job.vmid, action=job.action,
                               source=job.source, target=job.target, state=JobState.RUNNING, message=START_MESSAGE)
        job_keys = [keys.job(job.job_id), keys.ACTIVE_JOBS, keys.EVENT_STREAM, *job.slot_scopes()]
        args = [job.job_id, now, lua_list(STARTABLE), event.model_dump_json(), self.retention.events, START_MESSAGE]
        return int(self._start_script(keys=job_keys, args=args))

    def record_upid(self, job: Job, upid: str) -> bool:
        """Store the UPID of the running job's task (no state change, no event); False if the job is not running."""
        return bool(self._upid_script(keys=[keys.job(job.job_id)], args=[JobState.RUNNING.value, upid, f"task {upid}"]))

    def set_fields(self, job_id: str, **fields: Any) -> None:
        """Bookkeeping that is not a state change (attempt counters, when a POST was sent)."""
        self.redis.hset(keys.job(job_id), mapping={k: str(v) for k, v in fields.items()})

    def count(self, job_id: str, field: str) -> int:
        return int(self.redis.hincrby(keys.job(job_id), field, 1))

    def take_over(self, seen: JobRecord) -> bool:
        """Claim the running again of a job rq lost, as `seen` (read before): True for one caller only."""
        args = [seen.fields.get("takeovers", "0"), seen.fields.get("handed_over", ""), lua_list(LIVE)]
        return bool(self._take_over_script(keys=[keys.job(seen.job_id)], args=args))

    def forget_ended(self, job_id: str) -> bool:
        """Drop a leftover from the active set: a job whose hash is gone or that has ended. True if dropped."""
        if self.load(job_id).live:
            return False
        return bool(self.redis.srem(keys.ACTIVE_JOBS, job_id))

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

    def _in_flight(self, but: str) -> list[Job]:
        """The jobs in flight now (POSTed, not ended), but job `but`."""
        ids = sorted(self.active_jobs() - {but})
        # one round trip: a drain has every job of the plan active, and this runs before each POST;
        # strictly: a job in flight that this version cannot read must not go uncounted
        return [parse_job(r.payload) for r in self.load_many(ids) if r.in_flight and r.payload is not None]

    def in_flight_migrations(self, but: str = "") -> list[InFlightMigration]:
        """The migrations in flight now, but job `but`: each holds its guest's memory on both nodes until it
        ends, which the engine and the pre-flight count (pvebalance/engine/fit.py)."""
        return [InFlightMigration(job_id=j.job_id, vmid=j.vmid, source=j.source, target=j.target,
                                  mem_bytes=j.mem_bytes, online=j.online, local_disks=j.local_disks)
                for j in self._in_flight(but) if isinstance(j, MigrationJob)]

    def in_flight_disk_moves(self, but: str = "") -> list[DiskMove]:
        """The disk moves in flight now, but job `but`: each holds its disk's size on its target storage
        until it ends, which the storage planner and the move's own check count."""
        return [DiskMove(vmid=j.vmid, guest_type=j.guest_type, name=j.name, node=j.node, disk=j.disk,
                         source=j.source, target=j.target, size=j.size)
                for j in self._in_flight(but) if isinstance(j, DiskMoveJob)]

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
