"""The planner reads the snapshot stream as every reader of stored messages does (parse_known): an
entry this version cannot read (a newer collector's schema, a damaged entry) is skipped and said once,
never a traceback on every snapshot."""

from __future__ import annotations

import json

import pytest
from redis import Redis

from pvebalance.services.planner.planner import Planner
from pvebalance.shared import keys
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.config import Settings
from tests.helpers import REPO


def newer(raw: str) -> str:
    doc = json.loads(raw)
    doc["schema_version"] = 2
    return json.dumps(doc)


@pytest.mark.parametrize(("entries", "readable"), [
    (["ok", "newer"], "ok"),  # the newest readable one, older than an unreadable newest
    (["newer", "ok"], "ok"),
    (["newer", "damaged"], None),
])
def test_the_planner_plans_on_the_newest_snapshot_it_can_read(fake_redis: Redis, entries: list[str],
                                                              readable: str | None) -> None:
    planner = Planner(fake_redis, Settings())
    planner.ensure_group("0")
    snap = snapshot_from_api(load_dump(REPO / "pvebalance" / "scenarios" / "homelab.json")["api"])
    raw = snap.model_dump_json()
    for kind in entries:
        value = {"ok": raw, "newer": newer(raw), "damaged": "{not json"}[kind]
        fake_redis.xadd(keys.SNAPSHOT_STREAM, {"snapshot": value})
    got = planner.next_snapshot(block_ms=10)
    assert (got.snapshot_id if got else None) == (snap.snapshot_id if readable else None)
    assert planner.unreadable_snapshots is (readable is None)
