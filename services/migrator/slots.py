"""Migration slots held in Redis: at most N cluster-wide, M per source node and K per target node.

Each scope is a sorted set of holders scored by their expiry. One Lua script takes a slot in every
scope of a migration at once or in none, so two workers can never both squeeze past a limit; a
holder that dies without releasing its slots loses them when they expire, and a live holder renews
them while its migration runs.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from redis import Redis

from pvebalance.shared import keys
from pvebalance.shared.config import MigratorSettings

# KEYS: the scopes' sorted sets. ARGV: holder, now, expiry, then one limit per key.
# Drops expired holders, then takes a slot in every scope, or in none if one is full.
_ACQUIRE = """
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[2])
  if not redis.call('ZSCORE', key, ARGV[1]) and redis.call('ZCARD', key) >= tonumber(ARGV[3 + i]) then
    return 0
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, ARGV[3], ARGV[1])
end
return 1
"""

# KEYS: the scopes. ARGV: holder, new expiry. Extends only slots the holder still has.
_RENEW = """
local held = 0
for _, key in ipairs(KEYS) do
  if redis.call('ZSCORE', key, ARGV[1]) then
    redis.call('ZADD', key, 'XX', ARGV[2], ARGV[1])
    held = held + 1
  end
end
return held
"""


class SlotTimeout(Exception):
    pass


class SlotCancelled(Exception):
    """The job was cancelled while it waited."""


@dataclass(frozen=True)
class SlotRequest:
    holder: str
    source: str
    target: str


class Slots:
    def __init__(self, redis: Redis, settings: MigratorSettings) -> None:
        self.redis = redis
        self.settings = settings
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)

    def _scopes(self, req: SlotRequest) -> tuple[list[str], list[int]]:
        s = self.settings
        return (
            [keys.SLOTS_CLUSTER, keys.slots_source(req.source), keys.slots_target(req.target)],
            [s.max_parallel_cluster, s.max_parallel_per_source, s.max_parallel_per_target],
        )

    def try_acquire(self, req: SlotRequest) -> bool:
        scopes, limits = self._scopes(req)
        now = time.time()
        return bool(self._acquire(keys=scopes, args=[req.holder, now, now + self.settings.slot_ttl, *limits]))

    def renew(self, req: SlotRequest) -> int:
        scopes, _ = self._scopes(req)
        return int(self._renew(keys=scopes, args=[req.holder, time.time() + self.settings.slot_ttl]))

    def release(self, req: SlotRequest) -> None:
        scopes, _ = self._scopes(req)
        pipe = self.redis.pipeline()
        for scope in scopes:
            pipe.zrem(scope, req.holder)
        # wake one waiting worker now instead of at the end of its back-off
        pipe.lpush(keys.SLOTS_WAKE, "1")
        pipe.ltrim(keys.SLOTS_WAKE, 0, 63)
        pipe.execute()

    def wait(self, req: SlotRequest, on_wait: Callable[[], object] | None = None,
             cancelled: Callable[[], bool] | None = None) -> None:
        """Block (sleeping, not spinning) until every slot is taken, or raise SlotTimeout."""
        deadline = time.monotonic() + self.settings.slot_wait_timeout
        delay = 0.1
        while not self.try_acquire(req):
            if cancelled is not None and cancelled():
                raise SlotCancelled()
            if time.monotonic() > deadline:
                raise SlotTimeout(f"no migration slot free within {self.settings.slot_wait_timeout:.0f} s")
            if on_wait is not None:
                on_wait()
                on_wait = None
            # Sleep until a slot is released (BLPOP on the wake-up list) or the back-off ends.
            self.redis.blpop([keys.SLOTS_WAKE], timeout=max(delay * (0.5 + random.random()), 0.05))
            delay = min(delay * 1.5, 2.0)

    @contextmanager
    def held(self, req: SlotRequest, on_wait: Callable[[], object] | None = None,
             cancelled: Callable[[], bool] | None = None) -> Iterator[None]:
        """Hold the slots for the body, renewing them in the background; released on every exit."""
        self.wait(req, on_wait, cancelled)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.settings.slot_ttl / 3):
                self.renew(req)

        renewer = threading.Thread(target=renew, name="slot-renewer", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            self.release(req)
