"""A service is alive through one step of its loop longer than its heartbeat lives (a plan of a large
cluster), and counts as hung past its limit (shared/heartbeat.kept_alive). The heartbeat lives 2 s
here (keys.HEARTBEAT_TTL, 30 s in service) so that a step of 3 s outlasts it; a beat every 2/3 s leaves
a busy test machine more than a second to be late by."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from pvebalance.engine.cluster_plan import plan_cluster
from pvebalance.services.planner import planner as planner_module
from pvebalance.services.planner.planner import Planner
from pvebalance.shared import keys
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.config import load_settings
from pvebalance.shared.heartbeat import INSTANCE, alive, beat, kept_alive
from pvebalance.shared.logging import configure_logging
from pvebalance.shared.models import Plan
from pvebalance.shared.planner_mode import published
from tests.helpers import REPO

STEP = 3.0  # seconds: longer than the heartbeat's life


@pytest.fixture(autouse=True)
def short_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "HEARTBEAT_TTL", 2)


def _warnings(err: str) -> list[dict[str, Any]]:
    return [e for line in err.splitlines() if line.startswith("{") and (e := json.loads(line))["level"] == "warning"]


def test_a_step_longer_than_the_heartbeat_keeps_the_service_alive(fake_redis: Redis) -> None:
    beat(fake_redis, "collector")
    with kept_alive(lambda: beat(fake_redis, "collector"), 60, "collector", "collector.max_step_seconds"):
        time.sleep(STEP)
        assert alive(fake_redis, "collector") == [INSTANCE]


def test_a_step_past_its_limit_lets_the_heartbeat_lapse_with_one_warning(
        fake_redis: Redis, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    beat(fake_redis, "planner")
    with kept_alive(lambda: beat(fake_redis, "planner"), 0.5, "planner", "planner.max_step_seconds"):
        time.sleep(STEP)
        assert alive(fake_redis, "planner") == [], "hung: the health check fails"
    warned = _warnings(capsys.readouterr().err)
    assert [w["event"] for w in warned] == [
        "one step of the planner has run 0.5 s: no longer reported alive (planner.max_step_seconds)"]


def test_a_beat_that_fails_while_redis_is_away_is_skipped_and_the_next_one_beats(fake_redis: Redis) -> None:
    calls: list[float] = []

    def flaky() -> None:
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise RedisConnectionError("Redis away")
        beat(fake_redis, "planner")

    with kept_alive(flaky, 60, "planner", "planner.max_step_seconds"):
        time.sleep(STEP)
        assert len(calls) >= 3 and alive(fake_redis, "planner") == [INSTANCE]


def test_a_plan_that_outlasts_the_heartbeat_leaves_the_planner_alive_and_its_mode_published(
        fake_redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def slow_plan(*args: Any, **kwargs: Any) -> Plan:  # the real plan, after as long as a large cluster's
        time.sleep(STEP)
        seen["alive"] = alive(fake_redis, "planner")
        seen["mode"] = published(fake_redis)
        return plan_cluster(*args, **kwargs)

    monkeypatch.setattr(planner_module, "plan_cluster", slow_plan)
    planner = Planner(fake_redis, load_settings())
    stop = threading.Event()
    runner = threading.Thread(target=planner.run, args=(stop,), daemon=True)
    runner.start()
    snapshot = snapshot_from_api(load_dump(REPO / "pvebalance" / "scenarios" / "all-on-one.json")["api"])
    _until(lambda: fake_redis.exists(keys.SNAPSHOT_STREAM) and bool(fake_redis.xinfo_groups(keys.SNAPSHOT_STREAM)))
    fake_redis.xadd(keys.SNAPSHOT_STREAM, {"snapshot": snapshot.model_dump_json()})
    _until(lambda: fake_redis.get(keys.PLAN_LATEST) is not None)
    stop.set()
    runner.join(10)
    assert fake_redis.get(keys.PLAN_LATEST) is not None, "the plan was made and stored"
    assert seen["alive"] == [INSTANCE], "alive all through the plan"
    mode = seen["mode"]
    assert mode is not None and mode.instance == INSTANCE
    assert mode.busy_since is not None and STEP <= time.time() - mode.busy_since < 60, \
        "says when its step began (an operator's command waits for it: test_cli_busy_planner)"


def _until(done: Callable[[], object], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
