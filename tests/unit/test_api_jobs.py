"""The API's job endpoints the page uses: cancel a job that has not started, and when a running job started."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from pvebalance.shared.jobs import JobState, MigrationJob
from pvebalance.shared.jobstore import JobStore
from tests.api_helpers import OPS, VIEWER, WRONG, World, fake_app, make_world, settings_with_tokens


@pytest.fixture
def setup() -> Iterator[tuple[TestClient, World]]:
    app, redis = fake_app(settings_with_tokens())
    world = make_world(redis)
    with TestClient(app) as client:
        yield client, world


def queued_job(world: World, index: int = 1) -> MigrationJob:
    m = world.plan.migrations[index]
    job = MigrationJob(job_id=MigrationJob.id_for(world.plan.plan_id, m.vmid), plan_id=world.plan.plan_id,
                       vmid=m.vmid, name=m.name, guest_type=m.type, source=m.source, target=m.target,
                       online=m.online, mem_bytes=m.mem_bytes)
    JobStore(world.redis).create(job)
    return job


def test_cancel_a_queued_job_ends_it_cancelled_with_its_event_as_the_cli_does(
        setup: tuple[TestClient, World]) -> None:
    client, world = setup
    job = queued_job(world)
    answer = client.post(f"/api/v1/jobs/{job.job_id}/cancel", headers=OPS)
    assert (answer.status_code, answer.json()) == (200, {"job_id": job.job_id, "state": "cancelled"})
    store = JobStore(world.redis)
    assert store.state(job.job_id) == JobState.CANCELLED
    assert job.job_id not in store.active_jobs()
    [event] = [e for _, e in store.events() if e.job_id == job.job_id and e.state == JobState.CANCELLED]
    assert event.message == "cancelled by the operator"


def test_cancel_a_job_that_has_ended_is_409_and_changes_nothing(setup: tuple[TestClient, World]) -> None:
    client, world = setup
    answer = client.post(f"/api/v1/jobs/{world.job_id}/cancel", headers=OPS)
    assert (answer.status_code, answer.json()) == (
        409, {"detail": f"job {world.job_id} is succeeded: only queued or waiting jobs can be cancelled"})
    assert JobStore(world.redis).state(world.job_id) == JobState.SUCCEEDED


def test_cancel_an_unknown_job_is_404(setup: tuple[TestClient, World]) -> None:
    client, _ = setup
    answer = client.post("/api/v1/jobs/migrate-nope-1/cancel", headers=OPS)
    assert (answer.status_code, answer.json()) == (404, {"detail": "no job migrate-nope-1"})


@pytest.mark.parametrize(("headers", "status"), [({}, 401), (WRONG, 401), (VIEWER, 403)])
def test_cancel_needs_a_writing_token(setup: tuple[TestClient, World], headers: dict[str, str], status: int) -> None:
    client, world = setup
    job = queued_job(world)
    assert client.post(f"/api/v1/jobs/{job.job_id}/cancel", headers=headers).status_code == status
    assert JobStore(world.redis).state(job.job_id) == JobState.QUEUED


def test_a_job_shows_when_it_started_migrating(setup: tuple[TestClient, World]) -> None:
    client, world = setup
    job = queued_job(world)
    assert client.get(f"/api/v1/jobs/{job.job_id}", headers=OPS).json()["started_at"] is None
    JobStore(world.redis).transition(job, JobState.RUNNING, "migrating", upid="UPID:pve1:0002:")
    shown = client.get(f"/api/v1/jobs/{job.job_id}", headers=OPS).json()
    assert shown["state"] == "running" and shown["started_at"] is not None
    assert shown["started_at"] >= shown["created_at"]
