"""An rq worker process for migration jobs."""

from __future__ import annotations

import os
import socket
import threading

from redis import Redis
from rq import Queue, Worker

from pvebalance.shared import keys
from pvebalance.shared.config import Settings
from pvebalance.shared.redisconn import connect

from .jobs import set_context
from .recovery import recover_orphans, watch_orphans


class MigrationWorker(Worker):
    def _set_ip_address(self, connection: Redis) -> None:
        try:
            super()._set_ip_address(connection)
        except ValueError:
            # fakeredis' TCP server (the demo's embedded Redis) answers CLIENT INFO in a shape
            # redis-py cannot parse; the address is only informational.
            self.ip_address = "unknown"


def run_worker(settings: Settings, burst: bool = False, name: str | None = None) -> None:
    redis = connect(settings.redis.url)
    set_context(settings)
    recover_orphans(redis)
    stop = threading.Event()
    threading.Thread(target=watch_orphans, args=(redis, settings.migrator.slot_ttl, stop),
                     name="orphan-watch", daemon=True).start()
    worker = MigrationWorker(
        [Queue(keys.MIGRATION_QUEUE, connection=redis)],
        connection=redis,
        name=name or f"migrator-{socket.gethostname()}-{os.getpid()}",
    )
    try:
        worker.work(burst=burst, logging_level=settings.logging.level, with_scheduler=False)
    finally:
        stop.set()
