"""How long each thing pvebalance writes stays in Redis: the one owner of every TTL and limit.

pvebalance runs for months beside a cluster; nothing it writes may accumulate. Each kind of record
is either bounded by a count (streams), expires on its own (a TTL), or is dropped with what it
belongs to (a plan's state with the plan, a guest's cache entries with the guest):

| record                              | kept                                                           |
| ----------------------------------- | -------------------------------------------------------------- |
| job hash `job:ID`, rq's job record  | `retention.jobs_days` after the job ended (no TTL while active) |
| job event stream `events`           | the newest `retention.events` entries                           |
| plan `plan:ID`, `plan:latest`       | `retention.plans_days` after it was made                        |
| plan index and state hash           | trimmed to the plans still kept, on each plan saved             |
| request status `request:ID`         | `retention.requests_days` after its last change                 |
| request index                       | trimmed to the requests still kept, on each request submitted   |
| request stream                      | the newest REQUEST_STREAM_ENTRIES (the planner reads each at once) |
| snapshot stream, `snapshot:latest`  | the newest `retention.snapshots`; the latest for 3 intervals    |
| guest config cache, guest averages  | while the guest is in the cluster (dropped on each snapshot)    |
| node RRD figures                    | while the node is in the cluster                                |
| node usage history `usage:history`  | the newest USAGE_HISTORY_SAMPLES (one a minute: 12 hours)       |
| guest claim `guest-job:VMID`        | until its job ends; GUEST_CLAIM_SECONDS at most (a safety net)  |

Stores take a Retention (from the settings) where they write; the figures are never spelled elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import RetentionSettings

if TYPE_CHECKING:
    from redis import Redis

DAY = 24 * 3600
# A guest's claim is freed when its job ends; the TTL only bounds a claim whose job record was lost.
# It must outlive any migration (a large VM over a slow link takes hours), so it is not an operator's
# retention choice.
GUEST_CLAIM_SECONDS = DAY
# The stream of operator requests the planner consumes: each is read within a second, and their
# statuses are kept apart (`request:ID`); this only bounds the stream.
REQUEST_STREAM_ENTRIES = 10_000
# The page's usage lines (services/api/history.py): one sample a minute at most, the last 12 hours.
USAGE_HISTORY_EVERY_SECONDS = 60
USAGE_HISTORY_SAMPLES = 12 * 60


@dataclass(frozen=True)
class Retention:
    settings: RetentionSettings = field(default_factory=RetentionSettings)

    @property
    def job_seconds(self) -> int:
        return _seconds(self.settings.jobs_days)

    @property
    def plan_seconds(self) -> int:
        return _seconds(self.settings.plans_days)

    @property
    def request_seconds(self) -> int:
        return _seconds(self.settings.requests_days)

    @property
    def events(self) -> int:
        return self.settings.events

    @property
    def snapshots(self) -> int:
        return self.settings.snapshots

    @property
    def guest_claim_seconds(self) -> int:
        return GUEST_CLAIM_SECONDS

    # What the API, the CLI and the page say about it.
    def plans_kept(self) -> str:
        return f"plans are kept {days(self.settings.plans_days)}"

    def requests_kept(self) -> str:
        return f"requests are kept {days(self.settings.requests_days)}"

    def jobs_kept(self) -> str:
        return f"jobs are kept {days(self.settings.jobs_days)} after they end"

    def kept(self) -> str:
        """All three, for the page."""
        return f"{self.plans_kept()}; {self.jobs_kept()}; {self.requests_kept()}"


def _seconds(days_: float) -> int:
    return max(int(days_ * DAY), 1)


def days(value: float) -> str:
    """'7 days', '1 day', '2.5 days', or hours/minutes below a day (a soak's short settings)."""
    if value >= 1:
        text = f"{value:g}"
        return f"{text} day" if text == "1" else f"{text} days"
    minutes = value * 24 * 60
    if minutes >= 60:
        return f"{minutes / 60:.3g} hours"
    return f"{minutes:.3g} minutes"


def drop_departed(redis: Redis, key: str, present: Iterable[str]) -> int:
    """Drop the fields of a hash keyed by guest (or node) that are not `present`: caches of what
    has left the cluster. Returns how many were dropped."""
    keep = set(present)
    gone = [f for f in (_text(k) for k in redis.hkeys(key)) if f not in keep]
    for start in range(0, len(gone), 1000):  # a cluster that lost many guests: bounded commands
        redis.hdel(key, *gone[start:start + 1000])
    return len(gone)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
