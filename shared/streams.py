"""Consumer groups on Redis streams: create one if missing, and tell whether it still exists (a Redis
restarted without its data loses both the stream and its group under a running reader)."""

from __future__ import annotations

from redis import Redis
from redis.exceptions import ResponseError


def ensure_group(redis: Redis, stream: str, group: str, start: str = "$") -> None:
    """Create the group (and the stream) unless it exists; `start`: the first entry it will read."""
    try:
        redis.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def group_exists(redis: Redis, stream: str, group: str) -> bool:
    try:
        groups = redis.xinfo_groups(stream)
    except ResponseError:
        return False
    return any(g.get("name") in (group, group.encode()) for g in groups)
