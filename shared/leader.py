"""One leader per service: a Redis lock with expiry, renewed while held, checked before each write.

Two collectors or two planners may run at once (two replicas, compose scaled by mistake, a restarted
pod beside its old self). Only the instance holding `pvebalance:leader:<service>` works; the others
wait (beating their heartbeat: a follower is healthy) and take the lock over once it expires (at
most `ttl` seconds after the leader's last renewal, so within `ttl` of its death).

Fencing: the leader renews its lock atomically (compare its token, then extend, in one script) right
before each write (a snapshot published, a plan saved or enqueued) and stops when that fails. A
renewal gives a full `ttl` of validity, so a write that follows its check within `ttl` cannot overlap
another leader; only a process frozen longer than `ttl` between the check and the write could.

Across a Sentinel failover: the lock counts as taken or renewed only once `redis.wait_replicas`
replicas have it (WAIT, shared/redisconn.acknowledged), so the replica Sentinel promotes holds it
too and grants it to nobody else; a renewal the new master does not know (the old leader's token is
not there) fails, and the old leader stops before its next write. Its writes to the old master
after the switch are refused (min-replicas-to-write) or lost with that master's data, never
applied beside the new leader's.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from redis import Redis
from redis.exceptions import RedisError

from . import keys
from .heartbeat import INSTANCE, beat
from .logging import get_logger
from .redisconn import Outage, acknowledged
from .tokenlock import EXTEND_IF_HELD, RELEASE_IF_HELD, TAKE_OR_EXTEND

log = get_logger("pvebalance.leader")


class NotLeader(Exception):
    """Raised by the fence when another instance holds the lock: the write is not made."""


class Leader:
    """The lock of one service, as held (or waited for) by this process."""

    def __init__(self, redis: Redis, service: str, ttl: float, instance: str = INSTANCE) -> None:
        self.redis, self.service, self.ttl, self.token = redis, service, ttl, instance
        self.key = keys.leader(service)
        self._ttl_ms = max(int(ttl * 1000), 1)
        self._acquire = redis.register_script(TAKE_OR_EXTEND)
        self._renew = redis.register_script(EXTEND_IF_HELD)
        self._release = redis.register_script(RELEASE_IF_HELD)
        self._unacknowledged = False  # the last take or renewal held the lock, but too few replicas had it

    @property
    def poll(self) -> float:
        """How often a follower tries the lock and a leader renews it."""
        return min(max(self.ttl / 10, 0.2), 2.0)

    def try_acquire(self) -> bool:
        """Take (or keep) the lock; True once it is held and on enough replicas to survive a failover."""
        held, kept = acknowledged(self.redis, lambda c: self._acquire(keys=[self.key], args=[self.token, self._ttl_ms],
                                                                      client=c))
        self._unacknowledged = bool(held) and not kept
        return bool(held) and kept

    def renew(self) -> bool:
        held, kept = acknowledged(self.redis, lambda c: self._renew(keys=[self.key], args=[self.token, self._ttl_ms],
                                                                    client=c))
        self._unacknowledged = bool(held) and not kept
        return bool(held) and kept

    def fence(self) -> None:
        """Before a write: renew the lock, or raise NotLeader (also when Redis cannot say)."""
        try:
            held = self.renew()
        except RedisError as exc:
            raise NotLeader(f"cannot confirm the {self.service} lock: {exc}") from None
        if not held:
            raise NotLeader(self._why_not())

    def _why_not(self) -> str:
        if self._unacknowledged:
            return (f"the {self.service} lock is not on {self.redis_replicas} replica(s) within the wait: a failover "
                    "could hand it to another instance")
        return f"another {self.service} holds the lock now"

    @property
    def redis_replicas(self) -> int:
        return int(getattr(self.redis, "wait_replicas", 0))

    def release(self) -> None:
        with contextlib.suppress(RedisError):  # else it expires by itself
            self._release(keys=[self.key], args=[self.token])

    def holder(self) -> str | None:
        raw = self.redis.get(self.key)
        return raw.decode() if isinstance(raw, bytes) else raw

    def lead(self, stop: threading.Event, work: Callable[[threading.Event], None]) -> None:
        """Until `stop`: wait for the lock (beating the heartbeat), then run `work(demoted)` while it
        is held; `demoted` is set when the lock is lost or on stop, and `work` must return then."""
        outage = Outage(log, "Redis", f"the {self.service}'s leader election")
        waiting_logged = False
        try:
            while not stop.is_set():
                try:
                    beat(self.redis, self.service, ttl=keys.HEARTBEAT_TTL)
                    held = self.try_acquire()
                    outage.ok()
                except RedisError as exc:
                    outage.failed(exc)
                    stop.wait(self.poll)
                    continue
                if not held:
                    if not waiting_logged:
                        if self._unacknowledged:
                            log.warning("lock taken but not acknowledged by Redis's replicas (redis.wait_replicas): "
                                        "not leading until they have it", service=self.service,
                                        replicas=self.redis_replicas)
                        else:
                            log.info("another instance leads; waiting to take over", service=self.service,
                                     leader=self.holder(), lock_ttl_s=self.ttl)
                        waiting_logged = True
                    stop.wait(self.poll)
                    continue
                waiting_logged = False
                log.info("leading", service=self.service, instance=self.token)
                self._run_while_held(stop, work)
        finally:
            self.release()

    def _run_while_held(self, stop: threading.Event, work: Callable[[threading.Event], None]) -> None:
        demoted = threading.Event()

        def keep() -> None:
            while not demoted.wait(self.poll):
                if stop.is_set():
                    break
                try:
                    # No heartbeat here: the work loop beats, so a leader whose loop hangs turns
                    # unhealthy and is restarted, instead of holding the lock for ever.
                    if not self.renew():
                        log.warning(f"lock lost: {self._why_not()}", service=self.service)
                        break
                except RedisError as exc:
                    # Redis away: the lock cannot be confirmed, so stop writing until it can.
                    log.warning("lock not renewed: Redis away; stepping down", service=self.service, error=str(exc))
                    break
            demoted.set()

        keeper = threading.Thread(target=keep, name=f"{self.service}-leader", daemon=True)
        keeper.start()
        try:
            work(demoted)
        except NotLeader as exc:
            log.warning("stepped down before a write", service=self.service, reason=str(exc))
        finally:
            demoted.set()
            keeper.join()
