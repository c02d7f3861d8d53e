"""A lease on a job: one runner works on a job at any time.

SET NX with expiry, renewed in the background. The renewal rides out Redis outages (logged once);
a lease that expired during an outage is taken again if nobody else took it. A second runner of the
same job (a job queued again while its first runner still lives) finds the lease held and stands
down; if both ever ran, the job store's compare-and-set still lets only one end the job.

Across a Sentinel failover: the lease counts as taken only once `redis.wait_replicas` replicas have
it (shared/redisconn.acknowledged), so the replica Sentinel promotes knows the job has a runner and
the reconciler there does not queue it again beside its runner. A renewal the new master refuses
(another runner holds the lease there) marks the lease lost, as before.
"""

from __future__ import annotations

import threading

from redis import Redis
from redis.exceptions import RedisError

from pvebalance.shared import keys
from pvebalance.shared.logging import get_logger
from pvebalance.shared.redisconn import Outage, acknowledged
from pvebalance.shared.tokenlock import RELEASE_IF_HELD, TAKE_OR_EXTEND

log = get_logger("pvebalance.migrator.lease")


class Lease:
    def __init__(self, redis: Redis, job_id: str, holder: str, ttl: float) -> None:
        self.redis, self.key, self.holder, self.ttl = redis, keys.lease(job_id), holder, ttl
        self._stop = threading.Event()
        self._renew_script = redis.register_script(TAKE_OR_EXTEND)  # a lapsed lease is taken back
        self._release_script = redis.register_script(RELEASE_IF_HELD)
        self.lost = False

    def acquire(self) -> bool:
        """True when this runner holds the lease (on enough replicas); False when another does, or
        when the replicas did not acknowledge it (then it is given back: the job is taken over later)."""
        taken, kept = acknowledged(self.redis, lambda c: c.set(self.key, self.holder, nx=True,
                                                                px=int(self.ttl * 1000)))
        if not taken:
            return False
        if not kept:
            log.warning("job lease not acknowledged by Redis's replicas (redis.wait_replicas): not running the job "
                        "now; it is taken over later")
            self._give_back()
            return False
        threading.Thread(target=self._renew, name="job-lease", daemon=True).start()
        return True

    def _renew(self) -> None:
        outage = Outage(log, "Redis", "the job's lease renewal")
        replicas = Outage(log, "Redis's replicas", "the job's lease renewal", problem="do not acknowledge the lease")
        while not self._stop.wait(self.ttl / 4):
            try:
                held, kept = acknowledged(self.redis, lambda c: self._renew_script(
                    keys=[self.key], args=[self.holder, int(self.ttl * 1000)], client=c))
            except RedisError as exc:
                outage.failed(exc)
                continue
            outage.ok()
            if held and not kept:
                replicas.failed(RuntimeError("WAIT answered fewer replicas than redis.wait_replicas"))
            elif held:
                replicas.ok()
            if not held and not self.lost:
                self.lost = True
                log.warning("another worker took over this job's lease; the job store lets only one end it")

    def release(self) -> None:
        self._stop.set()
        self._give_back()

    def _give_back(self) -> None:
        try:
            self._release_script(keys=[self.key], args=[self.holder])
        except RedisError as exc:  # it expires by itself
            log.warning("could not release the job's lease; it expires", error=str(exc))
