"""Job slots held in Redis: at most N jobs cluster-wide, M migrations per source node and K per target
node, and S disk moves per storage.

Each scope is a sorted set of holders (job ids) scored by their expiry; a job names its scopes
(shared/jobs.py `slot_scopes`), and each scope's limit follows from its family (`Slots.limit`). One
Lua script takes a slot in every scope of a job at once or in none, so two workers can never both squeeze past a
limit. Before its POST a job renews its slots, and loses them when they expire if its worker dies;
from the POST on they are pinned and freed only when the job ends, so a migration Proxmox is running
always counts. Pinning them is part of the job's start, which the job store writes (JobStore.start:
the slots pinned, the job running and its event, in one step); this module never writes a job's state.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue

from pvebalance.shared import keys
from pvebalance.shared.config import MigratorSettings
from pvebalance.shared.jobs import Job
from pvebalance.shared.jobstore import FINAL_STATES, JobStore
from pvebalance.shared.logging import get_logger
from pvebalance.shared.redisconn import REDIS_AWAY, Outage

log = get_logger("pvebalance.migrator.slots")

# A holder's score is when its slot expires, or +inf once its migration was POSTed: from then on the
# slot is held until the job ends (the job store's final transition removes it), whatever happens to
# the worker, so a migration that Proxmox is running always counts against the limits.

# KEYS: the scopes' sorted sets. ARGV: holder, now, expiry, job key prefix, final states, then one
# limit per key. Drops expired holders (and pinned ones whose job has ended or vanished), then takes
# a slot in every scope, or in none if one is full.
_ACQUIRE = """
local final = {}
for s in string.gmatch(ARGV[5], '[^,]+') do final[s] = true end
local function pinned(score) return score == 'inf' or score == '+inf' end
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[2])
  for _, holder in ipairs(redis.call('ZRANGEBYSCORE', key, '+inf', '+inf')) do
    local state = redis.call('HGET', ARGV[4] .. holder, 'state')
    if not state or final[state] then redis.call('ZREM', key, holder) end
  end
  if not redis.call('ZSCORE', key, ARGV[1]) and redis.call('ZCARD', key) >= tonumber(ARGV[5 + i]) then
    return 0
  end
end
for _, key in ipairs(KEYS) do
  if not pinned(redis.call('ZSCORE', key, ARGV[1])) then redis.call('ZADD', key, ARGV[3], ARGV[1]) end
end
return 1
"""

# KEYS: the scopes. ARGV: holder, new expiry. Extends only unpinned slots the holder still has.
_RENEW = """
local held = 0
for _, key in ipairs(KEYS) do
  local score = redis.call('ZSCORE', key, ARGV[1])
  if score then
    if score ~= 'inf' and score ~= '+inf' then redis.call('ZADD', key, 'XX', ARGV[2], ARGV[1]) end
    held = held + 1
  end
end
return held
"""

# KEYS: the scopes, then the job hash. ARGV: holder, final states. A job resumed after its POST takes
# its slots back, pinned, whatever the limits say: its migration is running (or may be) and counts.
_ADOPT = """
local state = redis.call('HGET', KEYS[#KEYS], 'state')
if not state then return 0 end
for s in string.gmatch(ARGV[2], '[^,]+') do if s == state then return 0 end end
for i = 1, #KEYS - 1 do redis.call('ZADD', KEYS[i], '+inf', ARGV[1]) end
return 1
"""


# How many jobs at the head of the queue a waiting runner looks at for a job in flight to be resumed.
RESUMED_LOOKS = 8


class SlotTimeout(Exception):
    pass


class SlotCancelled(Exception):
    """The job was cancelled (or ended) while it waited."""


class SlotYield(Exception):
    """A job in flight was queued again to be resumed and needs a worker: this waiter gives its up."""


@dataclass(frozen=True)
class SlotRequest:
    holder: str  # the job id: a job, not a worker, holds slots
    scopes: tuple[str, ...]  # the slot sets (shared/keys.py)

    @classmethod
    def of(cls, job: Job) -> SlotRequest:
        return cls(job.job_id, tuple(job.slot_scopes()))

    @classmethod
    def between(cls, holder: str, source: str, target: str) -> SlotRequest:
        """A migration's: cluster-wide, its source node's, its target node's."""
        return cls(holder, tuple(keys.slot_scopes(source, target)))


class Slots:
    def __init__(self, redis: Redis, settings: MigratorSettings, store: JobStore | None = None,
                 per_storage: int = 1) -> None:
        self.redis = redis
        self.settings = settings
        self.per_storage = per_storage  # storage_balancing.max_parallel_per_storage
        self.store = store or JobStore(redis)
        self.queue_key = Queue(keys.MIGRATION_QUEUE, connection=redis).key
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._adopt = redis.register_script(_ADOPT)

    def limit(self, scope: str) -> int:
        """How many may hold a place in a slot set at once, by its family."""
        s = self.settings
        if scope == keys.SLOTS_CLUSTER:
            return s.max_parallel_cluster
        for family, limit in ((keys.slots_source(""), s.max_parallel_per_source),
                              (keys.slots_target(""), s.max_parallel_per_target),
                              (keys.slots_storage(""), self.per_storage)):
            if scope.startswith(family):
                return limit
        raise ValueError(f"no limit for slot set {scope}")

    def try_acquire(self, req: SlotRequest) -> bool:
        now = time.time()
        args = [req.holder, now, now + self.settings.slot_ttl, keys.job(""), FINAL_STATES,
                *(self.limit(s) for s in req.scopes)]
        return bool(self._acquire(keys=list(req.scopes), args=args))

    def renew(self, req: SlotRequest) -> int:
        return int(self._renew(keys=list(req.scopes), args=[req.holder, time.time() + self.settings.slot_ttl]))

    def commit(self, req: SlotRequest, job: Job) -> int:
        """Start the job (JobStore.start: its slots pinned, the job running, its event): 1, 0 (a slot expired)
        or -1 (the job may not start)."""
        assert req == SlotRequest.of(job), "the job's own slots"
        return self.store.start(job)

    def adopt(self, req: SlotRequest) -> bool:
        """A resumed in-flight job takes its slots back, pinned; False if the job has ended meanwhile."""
        scopes = [*req.scopes, keys.job(req.holder)]
        return bool(self._adopt(keys=scopes, args=[req.holder, FINAL_STATES]))

    def resumed_job_waits(self) -> bool:
        """A job in flight waits in rq's queue for a worker to resume it. Jobs run again go to the front of
        the queue, so its head tells; a job in flight there may hold the slots its waiters wait for."""
        head = [_text(j) for j in self.redis.lrange(self.queue_key, 0, RESUMED_LOOKS - 1)]
        return any(r.in_flight and r.live for r in self.store.load_many(head)) if head else False

    def release(self, req: SlotRequest) -> None:
        """Give back slots that were never pinned (the job stops before its POST without ending)."""
        pipe = self.redis.pipeline()
        for scope in req.scopes:
            pipe.zrem(scope, req.holder)
        # wake one waiting worker now instead of at the end of its back-off
        pipe.lpush(keys.SLOTS_WAKE, "1")
        pipe.ltrim(keys.SLOTS_WAKE, 0, 63)
        pipe.execute()

    def wait(self, req: SlotRequest, on_wait: Callable[[], object] | None = None,
             cancelled: Callable[[], bool] | None = None, waiting_since: float | None = None) -> None:
        """Block (sleeping, not spinning) until every slot is taken; SlotTimeout once `slot_wait_timeout`
        has passed since `waiting_since` (the job's first wait); SlotYield when a job in flight waits for
        a worker to resume it (it may hold the very slots this one waits for: with every worker waiting,
        nobody would ever resume it)."""
        deadline = (waiting_since or time.time()) + self.settings.slot_wait_timeout
        delay = 0.1
        outage = Outage(log, "Redis", "waiting for a migration slot")
        while True:
            try:
                if self.try_acquire(req):
                    outage.ok()
                    return
                if self.resumed_job_waits():
                    raise SlotYield()
                if cancelled is not None and cancelled():
                    raise SlotCancelled()
                if time.time() > deadline:
                    raise SlotTimeout(f"no migration slot free within {self.settings.slot_wait_timeout:.0f} s")
                if on_wait is not None:
                    on_wait()
                    on_wait = None
                # Sleep until a slot is released (BLPOP on the wake-up list) or the back-off ends.
                self.redis.blpop([keys.SLOTS_WAKE], timeout=max(delay * (0.5 + random.random()), 0.05))
                outage.ok()
            except REDIS_AWAY as exc:  # a Redis blip must not kill a run that has not started anything
                outage.failed(exc)
                if time.time() > deadline:
                    raise
                time.sleep(min(delay * 2, 2.0))
            delay = min(delay * 1.5, 2.0)

    @contextmanager
    def held(self, req: SlotRequest) -> Iterator[Callable[[Job], int]]:
        """Keep slots already taken alive for the body (renewed in the background, riding out Redis
        blips); the body gets `commit` (the job's start). Slots not pinned by it are given back on every exit."""
        stop = threading.Event()
        committed = False

        def renew() -> None:
            outage = Outage(log, "Redis", "slot renewal")
            while not stop.wait(self.settings.slot_ttl / 4):
                try:
                    self.renew(req)
                    outage.ok()
                except RedisError as exc:
                    outage.failed(exc)

        def commit(job: Job) -> int:
            nonlocal committed
            result = self.commit(req, job)
            committed = result == 1
            return result

        renewer = threading.Thread(target=renew, name="slot-renewer", daemon=True)
        renewer.start()
        try:
            yield commit
        finally:
            stop.set()
            if not committed:
                try:
                    self.release(req)
                except RedisError as exc:  # they expire by themselves
                    log.warning("could not give back the migration slots; they expire", error=str(exc))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
