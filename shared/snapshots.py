"""Snapshots in Redis, encoded and decoded here only: the collector writes through `publish`; the
planner, the API and the CLI read through `latest` and `from_entry`.

Encoding: the snapshot's JSON, zlib-compressed (level 6), behind a short tag naming the format.
An xl-10k snapshot (100 nodes, 10,000 guests with their disks, 200 storages) is 4.3 MB of JSON and
264 KB so encoded (16x), in ~30 ms, and is read back in ~7 ms plus the JSON parse the reader made
anyway. Uncompressed, the stream's 100 entries held ~370 MB at steady state, ~10 GB a day went
through the append-only file, and the planner read up to 100 of them at once.

Why zlib and not deltas or zstd: zlib is in the standard library (no dependency for any service or
the demo), and its ratio already puts 30 snapshots at ~8 MB. A delta chain would make each entry
depend on an older one the stream may have trimmed (and a reader joining late would need a base);
one entry, one snapshot keeps the stream's trimming and the planner's "newest readable" simple.

The tag makes the format extensible by addition (a later `zstd1:` beside `zlib1:`); an entry in a
format this version does not know reads as None, as one of a schema it does not know does
(parse_known): the planner skips it and says so once. Plain JSON (written before the tag existed,
or by a test by hand) is still read.
"""

from __future__ import annotations

import zlib
from typing import Any

from redis import Redis

from . import keys
from .models import ClusterSnapshot, parse_known

ZLIB = b"zlib1:"
LEVEL = 6  # 9 is 12 % smaller and 3x slower; 1 is 60 % larger
FIELD = "snapshot"  # the stream entry's field holding the encoded snapshot
_MAX_JSON = 1 << 30  # a corrupt or hostile entry cannot make a reader allocate more than this


def encode(snapshot: ClusterSnapshot) -> bytes:
    return ZLIB + zlib.compress(snapshot.model_dump_json().encode(), LEVEL)


def decode(raw: bytes | str | None) -> ClusterSnapshot | None:
    """The snapshot, or None: nothing there, a format or schema this version does not know, damage."""
    if raw is None:
        return None
    data = raw.encode() if isinstance(raw, str) else raw
    if data.startswith(ZLIB):
        try:
            inflate = zlib.decompressobj()
            data = inflate.decompress(data[len(ZLIB):], _MAX_JSON)
        except zlib.error:
            return None
        if inflate.unconsumed_tail:
            return None
    elif not data.lstrip().startswith(b"{"):
        return None  # a format tag of a newer version
    return parse_known(ClusterSnapshot, data)


def from_entry(fields: dict[Any, Any]) -> ClusterSnapshot | None:
    """The snapshot of one stream entry (its fields as redis-py gives them)."""
    return decode(fields.get(FIELD.encode()) or fields.get(FIELD))


def latest(redis: Redis) -> ClusterSnapshot | None:
    return decode(redis.get(keys.SNAPSHOT_LATEST))


def publish(redis: Redis, snapshot: ClusterSnapshot, latest_ttl: float, history: int) -> str:
    """Append to the stream (trimmed to exactly `history` entries) and set the latest, in one
    transaction; returns the stream entry's id. Exact trimming: with entries this size each is a
    stream node of its own, so '~' would trim as exactly anyway, and the bound is what is promised."""
    raw = encode(snapshot)
    pipe = redis.pipeline(transaction=True)
    pipe.xadd(keys.SNAPSHOT_STREAM, {FIELD: raw}, maxlen=history, approximate=False)
    pipe.set(keys.SNAPSHOT_LATEST, raw, ex=max(int(latest_ttl), 1))
    entry_id = pipe.execute()[0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
