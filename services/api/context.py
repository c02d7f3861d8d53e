"""What every request handler shares: the settings, Redis clients, the stores."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis import Redis

from pvebalance.shared.config import Settings
from pvebalance.shared.redisconn import async_client, client
from pvebalance.shared.requests import RequestStore

from .views import ReadSide


@dataclass
class ApiContext:
    settings: Settings
    redis: Redis
    async_redis: aioredis.Redis
    read: ReadSide = field(init=False)
    requests: RequestStore = field(init=False)

    def __post_init__(self) -> None:
        self.read = ReadSide(self.redis, self.settings)
        self.requests = RequestStore(self.redis, self.read.retention)

    @classmethod
    def connect(cls, settings: Settings, redis: Redis | None = None,
                async_redis: aioredis.Redis | None = None) -> ApiContext:
        """Clients connect on first use: the API starts (and /healthz answers) while Redis is away."""
        sync = redis or client(settings.redis)  # one Redis or Sentinel's master, as every service
        # The event stream blocks up to 5 s per read: its socket waits longer than that (SOCKET_TIMEOUT).
        aio = async_redis or async_client(settings.redis)
        return cls(settings, sync, aio)
