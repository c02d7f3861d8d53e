"""Each node's usage over the last hours: sampled by the API into a bounded Redis stream, served at
/api/v1/usage/history for the page's lines."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from pvebalance.services.api.app import create_app
from pvebalance.services.api.context import ApiContext
from pvebalance.services.api.history import record
from pvebalance.shared import keys
from pvebalance.shared.retention import USAGE_HISTORY_SAMPLES
from tests.api_helpers import OPS, WRONG, World, fake_app, make_world, settings_with_tokens


@pytest.fixture
def setup() -> Iterator[tuple[TestClient, World, ApiContext]]:
    app, redis = fake_app(settings_with_tokens())
    world = make_world(redis)
    with TestClient(app) as client:
        yield client, world, app.state.ctx


def later(world: World, seconds: float) -> None:
    world.save_snapshot(world.snapshot.model_copy(update={"taken_at": world.snapshot.taken_at
                                                          + timedelta(seconds=seconds)}))


def test_one_sample_a_minute_at_most_whatever_the_heartbeats(setup: tuple[TestClient, World, ApiContext]) -> None:
    _, world, ctx = setup
    assert record(ctx.read) is True
    assert record(ctx.read) is False  # the same snapshot, the next heartbeat
    later(world, 59)
    assert record(ctx.read) is False
    later(world, 61)
    assert record(ctx.read) is True
    assert world.redis.xlen(keys.USAGE_HISTORY) == 2


def test_two_api_replicas_record_a_snapshot_once(setup: tuple[TestClient, World, ApiContext]) -> None:
    _, world, ctx = setup
    other = ApiContext.connect(ctx.settings, redis=world.redis, async_redis=ctx.async_redis)
    assert record(ctx.read) is True
    assert record(other.read) is False  # they share nothing but Redis
    assert world.redis.xlen(keys.USAGE_HISTORY) == 1


def test_the_stream_keeps_the_newest_samples_only(setup: tuple[TestClient, World, ApiContext]) -> None:
    _, world, ctx = setup
    for minute in range(5):
        later(world, 60 * minute)
        assert record(ctx.read, keep=3) is True
    entries = world.redis.xrange(keys.USAGE_HISTORY)
    newest_ms = int((world.snapshot.taken_at + timedelta(minutes=4)).timestamp() * 1000)
    assert len(entries) == 3 and entries[-1][0].decode() == f"{newest_ms}-0"
    assert USAGE_HISTORY_SAMPLES == 12 * 60  # twelve hours at one a minute


def test_history_is_the_cluster_views_usage_at_each_sample(setup: tuple[TestClient, World, ApiContext]) -> None:
    client, world, ctx = setup
    record(ctx.read)
    usage_then = {n["name"]: n["usage"] for n in client.get("/api/v1/cluster", headers=OPS).json()["nodes"]}
    doc = client.get("/api/v1/usage/history", headers=OPS).json()
    assert doc["resources"] == ["memory", "cpu", "disk"] and doc["every_s"] == 60
    assert set(doc["nodes"]) == set(usage_then)
    for node, samples in doc["nodes"].items():
        [sample] = samples
        assert sample["at"] == pytest.approx(world.snapshot.taken_at.timestamp(), abs=0.001)
        assert sample["usage"] == usage_then[node]


def test_history_gives_the_last_hours_asked_for(setup: tuple[TestClient, World, ApiContext]) -> None:
    client, world, ctx = setup
    for hours_later in (0, 2, 4):
        later(world, hours_later * 3600)
        record(ctx.read)
    def counts(query: str) -> set[int]:
        return {len(s) for s in client.get(f"/api/v1/usage/history{query}", headers=OPS).json()["nodes"].values()}
    assert counts("?hours=1") == {1}
    assert counts("?hours=2") == counts("?hours=3") == {2}
    assert counts("") == counts("?hours=4") == {3}


def test_an_unreadable_sample_is_left_out(setup: tuple[TestClient, World, ApiContext]) -> None:
    client, world, ctx = setup
    world.redis.xadd(keys.USAGE_HISTORY, {"usage": '{"pve1": "full"}'}, id="1000-0")
    record(ctx.read)
    doc = client.get("/api/v1/usage/history", headers=OPS).json()
    assert all(len(samples) == 1 for samples in doc["nodes"].values())


@pytest.mark.parametrize("headers", [{}, WRONG])
def test_history_needs_a_token(setup: tuple[TestClient, World, ApiContext], headers: dict[str, str]) -> None:
    client, _, _ = setup
    assert client.get("/api/v1/usage/history", headers=headers).status_code == 401
    for hours in ("0", "13", "1.5"):
        assert client.get(f"/api/v1/usage/history?hours={hours}", headers=OPS).status_code == 422


def test_history_without_samples_is_empty(setup: tuple[TestClient, World, ApiContext]) -> None:
    client, _, _ = setup
    assert client.get("/api/v1/usage/history", headers=OPS).json()["nodes"] == {}


def test_the_apis_heartbeat_records_the_samples() -> None:
    app, redis = fake_app(settings_with_tokens())
    make_world(redis)
    with TestClient(create_app(app.state.ctx.settings, app.state.ctx, background=True)):
        for _ in range(50):
            if redis.xlen(keys.USAGE_HISTORY):
                break
            time.sleep(0.05)
    assert redis.xlen(keys.USAGE_HISTORY) == 1
