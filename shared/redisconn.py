"""Connecting to Redis (one server, or a master found through Sentinel), riding out its outages and
failovers, and saying so once.

Every client of every service, rq's workers included, is made here from `redis:` in the settings
(`client`, `async_client`). With `sentinels` the client asks them for the master of `master_name`
on each new connection, and again when the master it talked to turns into a replica (redis-py's
SentinelConnectionPool): a failover looks to the services like a short Redis outage.

Commands (`jobs`, `cancel`, ...) fail fast with one line when Redis does not answer. Services do not:
they wait for Redis with backoff (also while it is still loading its append-only file, while no
sentinel answers, while the sentinels know no such master, while the password is refused, and
while a master configured with min-replicas-to-write refuses writes for lack of replicas), log once
when it goes away, naming why, and once when it is back, and carry on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.asyncio.sentinel as aiosentinel
from redis import Redis
from redis._parsers.base import BaseParser
from redis.connection import parse_url
from redis.exceptions import AuthenticationError, BusyLoadingError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import MasterNotFoundError, Sentinel

from .config import RedisSettings
from .errors import OperatorError

T = TypeVar("T")


class NoReplicasError(RedisConnectionError):  # type: ignore[misc]  # redis is typed Any here (pyproject)
    """NOREPLICAS: the master refuses writes until enough replicas are connected (min-replicas-to-write).

    During a failover the old master answers so once its replica left it: for a client that is Redis
    away for writes (nothing was written; retrying is safe), not a refusal of the command. redis-py
    has no class for it, so its parsers are taught this one (their table maps a reply's error code
    to an exception class), and everything that rides out an outage rides this out too."""


BaseParser.EXCEPTION_CLASSES.setdefault("NOREPLICAS", NoReplicasError)

# Redis is away (or still loading its data, or between masters): worth waiting for. Any other
# RedisError is a bug or a refusal, and retrying it changes nothing. (AuthenticationError and
# MasterNotFoundError are ConnectionErrors: a wrong password or master name is waited out, and said.)
REDIS_AWAY = (RedisConnectionError, RedisTimeoutError, BusyLoadingError)

# A reply slower than this means the server is gone (or a half-open TCP connection); blocking calls
# ask for less. redis-py 8 defaults to 5 s, shorter than rq's blocking dequeue: a worker then logged
# 'Timeout reading from socket' every few seconds. Workers pass a longer one (see migrator/worker.py).
SOCKET_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
AWAY = "is away"
# How long a lock or a record waits for its replicas (WAIT) before it is held not to be kept.
REPLICA_WAIT_MS = 2000


class RedisUnavailable(OperatorError):
    """Redis did not answer (or its Sentinels named no master); the message says where."""


class Client(Redis):  # type: ignore[misc]  # redis is typed Any here (pyproject)
    """A Redis client that knows how many replicas must acknowledge a write before a lock or lease
    counts as held (`acknowledged`); rq's job functions get it back as their job's connection."""

    wait_replicas = 0


class Outage:
    """Logs an outage of `what` once when it starts and once when it ends, not once per retry.
    `explain` words the problem from the first failure (a wrong password is not 'away')."""

    def __init__(self, log: Any, what: str, doing: str, problem: str = AWAY,
                 explain: Callable[[BaseException], str] | None = None) -> None:
        self.log, self.what, self.doing, self.problem = log, what, doing, problem
        self.explain = explain
        self.since: float | None = None

    def failed(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            problem = self.explain(exc) if self.explain is not None else self.problem
            self.log.warning(f"{self.what} {problem}; {self.doing} waits and retries",
                             error=f"{type(exc).__name__}: {exc}")

    def ok(self) -> None:
        if self.since is not None:
            self.log.info(f"{self.what}: fine again; {self.doing} carries on" if self.problem != AWAY
                          else f"{self.what} is back; {self.doing} carries on",
                          away_s=round(time.monotonic() - self.since, 1))
            self.since = None


def _settings(target: RedisSettings | str) -> RedisSettings:
    return RedisSettings(url=target) if isinstance(target, str) else target


def _sentinel_addresses(s: RedisSettings) -> list[tuple[str, int]]:
    return [(host.strip("[]"), int(port)) for host, _, port in (e.rpartition(":") for e in s.sentinels)]


def _master_kwargs(s: RedisSettings, socket_timeout: float) -> dict[str, Any]:
    """What every connection to the master is made with, from the URL and the separate keys."""
    parsed: dict[str, Any] = parse_url(s.url)
    tls = s.url.startswith("rediss://")
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": socket_timeout, "socket_keepalive": True,
        "health_check_interval": 30,
        "db": int(parsed.get("db") or 0),
        "username": s.username or parsed.get("username"),
        "password": s.password.get_secret_value() if s.password else parsed.get("password"),
    }
    if tls:
        kwargs["ssl"] = True
        if s.tls_ca_file is not None:
            kwargs["ssl_ca_certs"] = str(s.tls_ca_file)
    return kwargs


def _sentinel_kwargs(s: RedisSettings, master: dict[str, Any]) -> dict[str, Any]:
    # Sentinels speak TLS when the master does (tls-port on both); they have their own password, if any.
    out = {k: v for k, v in master.items() if k.startswith(("socket_", "ssl"))}
    out.pop("socket_keepalive", None)
    if s.sentinel_password is not None:
        out["password"] = s.sentinel_password.get_secret_value()
    return out


def client(target: RedisSettings | str, socket_timeout: float = SOCKET_TIMEOUT) -> Client:
    """A client of the master (connections are made on first use): the one way services make one."""
    s = _settings(target)
    kwargs = _master_kwargs(s, socket_timeout)
    made: Client
    if s.sentinels:
        manager = Sentinel(_sentinel_addresses(s), sentinel_kwargs=_sentinel_kwargs(s, kwargs))
        made = manager.master_for(s.master_name, redis_class=Client, **kwargs)
    else:
        if s.url.startswith("unix://"):
            made = Client.from_url(s.url, socket_timeout=socket_timeout, health_check_interval=30)
        else:
            extra = {k: v for k, v in kwargs.items() if k not in ("db", "ssl")}
            url_kwargs = {k: v for k, v in extra.items() if v is not None}
            made = Client.from_url(s.url, **url_kwargs)
    made.wait_replicas = s.replicas_to_wait
    return made


def async_client(target: RedisSettings | str, socket_timeout: float = SOCKET_TIMEOUT) -> aioredis.Redis:
    """The same, for asyncio (the API's event stream)."""
    s = _settings(target)
    kwargs = _master_kwargs(s, socket_timeout)
    kwargs.pop("health_check_interval")
    if s.sentinels:
        manager = aiosentinel.Sentinel(_sentinel_addresses(s), sentinel_kwargs=_sentinel_kwargs(s, kwargs))
        return manager.master_for(s.master_name, redis_class=aioredis.Redis, **kwargs)
    if s.url.startswith("unix://"):
        return aioredis.Redis.from_url(s.url, socket_timeout=socket_timeout)
    return aioredis.Redis.from_url(s.url, **{k: v for k, v in kwargs.items()
                                             if k not in ("db", "ssl") and v is not None})


def where(target: RedisSettings | str) -> str:
    """How logs and errors name the Redis of these settings (never with a password)."""
    s = _settings(target)
    if s.sentinels:
        return f"Redis master '{s.master_name}' (sentinels {', '.join(s.sentinels)})"
    return f"Redis at {redact(s.url)}"


def problem(exc: BaseException, target: RedisSettings | str) -> str:
    """What is wrong, in words, for `where(target) + ' ' + problem(...)`."""
    s = _settings(target)
    text = str(exc)
    if isinstance(exc, MasterNotFoundError):
        if " : " in text:  # redis-py lists the sentinels it could not ask after ' : '
            if "uthentication" in text or "WRONGPASS" in text or "NOAUTH" in text:
                return "cannot be looked up: the sentinels refuse redis.sentinel_password"
            return "cannot be looked up: no sentinel answers"
        return (f"is unknown to the sentinels (or down): none names a master '{s.master_name}' "
                "(check redis.master_name)")
    if isinstance(exc, AuthenticationError):
        # RESP3's HELLO (redis-py 8's default protocol) refuses a client without a password so
        if "NOAUTH" in text or "required" in text.lower() or "HELLO must be called" in text:
            return "asks for a password (set redis.password, or the password in redis.url)"
        return "refuses the user or password (redis.username, redis.password or redis.url)"
    if isinstance(exc, NoReplicasError):
        return "refuses writes: too few replicas are connected (min-replicas-to-write)"
    if isinstance(exc, BusyLoadingError):
        return "is loading its data"
    return AWAY


def connect(target: RedisSettings | str, check: bool = True, socket_timeout: float = SOCKET_TIMEOUT) -> Client:
    """For commands: a client, checked with a PING; RedisUnavailable in one line otherwise."""
    try:
        made = client(target, socket_timeout)
        if check:
            made.ping()
    except REDIS_AWAY as exc:
        said = problem(exc, target)
        # redis-py lists each sentinel it could not ask with its whole client repr: the words say it
        detail = "" if isinstance(exc, MasterNotFoundError) else f": {_short(exc)}"
        raise RedisUnavailable(f"{where(target)} {'does not answer' if said == AWAY else said}{detail}") from None
    except (RedisError, ValueError) as exc:
        raise RedisUnavailable(f"{where(target)} does not answer: {_short(exc)}") from None
    return made


def connect_waiting(target: RedisSettings | str, log: Any, stop: threading.Event | None = None,
                    socket_timeout: float = SOCKET_TIMEOUT) -> Client | None:
    """For services: wait (with backoff) until Redis answers, logging once, instead of exiting.
    None: the service was stopped (SIGTERM) before Redis answered; it has nothing to clean up."""
    try:
        made = client(target, socket_timeout)
    except ValueError as exc:
        raise RedisUnavailable(f"Redis URL {redact(_settings(target).url)} is not valid: {exc}") from None
    try:
        retry_redis(made.ping, Outage(log, where(target), "start-up", explain=lambda e: problem(e, target)),
                    stop=stop)
    except REDIS_AWAY:
        return None  # retry_redis gives up only when stopped
    return made


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


def acknowledged(redis: Redis, write: Callable[[Any], Any]) -> tuple[Any, bool]:
    """Make one write (`write(client)` issues one command: a lock's script, a SET NX), then, with
    `wait_replicas`, WAIT on the same connection until that many replicas have it: (the write's
    answer, whether enough replicas have it). Replication is asynchronous: a lock a master granted
    and lost in a failover before a replica had it could be granted again by the new master while
    its first holder goes on (docs/operations.md, Redis)."""
    want = int(getattr(redis, "wait_replicas", 0))
    if want <= 0:
        return write(redis), True
    pipe = redis.pipeline(transaction=False)  # one connection: WAIT counts that connection's writes
    write(pipe)
    pipe.wait(want, REPLICA_WAIT_MS)
    answer, replicas = pipe.execute()
    return answer, int(replicas) >= want


def answers(target: RedisSettings | str) -> bool:
    try:
        connect(target)
    except RedisUnavailable:
        return False
    return True


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
