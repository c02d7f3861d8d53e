"""Nothing pvebalance writes accumulates (shared/retention.py): snapshots compact and few, job records
expiring after their end, plans and their states going together, request indexes trimmed, caches of
guests and nodes that left the cluster dropped, and every message says how long from the settings."""

from __future__ import annotations

import json
import time
import zlib

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from pvebalance.services.collector.collector import Collector
from pvebalance.services.collector.smoothing import Smoother
from pvebalance.services.planner.planner import Planner
from pvebalance.shared import keys, snapshots
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.config import RetentionSettings, Settings, load_settings
from pvebalance.shared.jobs import JobState, MigrationJob
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import ClusterSnapshot, GuestType
from pvebalance.shared.plans import PlanState, PlanStatus, PlanStore
from pvebalance.shared.proxmox import ProxmoxClient
from pvebalance.shared.requests import OperatorRequest, RequestAction, RequestState, RequestStore
from pvebalance.shared.retention import Retention, days
from tests.api_helpers import OPS, all_on_one, fake_app, make_world, settings_with_tokens
from tests.helpers import REPO, SimFactory, api_settings

DAY = 24 * 3600


def homelab() -> ClusterSnapshot:
    return snapshot_from_api(load_dump(REPO / "pvebalance" / "scenarios" / "homelab.json")["api"])


# --- snapshots: one encoding, compact, a short history ---------------------------------------------

def test_a_snapshot_is_stored_compressed_and_read_back_whole() -> None:
    snap = snapshot_from_api(load_dump(REPO / "pvebalance" / "scenarios" / "mid-300.json")["api"])
    raw = snapshots.encode(snap)
    assert raw.startswith(b"zlib1:")
    assert len(raw) * 8 < len(snap.model_dump_json()), "at least 8x smaller than its JSON"
    assert snapshots.decode(raw) == snap


@pytest.mark.parametrize(("value", "readable"), [
    ("plain", True),  # written before snapshots were compressed (an upgrade), or by hand
    ("zstd9:" + "x" * 20, False),  # a format of a newer version
    ("damaged", False),  # the tag, then not zlib
    ("newer-schema", False),
])
def test_a_snapshot_in_a_format_this_version_cannot_read_reads_as_none(value: str, readable: bool) -> None:
    snap = homelab()
    doc = json.loads(snap.model_dump_json())
    doc["schema_version"] = 2
    raw = {"plain": snap.model_dump_json().encode(), "zstd9:" + "x" * 20: b"zstd9:" + b"x" * 20,
           "damaged": b"zlib1:not zlib at all",
           "newer-schema": b"zlib1:" + zlib.compress(json.dumps(doc).encode())}[value]
    assert (snapshots.decode(raw) == snap) is readable
    assert (snapshots.decode(raw) is None) is not readable


def test_the_planner_skips_a_snapshot_of_an_unknown_format_and_says_so_once(fake_redis: Redis,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from pvebalance.shared.logging import configure_logging

    configure_logging("INFO", "json")
    planner = Planner(fake_redis, Settings())
    planner.ensure_group("0")
    fake_redis.xadd(keys.SNAPSHOT_STREAM, {"snapshot": b"zstd9:whatever"})
    assert planner.next_snapshot(block_ms=10) is None
    fake_redis.xadd(keys.SNAPSHOT_STREAM, {"snapshot": b"zstd9:again"})
    assert planner.next_snapshot(block_ms=10) is None
    said = [line for line in capsys.readouterr().err.splitlines() if "not readable by this version" in line]
    assert len(said) == 1
    snap = homelab()
    snapshots.publish(fake_redis, snap, latest_ttl=30, history=10)
    got = planner.next_snapshot(block_ms=10)
    assert got is not None and got.snapshot_id == snap.snapshot_id


def test_the_stream_keeps_exactly_the_newest_retention_snapshots(fake_redis: Redis) -> None:
    snap = homelab()
    ids = [snapshots.publish(fake_redis, snap.model_copy(update={"snapshot_id": f"snap-{i}"}), 30, history=4)
           for i in range(9)]
    entries = fake_redis.xrange(keys.SNAPSHOT_STREAM)
    assert [e[0].decode() for e in entries] == ids[-4:]
    assert [snapshots.from_entry(f).snapshot_id for _, f in entries] == [  # type: ignore[union-attr]
        f"snap-{i}" for i in range(5, 9)]
    latest = snapshots.latest(fake_redis)
    assert latest is not None and latest.snapshot_id == "snap-8"


def test_the_api_reads_the_compressed_latest_snapshot() -> None:
    app, redis = fake_app(settings_with_tokens())
    snap = all_on_one()
    snapshots.publish(redis, snap, latest_ttl=30, history=10)
    answer = TestClient(app).get("/api/v1/cluster", headers=OPS)
    assert (answer.status_code, answer.json()["snapshot_id"]) == (200, snap.snapshot_id)


# --- jobs: no TTL while active, retention.jobs_days after the end ----------------------------------

def job(vmid: int = 101) -> MigrationJob:
    return MigrationJob(job_id=f"migrate-p-{vmid}", plan_id="p", vmid=vmid, name=f"vm{vmid}",
                        guest_type=GuestType.QEMU, source="pve1", target="pve2", online=True, mem_bytes=2**30)


def test_a_job_record_expires_jobs_days_after_it_ended_and_never_while_active(fake_redis: Redis) -> None:
    planner_store = JobStore(fake_redis, Retention(RetentionSettings(jobs_days=2)))
    j = job()
    assert planner_store.create(j)
    planner_store.transition(j, JobState.RUNNING, "task", upid="UPID:pve1:1:")
    assert fake_redis.ttl(keys.job(j.job_id)) == -1, "an active job never expires"
    # ended by a worker whose store has the default retention: the job's own figure (the planner's) holds
    JobStore(fake_redis).transition(j, JobState.SUCCEEDED, "on pve2")
    assert 2 * DAY - 5 <= fake_redis.ttl(keys.job(j.job_id)) <= 2 * DAY
    assert fake_redis.ttl(keys.guest_job(j.vmid)) == -2, "the claim went with the end"


def test_creating_a_job_twice_changes_nothing_and_adds_no_event(fake_redis: Redis) -> None:
    store = JobStore(fake_redis)
    j = job()
    assert store.create(j)
    store.transition(j, JobState.WAITING, "waiting for a slot")
    assert not store.create(j)
    assert store.state(j.job_id) is JobState.WAITING
    assert [e.state for _, e in store.events()] == [JobState.QUEUED, JobState.WAITING]


def test_the_event_stream_keeps_about_retention_events(fake_redis: Redis) -> None:
    store = JobStore(fake_redis, Retention(RetentionSettings(events=100)))
    for vmid in range(100, 400):
        store.create(job(vmid))
    assert 100 <= fake_redis.xlen(keys.EVENT_STREAM) < 300  # '~': Redis trims whole stream nodes


# --- plans: TTL, and their index entries and states go with them ------------------------------------

def test_plans_expire_and_their_index_and_states_go_with_them(fake_redis: Redis) -> None:
    store = PlanStore(fake_redis, Retention(RetentionSettings(plans_days=1)))
    plan = make_world(fake_redis).plan  # saved with the default 7 days
    old = plan.model_copy(update={"plan_id": "plan-old", "created_at": plan.created_at.fromtimestamp(
        time.time() - 2 * DAY, plan.created_at.tzinfo)})
    store.save(old, PlanStatus(plan_id="plan-old", state=PlanState.DONE))
    assert fake_redis.zscore(keys.PLAN_INDEX, "plan-old") is None, "older than plans_days: trimmed at once"
    assert fake_redis.hget(keys.PLAN_STATUS, "plan-old") is None
    new = plan.model_copy(update={"plan_id": "plan-new"})
    store.save(new, PlanStatus(plan_id="plan-new", state=PlanState.DONE))
    for key in (keys.plan("plan-new"), keys.PLAN_LATEST, keys.PLAN_INDEX, keys.PLAN_STATUS):
        assert 0 < fake_redis.ttl(key) <= DAY, key
    assert fake_redis.hget(keys.PLAN_STATUS, "plan-new") is not None


# --- requests: TTL from the settings, index trimmed of expired statuses ---------------------------

def test_the_request_index_drops_requests_whose_status_expired_and_keeps_open_ones(fake_redis: Redis) -> None:
    store = RequestStore(fake_redis, Retention(RetentionSettings(requests_days=1)))
    old_done = store.submit(OperatorRequest(action=RequestAction.PAUSE, at=_days_ago(3))).request.request_id
    old_open = store.submit(OperatorRequest(action=RequestAction.DRAIN, node="pve1",
                                            at=_days_ago(3))).request.request_id
    store.settle(old_open, RequestState.ACCEPTED, "draining")  # a long drain: its status lives on
    fake_redis.delete(keys.request(old_done))  # expired
    fresh = store.submit(OperatorRequest(action=RequestAction.RESUME)).request.request_id
    listed = {m.decode() for m in fake_redis.zrange(keys.REQUEST_INDEX, 0, -1)}
    assert listed == {old_open, fresh}
    assert 0 < fake_redis.ttl(keys.request(fresh)) <= DAY
    assert [s.request.request_id for s in store.open_requests()] == [old_open]


def _days_ago(n: float):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) - timedelta(days=n)


# --- caches of what left the cluster ------------------------------------------------------------------

def test_guests_that_left_the_cluster_leave_the_config_cache_and_the_load_averages(
        start_simulator: SimFactory, fake_redis: Redis) -> None:
    sim = start_simulator("homelab")
    collector = Collector(ProxmoxClient(api_settings(sim)), fake_redis)
    collector.publish(collector.snapshot(), latest_ttl=30)
    gone = next(v for v, g in sim.cluster.guests.items() if g.entry.get("status") == "running")
    assert fake_redis.hexists(keys.GUEST_CONFIG_CACHE, str(gone)) and fake_redis.hexists(keys.GUEST_LOAD, str(gone))
    fake_redis.hset(keys.NODE_RRD, "pve-gone", json.dumps({"t": 0, "stats": {}, "guest_psi": {}}))
    sim.control("POST", f"/_sim/guests/{gone}/delete", {})

    snap = collector.snapshot()
    collector.publish(snap, latest_ttl=30)

    present = {str(g.vmid) for g in snap.guests}
    assert {k.decode() for k in fake_redis.hkeys(keys.GUEST_CONFIG_CACHE)} == present
    assert {k.decode() for k in fake_redis.hkeys(keys.GUEST_LOAD)} <= present and str(gone) not in present
    assert {k.decode() for k in fake_redis.hkeys(keys.NODE_RRD)} <= {n.name for n in snap.nodes}
    assert str(gone) not in collector._memo and gone not in collector.smoother._guest_psi


def test_a_read_only_look_drops_nothing(start_simulator: SimFactory, fake_redis: Redis) -> None:
    sim = start_simulator("homelab")
    fake_redis.hset(keys.GUEST_LOAD, "99999", "0.5,1000")
    Smoother(ProxmoxClient(api_settings(sim)), fake_redis, 300, 0.2, read_only=True).apply(homelab())
    assert fake_redis.hexists(keys.GUEST_LOAD, "99999")


# --- the words, from the settings -----------------------------------------------------------------------

def test_the_api_says_how_long_plans_and_requests_are_kept_from_the_settings() -> None:
    app, _ = fake_app(settings_with_tokens(retention={"plans_days": 2, "requests_days": 0.5}))
    client = TestClient(app)
    assert client.get("/api/v1/plans/plan-nope", headers=OPS).json() == {
        "detail": "no plan plan-nope (plans are kept 2 days)"}
    assert client.get("/api/v1/requests/req-nope", headers=OPS).json() == {
        "detail": "no request req-nope (requests are kept 12 hours)"}


def test_the_api_says_for_the_page_how_long_redis_keeps_things_from_the_settings() -> None:
    app, redis = fake_app(settings_with_tokens(retention={"plans_days": 3, "jobs_days": 14, "requests_days": 1}))
    snapshots.publish(redis, all_on_one(), latest_ttl=30, history=10)
    client = TestClient(app)
    assert client.get("/api/v1/cluster", headers=OPS).json()["kept"] == (
        "plans are kept 3 days; jobs are kept 14 days after they end; requests are kept 1 day")
    assert client.get("/api/v1/plans/latest", headers=OPS).json() == {"detail": "no plan yet (plans are kept 3 days)"}


@pytest.mark.parametrize(("value", "words"), [(30, "30 days"), (1, "1 day"), (2.5, "2.5 days"),
                                              (0.25, "6 hours"), (0.002, "2.88 minutes")])
def test_retention_in_words(value: float, words: str) -> None:
    assert days(value) == words


def test_retention_settings_are_refused_with_one_line_each(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pvebalance.shared.config import ConfigError

    path = tmp_path / "p.yaml"
    path.write_text("retention:\n  jobs_days: 0\n  snapshots: 1000\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert raised.value.problems == ["retention.jobs_days: Input should be greater than 0 (got 0)",
                                     "retention.snapshots: Input should be less than or equal to 100 (got 1000)"]
