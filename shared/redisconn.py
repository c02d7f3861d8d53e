"""Connecting to Redis, with an error an operator can act on when it does not answer."""

from __future__ import annotations

from redis import Redis
from redis.exceptions import RedisError


class RedisUnavailable(Exception):
    pass


def connect(url: str, check: bool = True) -> Redis:
    try:
        client = Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
        if check:
            client.ping()
    except (RedisError, ValueError) as exc:
        raise RedisUnavailable(f"Redis at {redact(url)} does not answer: {exc}") from None
    return client


def answers(url: str) -> bool:
    try:
        connect(url)
    except RedisUnavailable:
        return False
    return True


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
