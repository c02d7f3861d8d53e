"""Liveness through Redis: each service beats a key that expires; health checks and /readyz read them.

rq workers have their own heartbeats (rq's worker registry); this covers the collector, planner and
API, which are not rq workers.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from . import keys
from .logging import get_logger

if TYPE_CHECKING:
    from redis import Redis

INSTANCE = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

log = get_logger("pvebalance.heartbeat")


def beat(redis: Redis, service: str, instance: str = INSTANCE, ttl: int | None = None) -> None:
    """Say `service` is alive for `ttl` seconds (default keys.HEARTBEAT_TTL, read now)."""
    redis.set(keys.heartbeat(service, instance), "1", ex=keys.HEARTBEAT_TTL if ttl is None else ttl)


def alive(redis: Redis, service: str) -> list[str]:
    """The instances of `service` that beat within the last HEARTBEAT_TTL seconds."""
    prefix = keys.heartbeat(service, "")
    found = []
    for key in redis.scan_iter(match=prefix + "*", count=200):
        name = key.decode() if isinstance(key, bytes) else str(key)
        found.append(name[len(prefix):])
    return sorted(found)


@contextmanager
def kept_alive(beat_once: Callable[[], None], at_most: float, what: str, setting: str) -> Iterator[None]:
    """Call `beat_once` every third of keys.HEARTBEAT_TTL while the block runs, for at most `at_most`
    seconds: one step of a service's loop that takes longer than the heartbeat lives (the planner's
    plan of a large cluster) must not make it look dead, nor get it restarted mid-plan by a liveness
    probe and then again on the same plan. Past `at_most` the step counts as hung: the beats stop (one
    warning names `setting`), the heartbeat lapses and the health check fails, as for a hung loop.

    A beat that fails (Redis away) is skipped: the step meets Redis's absence itself and says so."""
    done = threading.Event()

    def keep() -> None:
        deadline = time.monotonic() + at_most
        every = keys.HEARTBEAT_TTL / 3
        while not done.wait(max(min(every, deadline - time.monotonic()), 0.0)):
            if time.monotonic() >= deadline:
                log.warning(f"one step of the {what} has run {at_most:g} s: no longer reported alive ({setting})",
                            service=what)
                return
            with suppress(RedisError):
                beat_once()

    keeper = threading.Thread(target=keep, name=f"{what}-heartbeat", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        done.set()
        keeper.join()
