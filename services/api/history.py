"""Each node's usage over the last hours, for the page's lines: a bounded stream in Redis.

The API samples the collector's latest snapshot (from its heartbeat thread) at most once every
USAGE_HISTORY_EVERY_SECONDS, as the cluster view counts usage (services/api/usage.py). Each entry's
stream id is the snapshot's time, so two API replicas never record one snapshot twice (Redis refuses an
id not above the newest) and the stream keeps the newest USAGE_HISTORY_SAMPLES (shared/retention.py).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from redis import Redis
from redis.exceptions import ResponseError

from pvebalance.shared import keys
from pvebalance.shared.retention import USAGE_HISTORY_EVERY_SECONDS, USAGE_HISTORY_SAMPLES

from .usage import RESOURCES, usage_percent
from .views import ReadSide

Usage = dict[str, dict[str, float | None]]  # node -> resource -> percent
USAGE = TypeAdapter(Usage)


class Sample(BaseModel):
    at: float = Field(description="the snapshot's time, Unix seconds")
    usage: dict[str, float | None] = Field(description="resource -> percent in use (None: none to use)")


class UsageHistory(BaseModel):
    resources: list[str] = Field(description="the resources of each sample, as the cluster view's usage")
    every_s: float = Field(description="one sample this often at most")
    nodes: dict[str, list[Sample]] = Field(description="node -> its samples, oldest first")


def record(read: ReadSide, keep: int = USAGE_HISTORY_SAMPLES) -> bool:
    """Append the latest snapshot's node usage unless a sample was taken less than a minute before it;
    True when one was appended."""
    snapshot = read.snapshot()
    if snapshot is None:
        return False
    at_ms = int(snapshot.taken_at.timestamp() * 1000)
    newest = read.redis.xrevrange(keys.USAGE_HISTORY, count=1)
    if newest and at_ms - _ms(newest[0][0]) < USAGE_HISTORY_EVERY_SECONDS * 1000:
        return False
    usage = usage_percent(snapshot, read.policy())
    try:
        read.redis.xadd(keys.USAGE_HISTORY, {"usage": json.dumps(usage)}, id=f"{at_ms}-0", maxlen=keep,
                        approximate=False)
    except ResponseError:  # an id not above the newest: another replica recorded this snapshot first
        return False
    return True


def history(redis: Redis, hours: int) -> UsageHistory:
    newest = redis.xrevrange(keys.USAGE_HISTORY, count=1)
    nodes: dict[str, list[Sample]] = {}
    if newest:
        since = _ms(newest[0][0]) - int(hours * 3600 * 1000)
        for raw_id, fields in redis.xrange(keys.USAGE_HISTORY, min=since):
            usage = _usage(fields.get(b"usage") or fields.get("usage"))
            for node, percent in usage.items():
                nodes.setdefault(node, []).append(Sample(at=_ms(raw_id) / 1000, usage=percent))
    return UsageHistory(resources=list(RESOURCES), every_s=USAGE_HISTORY_EVERY_SECONDS, nodes=nodes)


def _ms(stream_id: Any) -> int:
    text = stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)
    return int(text.split("-", 1)[0])


def _usage(raw: Any) -> Usage:
    try:
        return USAGE.validate_json(raw) if raw else {}
    except ValidationError:
        return {}  # an entry this version cannot read: left out, as unreadable events are
