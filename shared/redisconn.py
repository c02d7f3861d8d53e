"""Connecting to Redis, riding out its outages, and saying so once.

Commands (`jobs`, `cancel`, ...) fail fast with one line when Redis does not answer. Services do not:
they wait for Redis with backoff (also while it is still loading its append-only file), log once
when it goes away and once when it is back, and carry on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from redis import Redis
from redis.exceptions import BusyLoadingError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")

# Redis is away (or still loading its data): worth waiting for. Any other RedisError is a bug or a
# refusal, and retrying it changes nothing.
REDIS_AWAY = (RedisConnectionError, RedisTimeoutError, BusyLoadingError)

# A reply slower than this means the server is gone (or a half-open TCP connection); blocking calls
# ask for less. redis-py 8 defaults to 5 s, shorter than rq's blocking dequeue: a worker then logged
# 'Timeout reading from socket' every few seconds. Workers pass a longer one (see migrator/worker.py).
SOCKET_TIMEOUT = 30.0


class RedisUnavailable(Exception):
    pass


class Outage:
    """Logs an outage of `what` once when it starts and once when it ends, not once per retry."""

    def __init__(self, log: Any, what: str, doing: str, problem: str = "is away") -> None:
        self.log, self.what, self.doing, self.problem = log, what, doing, problem
        self.since: float | None = None

    def failed(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning(f"{self.what} {self.problem}; {self.doing} waits and retries",
                             error=f"{type(exc).__name__}: {exc}")

    def ok(self) -> None:
        if self.since is not None:
            self.log.info(f"{self.what}: fine again; {self.doing} carries on" if self.problem != "is away"
                          else f"{self.what} is back; {self.doing} carries on",
                          away_s=round(time.monotonic() - self.since, 1))
            self.since = None


def _client(url: str, socket_timeout: float) -> Redis:
    return Redis.from_url(url, socket_connect_timeout=5, socket_timeout=socket_timeout, socket_keepalive=True,
                          health_check_interval=30)


def connect(url: str, check: bool = True, socket_timeout: float = SOCKET_TIMEOUT) -> Redis:
    try:
        client = _client(url, socket_timeout)
        if check:
            client.ping()
    except (RedisError, ValueError) as exc:
        raise RedisUnavailable(f"Redis at {redact(url)} does not answer: {exc}") from None
    return client


def connect_waiting(url: str, log: Any, stop: threading.Event | None = None,
                    socket_timeout: float = SOCKET_TIMEOUT) -> Redis | None:
    """For services: wait (with backoff) until Redis answers, logging once, instead of exiting.
    None: the service was stopped (SIGTERM) before Redis answered; it has nothing to clean up."""
    try:
        client = _client(url, socket_timeout)
    except ValueError as exc:
        raise RedisUnavailable(f"Redis URL {redact(url)} is not valid: {exc}") from None
    try:
        retry_redis(client.ping, Outage(log, f"Redis at {redact(url)}", "start-up"), stop=stop)
    except REDIS_AWAY:
        return None  # retry_redis gives up only when stopped
    return client


def retry_redis(fn: Callable[[], T], outage: Outage, stop: threading.Event | None = None,
                give_up_after: float | None = None, sleep: Callable[[float], Any] = time.sleep) -> T:
    """Call fn until Redis answers it: backoff 0.5 s .. 5 s, one log line per outage."""
    started = time.monotonic()
    delay = 0.5
    while True:
        try:
            result = fn()
        except REDIS_AWAY as exc:
            outage.failed(exc)
            if give_up_after is not None and time.monotonic() - started > give_up_after:
                raise
            if stop is not None and stop.wait(delay):
                raise
            if stop is None:
                sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        outage.ok()
        return result


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
