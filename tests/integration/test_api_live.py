"""The API for real: `pvebalance api` in its own process (uvicorn), a redis-server, the collector and
planner, rq workers, the simulator over HTTPS. Requests end as the real planner decides, /metrics
follows a real drain, the event stream carries the workers' events, webhooks reach a local receiver."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from rq import Queue

from pvebalance.shared import keys
from pvebalance.shared.jobstore import JobStore
from tests.api_helpers import OPS
from tests.api_live import LiveCluster, start_live, wait_for
from tests.helpers import SimFactory
from tests.receiver import Receiver

pytestmark = pytest.mark.integration


@pytest.fixture
def live(start_simulator: SimFactory, real_redis: Redis, redis_url: str,
         tmp_path: Path) -> Iterator[Callable[..., LiveCluster]]:
    started: list[LiveCluster] = []

    def start(scenario: str, workers: int = 0, **sections: Any) -> LiveCluster:
        cluster = start_live(start_simulator(scenario, time_scale=0.01), real_redis, redis_url, tmp_path, workers,
                             **sections)
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.close()


def nothing_enqueued(redis: Redis) -> bool:
    return (Queue(keys.MIGRATION_QUEUE, connection=redis).count == 0 and not redis.smembers(keys.ACTIVE_JOBS)
            and not redis.keys(f"{keys.PREFIX}:job:*"))


def test_drain_that_cannot_fit_answers_202_then_ends_refused_with_the_guests_and_nothing_enqueued(
        live: Callable[..., LiveCluster]) -> None:
    c = live("tight", workers=0, balancing={"mode_of_operation": "automatic", "enable": False})

    answer = c.post("/api/v1/nodes/pve1/drain")

    assert answer.status_code == 202
    status_url = answer.json()["status_url"]
    wait_for("the planner to settle the request", lambda: c.get(status_url).json()["state"] != "pending", 30)
    status = c.get(status_url).json()
    assert status["state"] == "refused"
    details = status["details"]
    assert status["reason"] == f"the other nodes cannot take every guest of pve1: {len(details)} do not fit"
    on_pve1 = set(c.guests_on("pve1"))
    for detail in details:  # each guest that does not fit, by name, and why
        vmid, why = re.fullmatch(r"guest (\d+): (.*)", detail).groups()  # type: ignore[union-attr]
        assert int(vmid) in on_pve1 and why.startswith("no node may take it with room to spare"), detail
    assert details
    assert status["request"]["who"] == "ops"
    assert c.redis.hget(keys.DRAINED, "pve1") is None
    assert nothing_enqueued(c.redis)


def scrape(c: LiveCluster) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = c.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def read_stream(c: LiveCluster, after: str, seen: list[dict[str, Any]], stop: threading.Event) -> None:
    url = f"{c.url}/api/v1/events?after={after}"
    try:
        with httpx.stream("GET", url, headers=OPS, timeout=httpx.Timeout(30, read=60)) as answer:
            for line in answer.iter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                if stop.is_set():
                    return
    except httpx.HTTPError:
        if not stop.is_set():
            raise


def first_event(c: LiveCluster, headers: dict[str, str]) -> dict[str, Any]:
    with httpx.stream("GET", c.url + "/api/v1/events", headers=headers, timeout=httpx.Timeout(30, read=30)) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("data: "):
                event: dict[str, Any] = json.loads(line[6:])
                return event
    raise AssertionError("the stream ended without an event")


def test_metrics_follow_a_drain_from_queued_to_succeeded_and_the_stream_and_webhooks_carry_it(
        live: Callable[..., LiveCluster]) -> None:
    with Receiver() as receiver:
        c = live("homelab", workers=0, notifications={"webhooks": [{"url": receiver.url}]})
        running = c.guests_on("pve2", running_only=True)
        assert running, "homelab has running guests on pve2"
        stream: list[dict[str, Any]] = []
        stop = threading.Event()
        last = c.redis.xrevrange(keys.EVENT_STREAM, count=1)
        after = last[0][0].decode() if last else "0-0"
        reader = threading.Thread(target=read_stream, args=(c, after, stream, stop), daemon=True)
        reader.start()
        wait_for("the API's notifier to start", lambda: c.redis.hget(keys.NOTIFIER_CURSOR, "events") is not None, 30)

        request_id = c.post("/api/v1/nodes/pve2/drain").json()["request_id"]
        store = JobStore(c.redis)
        wait_for("the drain accepted", lambda: c.get(f"/api/v1/requests/{request_id}").json()["state"] == "accepted",
                 30)
        # the planner settles the request accepted, then enqueues the drain's jobs
        wait_for("a job per running guest of pve2", lambda: len(store.active_jobs()) == len(running), 30)
        jobs = sorted(store.active_jobs())
        queued = scrape(c)
        assert queued[("pvebalance_migrations", (("state", "queued"),))] == len(jobs)
        assert queued[("pvebalance_queue_length", ())] == len(jobs)
        assert queued.get(("pvebalance_migration_duration_seconds_count", (("state", "succeeded"),)), 0) == 0

        c.start_workers(2)
        wait_for("the drain done", lambda: c.get(f"/api/v1/requests/{request_id}").json()["state"] == "done", 120)

        ended = scrape(c)
        states = {j: store.state(j) for j in jobs}
        assert {s.value for s in states.values() if s} == {"succeeded"}
        assert ended[("pvebalance_migrations", (("state", "queued"),))] == 0
        assert ended[("pvebalance_migrations", (("state", "succeeded"),))] == len(jobs)
        assert ended[("pvebalance_migrations_finished_total", (("state", "succeeded"),))] == len(jobs)
        assert ended[("pvebalance_migration_duration_seconds_count", (("state", "succeeded"),))] == len(jobs)
        durations = [store.load(j).duration_s for j in jobs]
        assert ended[("pvebalance_migration_duration_seconds_sum", (("state", "succeeded"),))] == pytest.approx(
            sum(durations))
        assert ended[("pvebalance_node_guests", (("node", "pve2"),))] == len(c.guests_on("pve2"))  # stopped ones
        assert ended[("pvebalance_node_drained", (("node", "pve2"),))] == 1
        assert c.guests_on("pve2", running_only=True) == []

        wait_for("each job's end on the stream", lambda: {e["job_id"] for e in stream if e["state"] == "succeeded"}
                 >= set(jobs), 30)
        stop.set()
        wait_for("the drain_done webhook", lambda: "drain_done" in receiver.events(), 30)
    for job_id in jobs:
        states = [e["state"] for e in stream if e["job_id"] == job_id]
        assert (states[0], states[-1], "running" in states) == ("queued", "succeeded", True), states  # maybe waiting
    resumed = first_event(c, {**OPS, "Last-Event-ID": after})  # a client reconnecting from where it was
    assert resumed == stream[0]
    drain_done = next(r for r in receiver.received if r["event"] == "drain_done")
    assert drain_done["data"]["request"]["request_id"] == request_id


def test_readyz_is_ready_with_the_services_running(live: Callable[..., LiveCluster]) -> None:
    c = live("homelab")
    wait_for("ready", lambda: c.get("/readyz").status_code == 200, 30)
    body = c.get("/readyz").json()
    assert body["ready"] and body["redis"] and body["snapshot_age_s"] < 120
    assert body["planners"], "the planner is seen reading the snapshot stream"


def test_the_api_command_refuses_a_port_in_use_in_one_line(live: Callable[..., LiveCluster]) -> None:
    import subprocess
    import sys

    c = live("homelab")
    port = c.url.rsplit(":", 1)[1]
    out = subprocess.run([sys.executable, "-m", "pvebalance", "api", "-c", str(c.config), "--port", port],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
