"""Liveness through Redis: each service beats a key that expires; health checks and /readyz read them.

rq workers have their own heartbeats (rq's worker registry); this covers the collector, planner and
API, which are not rq workers.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import TYPE_CHECKING

from . import keys

if TYPE_CHECKING:
    from redis import Redis

INSTANCE = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def beat(redis: Redis, service: str, instance: str = INSTANCE, ttl: int = keys.HEARTBEAT_TTL) -> None:
    redis.set(keys.heartbeat(service, instance), "1", ex=ttl)


def alive(redis: Redis, service: str) -> list[str]:
    """The instances of `service` that beat within the last HEARTBEAT_TTL seconds."""
    prefix = keys.heartbeat(service, "")
    found = []
    for key in redis.scan_iter(match=prefix + "*", count=200):
        name = key.decode() if isinstance(key, bytes) else str(key)
        found.append(name[len(prefix):])
    return sorted(found)
