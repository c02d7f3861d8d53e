"""Shared by the API's tests: settings with tokens, a cluster in (fake) Redis, an app to call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import fakeredis
from fastapi import FastAPI
from redis import Redis

from pvebalance.engine import Policy, plan_balance
from pvebalance.engine.cluster_plan import plan_cluster
from pvebalance.services.api.app import create_app
from pvebalance.services.api.context import ApiContext
from pvebalance.shared import keys
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.config import Settings, StorageBalancingSettings, load_settings
from pvebalance.shared.jobs import DiskMoveJob, JobState, MigrationJob
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import ClusterSnapshot, Plan
from pvebalance.shared.plans import PlanState, PlanStatus, PlanStore
from pvebalance.shared.scenario import load_scenario

OPS_TOKEN = "ops-token-0123456789abcdef"
VIEWER_TOKEN = "viewer-token-0123456789ab"
OPS = {"Authorization": f"Bearer {OPS_TOKEN}"}
VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
WRONG = {"Authorization": "Bearer not-a-token-of-ours-at-all"}


def token_settings(**api: Any) -> dict[str, Any]:
    return {"tokens": [{"name": "ops", "token": OPS_TOKEN},
                       {"name": "viewer", "token": VIEWER_TOKEN, "read_only": True}], **api}


def settings_with_tokens(redis_url: str = "redis://127.0.0.1:6379/0", **sections: Any) -> Settings:
    api = sections.pop("api", {})
    return load_settings(None, api=token_settings(**api), redis={"url": redis_url}, **sections)


def all_on_one() -> ClusterSnapshot:
    doc = load_dump("all-on-one")
    return snapshot_from_api(doc["api"], cluster=doc["name"])


@dataclass
class World:
    """A cluster snapshot, its plan (recommended) and one job of it that succeeded, in Redis."""

    redis: Redis
    snapshot: ClusterSnapshot
    plan: Plan
    job_id: str

    def save_snapshot(self, snapshot: ClusterSnapshot | None = None) -> None:
        self.redis.set(keys.SNAPSHOT_LATEST, (snapshot or self.snapshot).model_dump_json())


def make_world(redis: Redis, state: PlanState = PlanState.RECOMMENDED) -> World:
    snapshot = all_on_one()
    plan = plan_balance(snapshot, Policy(max_migrations=4, exact_seconds=0))
    world = World(redis, snapshot, plan, MigrationJob.id_for(plan.plan_id, plan.migrations[0].vmid))
    world.save_snapshot()
    PlanStore(redis).save(plan, PlanStatus(plan_id=plan.plan_id, state=state))
    m = plan.migrations[0]
    job = MigrationJob(job_id=world.job_id, plan_id=plan.plan_id, vmid=m.vmid, name=m.name, guest_type=m.type,
                       source=m.source, target=m.target, online=m.online, mem_bytes=m.mem_bytes)
    store = JobStore(redis)
    store.create(job)
    store.transition(job, JobState.RUNNING, "migrating", upid="UPID:pve1:0001:")
    store.transition(job, JobState.SUCCEEDED, f"{m.name} is on {m.target}", duration_s=3.5)
    return world


def make_storage_world(redis: Redis, state: PlanState = PlanState.RECOMMENDED) -> World:
    """storage-3 (three NFS storages at 90 / 51 / 24 %) with storage balancing on: a plan of one migration
    (a band of 1 pp) and then nine disk moves; the first disk move's job succeeded (`job_id`)."""
    snapshot = load_scenario("storage-3").snapshot
    plan = plan_cluster(snapshot, Policy(balanciness=1, max_migrations=3, exact_seconds=0),
                        StorageBalancingSettings(enable=True))
    assert [a.kind for a in plan.actions] == ["migrate"] + ["move-disk"] * 9, "the world this helper promises"
    d = plan.disk_moves[0]
    job = DiskMoveJob.of(plan.plan_id, d, 1, load_settings(None))
    world = World(redis, snapshot, plan, job.job_id)
    world.save_snapshot()
    PlanStore(redis).save(plan, PlanStatus(plan_id=plan.plan_id, state=state))
    store = JobStore(redis)
    store.create(job)
    store.transition(job, JobState.RUNNING, "moving", upid="UPID:pve3:0001:")
    store.transition(job, JobState.SUCCEEDED, f"{d.disk} of {d.vmid} is on {d.target}", duration_s=42.0)
    return world


def fake_app(settings: Settings, server: fakeredis.FakeServer | None = None) -> tuple[FastAPI, Redis]:
    server = server or fakeredis.FakeServer()
    redis = fakeredis.FakeRedis(server=server)
    context = ApiContext.connect(settings, redis=redis, async_redis=fakeredis.FakeAsyncRedis(server=server))
    return create_app(settings, context, background=False), redis
