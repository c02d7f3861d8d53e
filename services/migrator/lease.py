"""A lease on a job: one runner works on a job at any time.

SET NX with expiry, renewed in the background. The renewal rides out Redis outages (logged once);
a lease that expired during an outage is taken again if nobody else took it. A second runner of the
same job (a job queued again while its first runner still lives) finds the lease held and stands
down; if both ever ran, the job store's compare-and-set still lets only one end the job.
"""

from __future__ import annotations

import threading

from redis import Redis
from redis.exceptions import RedisError

from pvebalance.shared import keys
from pvebalance.shared.logging import get_logger
from pvebalance.shared.redisconn import Outage
from pvebalance.shared.tokenlock import RELEASE_IF_HELD, TAKE_OR_EXTEND

log = get_logger("pvebalance.migrator.lease")


class Lease:
    def __init__(self, redis: Redis, job_id: str, holder: str, ttl: float) -> None:
        self.redis, self.key, self.holder, self.ttl = redis, keys.lease(job_id), holder, ttl
        self._stop = threading.Event()
        self._renew_script = redis.register_script(TAKE_OR_EXTEND)  # a lapsed lease is taken back
        self.lost = False

    def acquire(self) -> bool:
        if not self.redis.set(self.key, self.holder, nx=True, px=int(self.ttl * 1000)):
            return False
        threading.Thread(target=self._renew, name="job-lease", daemon=True).start()
        return True

    def _renew(self) -> None:
        outage = Outage(log, "Redis", "the job's lease renewal")
        while not self._stop.wait(self.ttl / 4):
            try:
                held = self._renew_script(keys=[self.key], args=[self.holder, int(self.ttl * 1000)])
            except RedisError as exc:
                outage.failed(exc)
                continue
            outage.ok()
            if not held and not self.lost:
                self.lost = True
                log.warning("another worker took over this job's lease; the job store lets only one end it")

    def release(self) -> None:
        self._stop.set()
        try:
            self.redis.eval(RELEASE_IF_HELD, 1, self.key, self.holder)
        except RedisError as exc:  # it expires by itself
            log.warning("could not release the job's lease; it expires", error=str(exc))
