"""/metrics: what the API exports, read from Redis, labelled as prometheus-pve-exporter labels."""

from __future__ import annotations

from pathlib import Path

import fakeredis
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from pvebalance.shared import keys
from pvebalance.shared.config import load_settings
from pvebalance.shared.heartbeat import beat
from pvebalance.shared.jobs import DiskMoveJob, JobState, MigrationJob
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.plans import PlanState, PlanStore
from pvebalance.shared.requests import OperatorRequest, RequestAction, RequestState, RequestStore
from tests.api_helpers import OPS, fake_app, make_storage_world, make_world, settings_with_tokens
from tests.helpers import REPO

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> Samples:
    answer = client.get("/metrics", headers=OPS)
    assert answer.status_code == 200
    out: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_export_cluster_plan_jobs_slots_requests_and_services() -> None:
    app, redis = fake_app(settings_with_tokens())
    world = make_world(redis)
    beat(redis, "planner")
    RequestStore(redis).submit(OperatorRequest(action=RequestAction.DRAIN, node="pve1"))
    refused = RequestStore(redis).submit(OperatorRequest(action=RequestAction.PAUSE))
    RequestStore(redis).settle(refused.request.request_id, RequestState.REFUSED, "already paused")
    with TestClient(app) as client:
        samples = scrape(client)
    assert value(samples, "pvebalance_redis_up") == 1
    for node, usage in world.plan.before.nodes.items():
        assert value(samples, "pvebalance_node_usage_ratio", node=node, resource="memory") == pytest.approx(
            usage.percent / 100, abs=1e-4)
        assert value(samples, "pvebalance_node_usage_after_plan_ratio", node=node, resource="memory") == pytest.approx(
            world.plan.after.nodes[node].percent / 100, abs=1e-4)
    assert value(samples, "pvebalance_spread_pp") == pytest.approx(world.plan.before.spread_pp, abs=0.01)
    assert value(samples, "pvebalance_node_guests", node="pve1") == 40
    assert value(samples, "pvebalance_snapshot_age_seconds") >= 0
    assert value(samples, "pvebalance_migrations", state="succeeded") == 1
    assert value(samples, "pvebalance_migrations", state="queued") == 0
    assert value(samples, "pvebalance_migrations_finished_total", state="succeeded") == 1
    assert value(samples, "pvebalance_migration_duration_seconds_count", state="succeeded") == 1
    assert value(samples, "pvebalance_migration_duration_seconds_sum", state="succeeded") == 3.5
    assert value(samples, "pvebalance_migration_duration_seconds_bucket", state="succeeded", le="2.5") == 0
    assert value(samples, "pvebalance_migration_duration_seconds_bucket", state="succeeded", le="5.0") == 1
    first = world.plan.migrations[0]
    assert value(samples, "pvebalance_plan_move", id=f"qemu/{first.vmid}", node=first.source, target=first.target,
                 reason="balance") == 1
    assert value(samples, "pvebalance_latest_plan_state", state="recommended", outcome=world.plan.outcome) == 1
    assert value(samples, "pvebalance_operator_requests", action="drain", state="pending") == 1
    assert value(samples, "pvebalance_operator_requests", action="pause", state="refused") == 1
    assert value(samples, "pvebalance_service_alive", service="planner") == 1
    assert value(samples, "pvebalance_migration_slots_in_use", scope="cluster", node="") == 0
    assert value(samples, "pvebalance_migration_slots_limit", scope="cluster") == 2
    assert value(samples, "pvebalance_queue_length") == 0
    assert value(samples, "pvebalance_config", setting="balanciness_pp") == 5


def test_job_metrics_follow_state_changes_between_scrapes_and_active_jobs_carry_the_guest_id() -> None:
    app, redis = fake_app(settings_with_tokens())
    world = make_world(redis, PlanState.RUNNING)
    store = JobStore(redis)
    m = world.plan.migrations[1]
    job = MigrationJob(job_id=MigrationJob.id_for(world.plan.plan_id, m.vmid), plan_id=world.plan.plan_id,
                       vmid=m.vmid, name=m.name, guest_type=m.type, source=m.source, target=m.target, online=True)
    with TestClient(app) as client:
        store.create(job)
        redis.zadd(keys.SLOTS_CLUSTER, {job.job_id: float("inf")})
        samples = scrape(client)
        assert value(samples, "pvebalance_migrations", state="queued") == 1
        assert value(samples, "pvebalance_migration_active", id=f"qemu/{m.vmid}", node=m.source, target=m.target,
                     state="queued") == 1
        assert value(samples, "pvebalance_migration_slots_in_use", scope="cluster", node="") == 1
        store.transition(job, JobState.FAILED, "migration problems", duration_s=42.0)
        samples = scrape(client)
    assert value(samples, "pvebalance_migrations", state="queued") == 0
    assert value(samples, "pvebalance_migrations", state="failed") == 1
    assert value(samples, "pvebalance_migrations_finished_total", state="failed") == 1
    assert value(samples, "pvebalance_migration_duration_seconds_count", state="failed") == 1
    assert ("pvebalance_migration_active", (("id", f"qemu/{m.vmid}"), ("node", m.source), ("state", "queued"),
                                            ("target", m.target))) not in samples
    assert value(samples, "pvebalance_migration_slots_in_use", scope="cluster", node="") == 0


def test_plans_made_are_counted_by_outcome_from_when_the_api_started() -> None:
    server = fakeredis.FakeServer()
    world = make_world(fakeredis.FakeRedis(server=server))  # made before the API started: not counted
    app, redis = fake_app(settings_with_tokens(), server)
    with TestClient(app) as client:
        assert value(scrape(client), "pvebalance_plans_total", outcome="planned") == 0
        newer = world.plan.model_copy(update={"plan_id": "plan-newer", "created_at": world.plan.created_at.now(
            world.plan.created_at.tzinfo)})
        from pvebalance.shared.plans import PlanStatus

        PlanStore(redis).save(newer, PlanStatus(plan_id="plan-newer", state=PlanState.RUNNING))
        assert value(scrape(client), "pvebalance_plans_total", outcome="planned") == 1
        assert value(scrape(client), "pvebalance_plans_total", outcome="planned") == 1  # once, however often scraped


def exported_names(client: TestClient) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(client.get("/metrics", headers=OPS).text):
        names |= {family.name} | {s.name for s in family.samples}  # a family with no sample now is still exported
    return names


def used_metrics(expression: str) -> set[str]:
    import re

    return set(re.findall(r"\bpvebalance_[a-z_]+\b", expression))


def test_grafana_dashboard_and_alert_rules_use_only_metrics_the_api_exports() -> None:
    app, redis = fake_app(settings_with_tokens())
    make_world(redis, PlanState.RUNNING)
    with TestClient(app) as client:
        exported = exported_names(client)
    dashboard = (REPO / "deploy" / "grafana" / "pvebalance.json").read_text()
    import json

    doc = json.loads(dashboard)
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) >= {"PvebalanceMigrationFailed", "PvebalanceDiskMoveFailed", "PvebalanceSnapshotTooOld",
                           "PvebalancePlannerDown", "PvebalanceClusterUnbalanced"}
    used = set().union(*(used_metrics(e) for e in [*exprs, *alerts.values()]))
    assert used, "the dashboard and rules use pvebalance metrics"
    assert used <= exported, f"used but not exported: {sorted(used - exported)}"
    assert len(exprs) >= 8


def test_alert_rules_file_is_valid_prometheus_rules_yaml(tmp_path: Path) -> None:
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"]


def test_storage_use_and_disk_moves_are_exported_by_storage_and_guest_apart_from_migrations() -> None:
    app, redis = fake_app(settings_with_tokens())
    world = make_storage_world(redis, PlanState.RUNNING)
    waiting = world.plan.disk_moves[1]
    job = DiskMoveJob.of(world.plan.plan_id, waiting, 1, load_settings(None))
    JobStore(redis).create(job)
    for scope in job.slot_scopes():
        redis.zadd(scope, {job.job_id: float("inf")})
    with TestClient(app) as client:
        samples = scrape(client)
    shared = {s.storage: s for s in world.snapshot.storages if s.shared}
    assert {dict(labels)["storage"] for name, labels in samples if name == "pvebalance_storage_used_bytes"} == set(
        shared) == {"nfs-a", "nfs-b", "nfs-c"}
    for sid, s in shared.items():
        assert value(samples, "pvebalance_storage_used_bytes", storage=sid) == s.disk
        assert value(samples, "pvebalance_storage_size_bytes", storage=sid) == s.maxdisk
    # the succeeded disk move and the queued one count as disk moves, not as migrations
    assert value(samples, "pvebalance_disk_moves", state="succeeded") == 1
    assert value(samples, "pvebalance_disk_moves", state="queued") == 1
    assert value(samples, "pvebalance_migrations", state="succeeded") == value(
        samples, "pvebalance_migrations", state="queued") == 0
    assert value(samples, "pvebalance_disk_moves_finished_total", state="succeeded") == 1
    assert value(samples, "pvebalance_migrations_finished_total", state="succeeded") == 0
    assert value(samples, "pvebalance_disk_move_duration_seconds_count", state="succeeded") == 1
    assert value(samples, "pvebalance_disk_move_duration_seconds_sum", state="succeeded") == 42.0
    assert ("pvebalance_migration_duration_seconds_count", (("state", "succeeded"),)) not in samples
    assert value(samples, "pvebalance_disk_move_active", id=f"qemu/{waiting.vmid}", node=waiting.node,
                 disk=waiting.disk, storage=waiting.source, target=waiting.target, state="queued") == 1
    assert not [k for k in samples if k[0] == "pvebalance_migration_active"]
    for d in world.plan.disk_moves:
        assert value(samples, "pvebalance_plan_disk_move_bytes", id=f"{d.guest_type.value}/{d.vmid}", node=d.node,
                     disk=d.disk,
                     storage=d.source, target=d.target) == d.size
    assert {d.guest_type.value for d in world.plan.disk_moves} == {"qemu", "lxc"}  # a container's id is lxc/VMID
    [m] = world.plan.migrations
    assert value(samples, "pvebalance_plan_move", id=f"qemu/{m.vmid}", node=m.source, target=m.target,
                 reason=m.reason.value) == 1
    assert value(samples, "pvebalance_disk_move_slots_in_use", storage=waiting.source) == 1
    assert value(samples, "pvebalance_disk_move_slots_in_use", storage=waiting.target) == 1
    idle = ({"nfs-a", "nfs-b", "nfs-c"} - {waiting.source, waiting.target}).pop()
    assert value(samples, "pvebalance_disk_move_slots_in_use", storage=idle) == 0
    assert value(samples, "pvebalance_migration_slots_in_use", scope="cluster", node="") == 1  # every job holds one
    assert value(samples, "pvebalance_migration_slots_limit", scope="storage") == 1


def test_disk_moves_of_a_plan_no_longer_live_are_not_exported_as_planned() -> None:
    app, redis = fake_app(settings_with_tokens())
    world = make_storage_world(redis, PlanState.REJECTED)
    with TestClient(app) as client:
        samples = scrape(client)
    assert not [k for k in samples if k[0] in ("pvebalance_plan_disk_move_bytes", "pvebalance_plan_move")]
    assert value(samples, "pvebalance_disk_moves_finished_total", state="succeeded") == 1
    assert value(samples, "pvebalance_storage_used_bytes", storage="nfs-a") == next(
        s.disk for s in world.snapshot.storages if s.storage == "nfs-a")
