"""The HTTP API on a cluster in (fake) Redis: every endpoint, its answers to bad input, and auth."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from pvebalance.services.api.app import create_app
from pvebalance.services.api.context import ApiContext
from pvebalance.shared import keys
from pvebalance.shared.config import ConfigError, load_settings
from pvebalance.shared.heartbeat import beat
from pvebalance.shared.jobs import JobState
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.logging import configure_logging
from pvebalance.shared.plans import PlanState
from pvebalance.shared.requests import RequestAction, RequestState, RequestStore
from tests.api_helpers import (
    OPS,
    OPS_TOKEN,
    VIEWER,
    VIEWER_TOKEN,
    WRONG,
    World,
    fake_app,
    make_world,
    settings_with_tokens,
)


@pytest.fixture
def setup() -> Iterator[tuple[TestClient, World]]:
    app, redis = fake_app(settings_with_tokens())
    world = make_world(redis)
    with TestClient(app) as client:
        yield client, world


def stored_requests(redis: Redis) -> list[str]:
    return [f[b"request"].decode() for _, f in redis.xrange(keys.REQUEST_STREAM)]


def test_healthz_answers_without_token_or_redis() -> None:
    settings = settings_with_tokens("redis://127.0.0.1:1/0")
    with TestClient(create_app(settings, background=False)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_needs_redis_a_fresh_snapshot_and_a_planner(setup: tuple[TestClient, World]) -> None:
    client, world = setup
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["problems"] == ["no planner alive"]
    beat(world.redis, "planner")
    assert client.get("/readyz").status_code == 200
    world.save_snapshot(world.snapshot.model_copy(update={"taken_at": world.snapshot.taken_at.replace(year=2020)}))
    answer = client.get("/readyz")
    assert answer.status_code == 503 and "old (planner.max_snapshot_age: 120 s)" in answer.json()["problems"][0]


def test_redis_away_is_503_with_one_line_and_metrics_say_so() -> None:
    settings = settings_with_tokens("redis://127.0.0.1:1/0")
    with TestClient(create_app(settings, background=False)) as client:
        answer = client.get("/api/v1/cluster", headers=OPS)
        assert answer.status_code == 503
        assert answer.json() == {"detail": "Redis does not answer; try again shortly"}
        assert client.get("/readyz").json()["problems"] == ["Redis does not answer: ConnectionError"]
        assert "pvebalance_redis_up 0.0" in client.get("/metrics", headers=OPS).text


@pytest.mark.parametrize(("headers", "status"), [({}, 401), (WRONG, 401), (VIEWER, 200), (OPS, 200)])
@pytest.mark.parametrize("path", ["/api/v1/cluster", "/api/v1/plans/latest", "/api/v1/jobs", "/api/v1/requests",
                                  "/metrics"])
def test_reads_need_a_known_token_by_default(setup: tuple[TestClient, World], path: str,
                                             headers: dict[str, str], status: int) -> None:
    client, _ = setup
    answer = client.get(path, headers=headers)
    assert answer.status_code == status
    if status == 401:
        assert answer.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("headers", "status"), [({}, 200), (VIEWER, 200), (WRONG, 401)])
def test_reads_are_open_when_configured_but_a_wrong_token_is_still_refused(headers: dict[str, str],
                                                                           status: int) -> None:
    app, redis = fake_app(settings_with_tokens(api={"read_requires_token": False}))
    make_world(redis)
    with TestClient(app) as client:
        assert client.get("/api/v1/cluster", headers=headers).status_code == status


@pytest.mark.parametrize(("headers", "status"), [({}, 401), (WRONG, 401), (VIEWER, 403)])
def test_writes_refused_without_a_writing_token_store_nothing(setup: tuple[TestClient, World],
                                                              headers: dict[str, str], status: int) -> None:
    client, world = setup
    answer = client.post("/api/v1/nodes/pve1/drain", headers=headers)
    assert answer.status_code == status
    assert stored_requests(world.redis) == []


def request_cases(world: World) -> list[tuple[str, dict[str, Any] | None, dict[str, Any]]]:
    plan_id = world.plan.plan_id
    return [
        ("/api/v1/nodes/pve1/drain", None, {"action": "drain", "node": "pve1", "include_stopped": False}),
        ("/api/v1/nodes/pve2/drain", {"include_stopped": True}, {"action": "drain", "node": "pve2",
                                                                 "include_stopped": True}),
        ("/api/v1/nodes/pve1/undrain", None, {"action": "undrain", "node": "pve1"}),
        ("/api/v1/rebalance", {"dry_run": True}, {"action": "rebalance", "dry_run": True}),
        (f"/api/v1/plans/{plan_id}/approve", None, {"action": "approve", "plan_id": plan_id, "vmids": None}),
        (f"/api/v1/plans/{plan_id}/approve", {"vmids": [101]}, {"action": "approve", "vmids": [101]}),
        (f"/api/v1/plans/{plan_id}/reject", {"reason": "not now"}, {"action": "reject", "reason": "not now"}),
        ("/api/v1/pause", {"seconds": 600, "reason": "backups"}, {"action": "pause", "seconds": 600.0,
                                                                 "reason": "backups"}),
        ("/api/v1/pause", None, {"action": "pause", "seconds": None}),
        ("/api/v1/resume", None, {"action": "resume"}),
    ]


@pytest.mark.parametrize("case", range(10))
def test_each_operator_request_answers_202_and_is_stored_pending_with_who_asked(
        setup: tuple[TestClient, World], case: int) -> None:
    client, world = setup
    path, body, expected = request_cases(world)[case]
    answer = client.post(path, headers=OPS, json=body) if body is not None else client.post(path, headers=OPS)
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert accepted["state"] == "pending"
    assert accepted["status_url"] == f"/api/v1/requests/{accepted['request_id']}"
    [raw] = stored_requests(world.redis)
    stored = json.loads(raw)
    assert stored["request_id"] == accepted["request_id"] and stored["who"] == "ops"
    assert {k: stored[k] for k in expected} == expected
    status = client.get(accepted["status_url"], headers=VIEWER).json()
    assert status["state"] == "pending" and status["request"]["action"] == expected["action"]


def test_request_state_shows_what_the_planner_settled(setup: tuple[TestClient, World]) -> None:
    client, world = setup
    request_id = client.post("/api/v1/nodes/pve1/drain", headers=OPS).json()["request_id"]
    RequestStore(world.redis).settle(request_id, RequestState.REFUSED, "3 guests do not fit",
                                     details=["101 web1: no node has 8.0 GiB free"])
    status = client.get(f"/api/v1/requests/{request_id}", headers=OPS).json()
    assert (status["state"], status["reason"], status["details"]) == (
        "refused", "3 guests do not fit", ["101 web1: no node has 8.0 GiB free"])
    assert [r["request"]["request_id"] for r in client.get("/api/v1/requests", headers=OPS).json()] == [request_id]


@pytest.mark.parametrize(("method", "path", "detail"), [
    ("post", "/api/v1/nodes/pve9/drain", "no node pve9 in the cluster (nodes: pve1, pve2, pve3, pve4)"),
    ("post", "/api/v1/nodes/pve9/undrain", "no node pve9 in the cluster (nodes: pve1, pve2, pve3, pve4)"),
    ("post", "/api/v1/plans/plan-nope/approve", "no plan plan-nope (plans are kept 7 days)"),
    ("post", "/api/v1/plans/plan-nope/reject", "no plan plan-nope (plans are kept 7 days)"),
    ("get", "/api/v1/plans/plan-nope", "no plan plan-nope (plans are kept 7 days)"),
    ("get", "/api/v1/jobs/migrate-nope-1", "no job migrate-nope-1"),
    ("get", "/api/v1/requests/req-nope", "no request req-nope (requests are kept 30 days)"),
])
def test_unknown_node_plan_job_or_request_is_404_with_one_line(setup: tuple[TestClient, World], method: str,
                                                               path: str, detail: str) -> None:
    client, world = setup
    answer = getattr(client, method)(path, headers=OPS)
    assert (answer.status_code, answer.json()) == (404, {"detail": detail})
    assert stored_requests(world.redis) == []


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/nodes/pve1/drain", "{not json"),
    ("/api/v1/nodes/pve1/drain", '{"include_stopped": "perhaps"}'),
    ("/api/v1/nodes/pve1/drain", '{"include_stoped": true}'),
    ("/api/v1/pause", '{"seconds": -5}'),
    ("/api/v1/pause", "[1, 2]"),
    ("/api/v1/rebalance", '{"dry_run": true'),
    ("/api/v1/rebalance", '{"dry_run": 0}'),
    ("/api/v1/pause", '{"seconds": "600"}'),
    ("/api/v1/plans/PLAN/approve", '{"vmids": ["101"]}'),
    ("/api/v1/plans/PLAN/approve", '{"vmids": [true]}'),
    ("/api/v1/placement", '{"memory": "8589934592"}'),
    ("/api/v1/placement", '{"memory": 8589934592, "local": 1}'),
])
def test_malformed_or_wrong_bodies_are_422_and_store_nothing(setup: tuple[TestClient, World], path: str,
                                                             body: str) -> None:
    client, world = setup
    path = path.replace("PLAN", world.plan.plan_id)
    answer = client.post(path, headers={**OPS, "Content-Type": "application/json"}, content=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["msg"]
    assert stored_requests(world.redis) == []


@pytest.mark.parametrize(("query", "status"), [("?state=bogus", 422), ("?vmid=-1", 422), ("?limit=0", 422),
                                               ("?limit=5000", 422)])
def test_job_filters_refuse_bad_values(setup: tuple[TestClient, World], query: str, status: int) -> None:
    client, _ = setup
    assert client.get(f"/api/v1/jobs{query}", headers=OPS).status_code == status


@pytest.mark.parametrize(("path", "unknown", "said"), [
    ("/api/v1/jobs?plan=P", ["plan"], "unknown query parameter: /api/v1/jobs takes limit, plan_id, state, vmid"),
    ("/api/v1/plans?limit=3&newest=1", ["newest"], "unknown query parameter: /api/v1/plans takes limit"),
    ("/api/v1/cluster?verbose=1&x=2", ["verbose", "x"], "unknown query parameter: /api/v1/cluster takes no query "
     "parameter"),
])
def test_a_query_parameter_the_endpoint_does_not_take_is_a_422_naming_it_and_what_it_takes(
        setup: tuple[TestClient, World], path: str, unknown: list[str], said: str) -> None:
    client, _ = setup
    answer = client.get(path, headers=OPS)
    assert answer.status_code == 422
    assert [(e["loc"], e["msg"]) for e in answer.json()["detail"]] == [(["query", name], said) for name in unknown]


@pytest.mark.parametrize("path", ["/healthz?ts=1", "/readyz?ts=1", "/metrics?ts=1"])
def test_probes_answer_whatever_the_query(setup: tuple[TestClient, World], path: str) -> None:
    client, _ = setup
    assert client.get(path, headers=OPS).status_code != 422


def test_cluster_shows_usage_now_and_after_the_plan_as_the_engine_counts_it(setup: tuple[TestClient, World]) -> None:
    client, world = setup
    view = client.get("/api/v1/cluster", headers=OPS).json()
    assert [n["name"] for n in view["nodes"]] == ["pve1", "pve2", "pve3", "pve4"]
    assert view["spread_pp"] == pytest.approx(world.plan.before.spread_pp, abs=0.01)
    assert view["plan_id"] == world.plan.plan_id
    for node in view["nodes"]:
        assert node["usage"]["memory"] == pytest.approx(world.plan.before.nodes[node["name"]].percent, abs=0.01)
        # the first move's job succeeded but the snapshot still shows the guest on its source: it counts
        assert node["usage_after_plan"]["memory"] == pytest.approx(world.plan.after.nodes[node["name"]].percent,
                                                                   abs=0.01)
        assert set(node["usage"]) == {"memory", "cpu", "disk"}
    assert sum(n["guests"] for n in view["nodes"]) == len(view["guests"]) == 40
    assert view["guests"][0]["id"] == f"qemu/{view['guests'][0]['vmid']}"


def test_cluster_without_a_snapshot_is_503(setup: tuple[TestClient, World]) -> None:
    client, world = setup
    world.redis.delete(keys.SNAPSHOT_LATEST)
    answer = client.get("/api/v1/cluster", headers=OPS)
    assert (answer.status_code, answer.json()["detail"]) == (503, "no cluster snapshot yet: is the collector running?")


def test_after_the_plan_equals_now_once_the_plan_is_rejected(setup: tuple[TestClient, World]) -> None:
    client, world = setup
    from pvebalance.shared.plans import PlanStore

    PlanStore(world.redis).set_state(world.plan.plan_id, PlanState.REJECTED)
    for node in client.get("/api/v1/cluster", headers=OPS).json()["nodes"]:
        assert node["usage_after_plan"] == node["usage"]


def test_plans_show_moves_with_reasons_job_states_and_the_plan_state(setup: tuple[TestClient, World]) -> None:
    client, world = setup
    latest = client.get("/api/v1/plans/latest", headers=OPS).json()
    assert latest == client.get(f"/api/v1/plans/{world.plan.plan_id}", headers=OPS).json()
    assert latest["status"]["state"] == "recommended"
    assert latest["plan"]["before"]["spread_pp"] == world.plan.before.spread_pp
    first, second = latest["moves"][:2]
    assert (first["job_id"], first["job_state"]) == (world.job_id, "succeeded")
    assert (second["job_state"], second["reason"]) == (None, "balance")
    assert first["detail"] and first["id"] == f"qemu/{first['vmid']}"


def test_no_plan_yet_is_404(setup: tuple[TestClient, World]) -> None:
    client, world = setup
    world.redis.delete(keys.PLAN_LATEST)
    assert client.get("/api/v1/plans/latest", headers=OPS).json() == {"detail": "no plan yet (plans are kept 7 days)"}


def test_jobs_filter_by_state_plan_and_vmid_and_one_job_has_its_events(setup: tuple[TestClient, World]) -> None:
    client, world = setup
    vmid = world.plan.migrations[0].vmid

    def ids(query: str) -> list[str]:
        return [j["job_id"] for j in client.get(f"/api/v1/jobs{query}", headers=OPS).json()]

    assert ids("") == [world.job_id]
    assert ids("?state=succeeded") == ids(f"?plan_id={world.plan.plan_id}&state=succeeded") == [world.job_id]
    assert ids(f"?vmid={vmid}") == [world.job_id]
    assert ids("?state=failed") == ids(f"?vmid={vmid + 1000}") == ids("?plan_id=plan-other") == []
    job = client.get(f"/api/v1/jobs/{world.job_id}", headers=OPS).json()
    assert (job["state"], job["duration_s"], job["upid"]) == ("succeeded", 3.5, "UPID:pve1:0001:")
    assert [e["state"] for e in job["events"]] == ["queued", "running", "succeeded"]


def test_tokens_never_reach_the_log_the_token_name_does(setup: tuple[TestClient, World]) -> None:
    client, _ = setup
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    client.get("/api/v1/cluster", headers=VIEWER)
    client.post("/api/v1/nodes/pve1/drain", headers=OPS)
    client.post("/api/v1/nodes/pve1/drain", headers=VIEWER)
    client.get("/api/v1/cluster", headers=WRONG)
    logged = out.getvalue()
    assert OPS_TOKEN not in logged and VIEWER_TOKEN not in logged and "not-a-token" not in logged
    lines = [json.loads(line) for line in logged.splitlines()]
    seen = {(line.get("path"), line.get("status"), line.get("who")) for line in lines if line["event"] == "request"}
    assert seen >= {
        ("/api/v1/cluster", 200, "viewer"), ("/api/v1/nodes/pve1/drain", 202, "ops"),
        ("/api/v1/nodes/pve1/drain", 403, "viewer"), ("/api/v1/cluster", 401, None)}


@pytest.mark.parametrize(("tokens", "message"), [
    ([{"name": "a", "token": "short"}], "an API token must be at least 16 characters"),
    ([{"name": "a", "token": "x" * 20}, {"name": "a", "token": "y" * 20}], "each token needs a name of its own"),
    ([{"name": "a", "token": 12345678901234567890}], "api.tokens.0.token: Input should be a valid string"),
])
def test_bad_api_tokens_in_the_config_are_one_line_without_the_token(tokens: list[dict[str, Any]],
                                                                     message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, api={"tokens": tokens})
    assert message in str(caught.value)
    assert "12345678901234567890" not in str(caught.value) and "xxxxxxxx" not in str(caught.value)


def test_openapi_document_and_docs_page_are_served_without_a_cdn(setup: tuple[TestClient, World]) -> None:
    client, _ = setup
    doc = client.get("/api/v1/openapi.json").json()
    assert {"/api/v1/cluster", "/api/v1/plans/latest", "/api/v1/plans/{plan_id}", "/api/v1/jobs",
            "/api/v1/jobs/{job_id}", "/api/v1/events", "/api/v1/nodes/{node}/drain", "/api/v1/requests/{request_id}",
            "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])
    page = client.get("/api/v1/docs").text
    assert "/api/v1/docs-static/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    assert client.get("/api/v1/docs-static/swagger-ui-bundle.js").status_code == 200


def test_web_page_and_its_script_are_served_and_load_nothing_from_outside(setup: tuple[TestClient, World]) -> None:
    client, _ = setup
    page = client.get("/").text
    scripts = [client.get(f"/static/{name}").text for name in ("storage.js", "app.js")]
    assert 'src="/static/storage.js"' in page and 'src="/static/app.js"' in page
    assert client.get("/static/app.css").status_code == 200 and all(scripts)
    for text in (page, *scripts):
        assert "http://" not in text and "https://" not in text


def test_cancelled_job_makes_the_after_view_drop_its_move(setup: tuple[TestClient, World]) -> None:
    client, world = setup
    from pvebalance.shared.jobs import MigrationJob

    m = world.plan.migrations[1]
    job = MigrationJob(job_id=MigrationJob.id_for(world.plan.plan_id, m.vmid), plan_id=world.plan.plan_id,
                       vmid=m.vmid, name=m.name, guest_type=m.type, source=m.source, target=m.target, online=True,
                       mem_bytes=m.mem_bytes)
    def after_plan() -> dict[str, float]:
        nodes = client.get("/api/v1/cluster", headers=OPS).json()["nodes"]
        return {n["name"]: n["usage_after_plan"]["memory"] for n in nodes}

    before = after_plan()
    JobStore(world.redis).create(job)
    JobStore(world.redis).transition(job, JobState.CANCELLED, "cancelled by the operator")
    after = after_plan()
    assert after[m.source] > before[m.source] and after[m.target] < before[m.target]


def test_request_actions_cover_every_action_the_planner_knows(setup: tuple[TestClient, World]) -> None:
    _, world = setup
    covered = {expected["action"] for _, _, expected in request_cases(world)}
    assert covered == {a.value for a in RequestAction}


def test_context_connects_lazily_so_the_api_starts_while_redis_is_away() -> None:
    context = ApiContext.connect(settings_with_tokens("redis://127.0.0.1:1/0"))
    assert context.requests is not None  # no connection made yet: nothing raised


def test_placement_answers_as_best_node_json_does(setup: tuple[TestClient, World]) -> None:
    import subprocess
    import sys

    client, _ = setup
    cli = subprocess.run([sys.executable, "-m", "pvebalance", "best-node", "--scenario", "all-on-one", "--memory", "8G",
                          "--cores", "2", "--json"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    answer = client.post("/api/v1/placement", headers=VIEWER, json={"memory": 8 * 2**30, "cores": 2})
    assert answer.status_code == 200
    assert answer.json() == json.loads(cli.stdout)
    assert answer.json()["best"] in {"pve2", "pve3", "pve4"}


@pytest.mark.parametrize(("body", "status"), [
    ({"memory": 0}, 422), ({"memory": 2**30, "cores": 0}, 422), ({"memory": 2**30, "colour": "red"}, 422),
    ({}, 422), ({"memory": 2**30, "type": "docker"}, 422),
])
def test_placement_refuses_bad_guests(setup: tuple[TestClient, World], body: dict[str, Any], status: int) -> None:
    client, _ = setup
    assert client.post("/api/v1/placement", headers=VIEWER, json=body).status_code == status


def test_placement_takes_an_integer_written_as_5_0_as_json_schema_does(setup: tuple[TestClient, World]) -> None:
    client, _ = setup
    answer = client.post("/api/v1/placement", headers=VIEWER, json={"memory": 8.0 * 2**30, "cores": 2.0})
    assert answer.status_code == 200 and answer.json()["best"]


def test_placement_of_a_guest_no_node_can_take_says_why_per_node(setup: tuple[TestClient, World]) -> None:
    client, _ = setup
    answer = client.post("/api/v1/placement", headers=VIEWER, json={"memory": 2**50}).json()
    assert answer["best"] is None and answer["ranked"] == []
    assert set(answer["refused"]) == {"pve1", "pve2", "pve3", "pve4"}
    assert answer["reason"].startswith("no node may take a guest of")


def test_cluster_spread_leaves_out_drained_nodes_as_the_planner_does(setup: tuple[TestClient, World]) -> None:
    from pvebalance.engine import Policy
    from pvebalance.engine.rules import build_constraints
    from pvebalance.engine.state import PlanState as EngineState

    client, world = setup
    world.redis.hset(keys.DRAINED, "pve1", json.dumps({"request_id": "req-x", "who": "ops"}))
    policy = Policy(maintenance_nodes=frozenset({"pve1"}))
    expected = EngineState(world.snapshot, policy, build_constraints(world.snapshot, policy)).spread()
    view = client.get("/api/v1/cluster", headers=OPS).json()
    assert view["spread_pp"] == pytest.approx(expected, abs=0.01) and expected != pytest.approx(
        world.plan.before.spread_pp, abs=0.01)
    assert next(n for n in view["nodes"] if n["name"] == "pve1")["drained"] is True


def test_a_guest_parked_on_the_way_shows_both_moves_with_their_own_jobs_and_ends_where_the_last_puts_it(
        setup: tuple[TestClient, World]) -> None:
    from pvebalance.shared.jobs import job_ids
    from pvebalance.shared.plans import PlanStatus, PlanStore

    client, world = setup
    first = world.plan.migrations[0]
    park = first.target
    final = next(n for n in ("pve2", "pve3", "pve4") if n != park)
    plan = world.plan.model_copy(update={"plan_id": "plan-parked", "actions": [
        first, first.model_copy(update={"source": park, "target": final})]})
    PlanStore(world.redis).save(plan, PlanStatus(plan_id=plan.plan_id, state=PlanState.RUNNING))

    moves = client.get("/api/v1/plans/plan-parked", headers=OPS).json()["moves"]
    assert [m["job_id"] for m in moves] == job_ids(plan) and len(set(job_ids(plan))) == 2
    nodes = {n["name"]: n for n in client.get("/api/v1/cluster", headers=OPS).json()["nodes"]}
    assert nodes[park]["usage_after_plan"]["memory"] == nodes[park]["usage"]["memory"]
    assert nodes[final]["usage_after_plan"]["memory"] > nodes[final]["usage"]["memory"]
    assert nodes["pve1"]["usage_after_plan"]["memory"] < nodes["pve1"]["usage"]["memory"]
