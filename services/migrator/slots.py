"""Job slots held in Redis: at most N jobs cluster-wide, M migrations per source node and K per target
node, and S disk moves per storage.

Each scope is a sorted set of holders (job ids) scored by their expiry; a job names its scopes
(shared/jobs.py `slot_scopes`), and each scope's limit follows from its family (`Slots.limit`). One
Lua script takes a slot in every scope of a job at once or in none, so two workers can never both
squeeze past a limit, and it serves the jobs waiting for slots in queue order (below). Before its
POST a job renews its slots, and loses them when they expire if its worker dies; from the POST on
they are pinned and freed only when the job ends, so a migration Proxmox is running always counts.
Pinning them is part of the job's start, which the job store writes (JobStore.start: the slots
pinned, the job running and its event, in one step); this module never writes a job's state.
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
#
# Jobs waiting for slots take them in queue order (their `place`: the plan's creation time, then the
# action's index), as the plan's expected time assumes (engine/timing.py `finish_times`): when slots
# free, the waiting jobs are served first in line first, each taking its slots if all of them have
# room after those ahead of it took theirs, so a job blocked on a full scope holds back nobody behind
# it (no head-of-line blocking), and one that could start holds back those behind it that need the same
# room. A waiting job keeps its place in keys.SLOTS_WAITING while it looks again within WAITER_TTL; a
# dead worker's job stops counting then, a cancelled or ended one at once.

# Shared by the scripts below: wake one waiting job (a push on its own list, which it blocks on), or all of
# them. KEYS[1] is the waiting hash; `prefix` the waiters' lists' and `ms` how long a push is kept.
_WAKE = """
local function waker(prefix, ms)
  local function wake(who)
    local key = prefix .. who
    redis.call('LPUSH', key, '1')
    redis.call('LTRIM', key, 0, 0)
    redis.call('PEXPIRE', key, ms)
  end
  local function wake_all(except)
    for _, who in ipairs(redis.call('HKEYS', KEYS[1])) do
      if who ~= except then wake(who) end
    end
  end
  return wake, wake_all
end
"""

# KEYS: the waiting hash, the shared wake-up list, the holder's own list, then the scopes' sorted sets.
# ARGV: 1 holder, 2 now, 3 slot expiry, 4 job key prefix, 5 final states, 6 waiters' list prefix, 7 a
# push's life (ms), 8 '1' to keep its place in line when refused, 9 '1' when woken through the shared
# list (it wakes the others: one push wakes one waiter), 10-11 its place, 12 when its place lapses, then
# one limit per scope. Drops expired holders (and pinned ones whose job has ended or vanished) and lapsed
# or ended waiters; grants the waiting jobs ahead of it their slots on paper, in queue order; then takes a
# slot in every scope if each still has room, or in none. Refused, it keeps (or refreshes) its place when
# asked to, and wakes the jobs ahead of it that could start now, to go first.
_ACQUIRE = _WAKE + """
local wake, wake_all = waker(ARGV[6], ARGV[7])
local final = {}
for s in string.gmatch(ARGV[5], '[^,]+') do final[s] = true end
local holder, now, jobs = ARGV[1], tonumber(ARGV[2]), ARGV[4]
local function pinned(score) return score == 'inf' or score == '+inf' end
local taken = {}  -- holders per scope, then with the slots granted on paper to the jobs ahead
local function count(key)
  if taken[key] == nil then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[2])
    for _, h in ipairs(redis.call('ZRANGEBYSCORE', key, '+inf', '+inf')) do
      local state = redis.call('HGET', jobs .. h, 'state')
      if not state or final[state] then redis.call('ZREM', key, h) end
    end
    taken[key] = redis.call('ZCARD', key)
  end
  return taken[key]
end
local function fits(who, scopes)
  for _, s in ipairs(scopes) do
    if count(s[1]) >= s[2] and not redis.call('ZSCORE', s[1], who) then return false end
  end
  return true
end
if ARGV[9] == '1' then
  redis.call('DEL', KEYS[2])
  wake_all(holder)
end
local waiting, dropped = {}, false
local raw = redis.call('HGETALL', KEYS[1])
for i = 1, #raw, 2 do
  local who, f = raw[i], {}
  for w in string.gmatch(raw[i + 1], '%S+') do f[#f + 1] = w end
  local state = redis.call('HGET', jobs .. who, 'state')
  if tonumber(f[1]) <= now or (state and final[state]) then
    redis.call('HDEL', KEYS[1], who)
    dropped = true
  elseif who ~= holder then
    local scopes = {}
    for j = 4, #f - 1, 2 do scopes[#scopes + 1] = {f[j + 1], tonumber(f[j])} end
    waiting[#waiting + 1] = {who, tonumber(f[2]), tonumber(f[3]), scopes}
  end
end
local function ahead(a, b)
  if a[2] ~= b[2] then return a[2] < b[2] end
  if a[3] ~= b[3] then return a[3] < b[3] end
  return a[1] < b[1]
end
table.sort(waiting, ahead)
local me, mine, first = {holder, tonumber(ARGV[10]), tonumber(ARGV[11])}, {}, {}
for i = 4, #KEYS do mine[#mine + 1] = {KEYS[i], tonumber(ARGV[9 + i])} end
for _, w in ipairs(waiting) do
  if not ahead(w, me) then break end
  if fits(w[1], w[4]) then
    for _, s in ipairs(w[4]) do
      if not redis.call('ZSCORE', s[1], w[1]) then taken[s[1]] = count(s[1]) + 1 end
    end
    first[#first + 1] = w[1]
  end
end
if dropped then wake_all(holder) end
if fits(holder, mine) then
  for _, s in ipairs(mine) do
    if not pinned(redis.call('ZSCORE', s[1], holder)) then redis.call('ZADD', s[1], ARGV[3], holder) end
  end
  redis.call('HDEL', KEYS[1], holder)
  redis.call('DEL', KEYS[3])
  return 1
end
if ARGV[8] == '1' then
  local entry = {ARGV[12], ARGV[10], ARGV[11]}
  for _, s in ipairs(mine) do entry[#entry + 1] = s[2]; entry[#entry + 1] = s[1] end
  redis.call('HSET', KEYS[1], holder, table.concat(entry, ' '))
end
for _, who in ipairs(first) do wake(who) end
return 0
"""

# KEYS: the waiting hash, the holder's own list. ARGV: holder, the waiters' lists' prefix, a push's life
# (ms). A job that stops waiting without its slots leaves the line, and those behind it look again.
_LEAVE = _WAKE + """
local wake, wake_all = waker(ARGV[2], ARGV[3])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
wake_all(ARGV[1])
return 1
"""

# KEYS: the waiting hash, then the scopes. ARGV: as _LEAVE's. Gives back unpinned slots and wakes every
# waiting job (the first in line among them takes them).
_RELEASE = _WAKE + """
local wake, wake_all = waker(ARGV[2], ARGV[3])
for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
wake_all(ARGV[1])
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
# Seconds a waiting job keeps its place in line without looking again: a waiter looks at least every
# 3 s (its back-off), so only a dead worker's job lapses, and stops holding back the jobs behind it.
WAITER_TTL = 10.0
_PUSH_MS = int(WAITER_TTL * 1000)  # how long a wake-up push for a waiting job is kept


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
    place: tuple[float, int] = (0.0, 0)  # its place in the queue (Job.place): waiting jobs are served in its order

    @classmethod
    def of(cls, job: Job) -> SlotRequest:
        return cls(job.job_id, tuple(job.slot_scopes()), job.place)

    @classmethod
    def between(cls, holder: str, source: str, target: str, place: tuple[float, int] = (0.0, 0)) -> SlotRequest:
        """A migration's: cluster-wide, its source node's, its target node's."""
        return cls(holder, tuple(keys.slot_scopes(source, target)), place)


class Slots:
    def __init__(self, redis: Redis, settings: MigratorSettings, store: JobStore | None = None,
                 per_storage: int = 1, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.settings = settings
        self.per_storage = per_storage  # storage_balancing.max_parallel_per_storage
        self.store = store or JobStore(redis)
        self.clock = clock  # what the slots' and the waiting jobs' expiry count in (wall time)
        self.queue_key = Queue(keys.MIGRATION_QUEUE, connection=redis).key
        self._acquire = redis.register_script(_ACQUIRE)
        self._leave = redis.register_script(_LEAVE)
        self._release = redis.register_script(_RELEASE)
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

    def try_acquire(self, req: SlotRequest, keep_place: bool = False, relay: bool = False) -> bool:
        """Take a slot in every scope of the request, or in none: only if each has room once the jobs waiting
        ahead of it in the queue that could start now have theirs. `keep_place`: refused, the job waits in
        line (until it takes its slots, `leave`s, or stops looking for WAITER_TTL). `relay`: it was woken
        through keys.SLOTS_WAKE (a job's end), which wakes one waiter: it wakes the others."""
        now = self.clock()
        args = [req.holder, now, now + self.settings.slot_ttl, keys.job(""), FINAL_STATES, keys.slot_waiter(""),
                _PUSH_MS, int(keep_place), int(relay), *req.place, now + WAITER_TTL,
                *(self.limit(s) for s in req.scopes)]
        lines = [keys.SLOTS_WAITING, keys.SLOTS_WAKE, keys.slot_waiter(req.holder)]
        return bool(self._acquire(keys=[*lines, *req.scopes], args=args))

    def leave(self, req: SlotRequest) -> None:
        """The job stops waiting without its slots: out of the line, and the jobs behind it look again."""
        self._leave(keys=[keys.SLOTS_WAITING, keys.slot_waiter(req.holder)],
                    args=[req.holder, keys.slot_waiter(""), _PUSH_MS])

    def renew(self, req: SlotRequest) -> int:
        return int(self._renew(keys=list(req.scopes), args=[req.holder, self.clock() + self.settings.slot_ttl]))

    def commit(self, req: SlotRequest, job: Job) -> int:
        """Start the job (JobStore.start: its slots pinned, the job running, its event): 1, 0 (a slot expired)
        or -1 (the job may not start)."""
        assert (req.holder, req.scopes) == (job.job_id, tuple(job.slot_scopes())), "the job's own slots"
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
        """Give back slots that were never pinned (the job stops before its POST without ending), and wake
        every waiting job now rather than at the end of its back-off: the first in line takes them."""
        self._release(keys=[keys.SLOTS_WAITING, *req.scopes], args=[req.holder, keys.slot_waiter(""), _PUSH_MS])

    def wait(self, req: SlotRequest, on_wait: Callable[[], object] | None = None,
             cancelled: Callable[[], bool] | None = None, waiting_since: float | None = None) -> None:
        """Block (sleeping, not spinning) until every slot is taken, in line with the other waiting jobs by
        queue place; SlotTimeout once `slot_wait_timeout` has passed since `waiting_since` (the job's first
        wait); SlotYield when a job in flight waits for a worker to resume it (it may hold the very slots
        this one waits for: with every worker waiting, nobody would ever resume it). However it stops
        without its slots, it leaves the line."""
        try:
            self._wait(req, on_wait, cancelled, waiting_since)
        except BaseException:
            try:
                self.leave(req)
            except RedisError as exc:  # its place lapses by itself
                log.warning("could not leave the line for migration slots; the place lapses", error=str(exc))
            raise

    def _wait(self, req: SlotRequest, on_wait: Callable[[], object] | None, cancelled: Callable[[], bool] | None,
              waiting_since: float | None) -> None:
        deadline = (waiting_since or time.time()) + self.settings.slot_wait_timeout
        delay = 0.1
        relay = False
        outage = Outage(log, "Redis", "waiting for a migration slot")
        while True:
            try:
                if self.try_acquire(req, keep_place=True, relay=relay):
                    outage.ok()
                    return
                relay = False
                if self.resumed_job_waits():
                    raise SlotYield()
                if cancelled is not None and cancelled():
                    raise SlotCancelled()
                if time.time() > deadline:
                    raise SlotTimeout(f"no migration slot free within {self.settings.slot_wait_timeout:.0f} s")
                if on_wait is not None:
                    on_wait()
                    on_wait = None
                # Sleep until slots are released or its turn may have come (BLPOP on the shared wake-up list,
                # pushed by a job's end, and on its own, pushed by the other waiters) or the back-off ends.
                woken = self.redis.blpop([keys.SLOTS_WAKE, keys.slot_waiter(req.holder)],
                                         timeout=max(delay * (0.5 + random.random()), 0.05))
                relay = woken is not None and _text(woken[0]) == keys.SLOTS_WAKE
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
