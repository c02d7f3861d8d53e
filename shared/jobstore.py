"""Migration jobs in Redis: the job hash, the guest claim, and the status event stream.

The planner creates jobs here and the migrator moves them through their states; both write every
state change twice, onto the job's hash and onto the event stream, in one transaction.
"""

from __future__ import annotations

import time
from typing import Any

from redis import Redis

from . import keys
from .models import JobState, JobStatusEvent, MigrationJob

GUEST_CLAIM_TTL = 24 * 3600  # a guest's claim outlives any sane migration, and cannot leak forever


class JobStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def claim_guest(self, vmid: int, job_id: str) -> str | None:
        """Claim the guest for this job; returns the job that already holds it, if any."""
        if self.redis.set(keys.guest_job(vmid), job_id, nx=True, ex=GUEST_CLAIM_TTL):
            return None
        holder = self.redis.get(keys.guest_job(vmid))
        holder_id = holder.decode() if isinstance(holder, bytes) else holder
        if holder_id == job_id:
            return None
        return str(holder_id) if holder_id else None

    def create(self, job: MigrationJob) -> bool:
        """Store a new queued job; False when a job with this id exists already."""
        created = self.redis.hsetnx(keys.job(job.job_id), "payload", job.model_dump_json())
        if not created:
            return False
        self.transition(job, JobState.QUEUED)
        return True

    def load(self, job_id: str) -> dict[str, str]:
        raw = self.redis.hgetall(keys.job(job_id))
        return {_text(k): _text(v) for k, v in raw.items()}

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
        with self.redis.pipeline() as pipe:
            pipe.watch(keys.job(job_id))
            state = self.state(job_id)
            if state not in (JobState.QUEUED, JobState.WAITING):
                pipe.unwatch()
                return state
            pipe.multi()
            self._transition(pipe, job, JobState.CANCELLED, "cancelled by the operator", None, None)
            pipe.execute()
        return JobState.CANCELLED

    def set_upid(self, job_id: str, upid: str) -> None:
        self.redis.hset(keys.job(job_id), "upid", upid)

    def transition(
        self,
        job: MigrationJob,
        state: JobState,
        message: str = "",
        upid: str | None = None,
        duration_s: float | None = None,
    ) -> JobStatusEvent:
        pipe = self.redis.pipeline(transaction=True)
        event = self._transition(pipe, job, state, message, upid, duration_s)
        pipe.execute()
        return event

    def _transition(self, pipe: Any, job: MigrationJob, state: JobState, message: str, upid: str | None,
                    duration_s: float | None) -> JobStatusEvent:
        event = JobStatusEvent(
            job_id=job.job_id, plan_id=job.plan_id, vmid=job.vmid, source=job.source, target=job.target,
            state=state, message=message, upid=upid, duration_s=duration_s,
        )
        fields: dict[str, Any] = {"state": state.value, "message": message, f"at_{state.value}": time.time()}
        if upid:
            fields["upid"] = upid
        if duration_s is not None:
            fields["duration_s"] = duration_s
        pipe.hset(keys.job(job.job_id), mapping=fields)
        if state.terminal:
            pipe.srem(keys.ACTIVE_JOBS, job.job_id)
            pipe.eval(_RELEASE_CLAIM, 1, keys.guest_job(job.vmid), job.job_id)
        else:
            pipe.sadd(keys.ACTIVE_JOBS, job.job_id)
        pipe.xadd(keys.EVENT_STREAM, {"event": event.model_dump_json()},
                  maxlen=keys.EVENT_STREAM_MAXLEN, approximate=True)
        return event

    def start_cooldown(self, vmid: int, seconds: float) -> None:
        self.redis.zadd(keys.COOLDOWN, {str(vmid): time.time() + seconds})

    def cooling_down(self) -> frozenset[int]:
        now = time.time()
        self.redis.zremrangebyscore(keys.COOLDOWN, "-inf", now)
        return frozenset(int(_text(v)) for v in self.redis.zrangebyscore(keys.COOLDOWN, now, "+inf"))

    def active_jobs(self) -> set[str]:
        return {_text(j) for j in self.redis.smembers(keys.ACTIVE_JOBS)}

    def events(self, after: str = "0-0", count: int = 1000) -> list[tuple[str, JobStatusEvent]]:
        out = []
        for entry_id, fields in self.redis.xrange(keys.EVENT_STREAM, min=f"({after}" if after != "0-0" else "-",
                                                  count=count):
            raw = fields.get(b"event") or fields.get("event")
            out.append((_text(entry_id), JobStatusEvent.model_validate_json(raw)))
        return out


# Drop the guest's claim only if this job still holds it.
_RELEASE_CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
