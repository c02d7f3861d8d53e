"""Settings and request fields that did nothing (issue 20, item 6), each honoured now: a rebalance's
`dry_run` enqueues nothing and leaves nothing to approve; a reject's `reason` is kept with the plan's
state and shown where plans are shown; an ignored node is no drain target; a stored plan of a schema
this planner does not know is treated as absent (said once), not a reason to stop planning."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq import Queue
from typer.testing import CliRunner

from pvebalance.cli import app as cli_app
from pvebalance.services.planner.planner import Planner
from pvebalance.shared import keys
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.config import Settings
from pvebalance.shared.logging import configure_logging
from pvebalance.shared.models import ClusterSnapshot
from pvebalance.shared.plans import PlanState
from pvebalance.shared.requests import OperatorRequest, RequestAction, RequestState
from tests.api_helpers import OPS, World, fake_app, make_world, settings_with_tokens
from tests.helpers import REPO


def homelab() -> ClusterSnapshot:
    snap = snapshot_from_api(load_dump(REPO / "pvebalance" / "scenarios" / "homelab.json")["api"])
    return snap.model_copy(update={"taken_at": datetime.now(UTC)})


def asked(planner: Planner, snapshot: ClusterSnapshot | None, **fields: object) -> tuple[RequestState, str, str | None]:
    """An operator's request, as the planner handles it: its final state, reason and plan."""
    request = OperatorRequest(who="alice", **fields)  # type: ignore[arg-type]
    planner.operator.store.submit(request)
    planner.operator.handle(request, snapshot)
    status = planner.operator.store.status(request.request_id)
    assert status is not None
    return status.state, status.reason, status.plan_id


def test_a_dry_run_rebalance_enqueues_nothing_and_leaves_no_plan_anyone_could_approve(fake_redis: Redis) -> None:
    planner = Planner(fake_redis, Settings(balancing={"mode_of_operation": "manual"}))
    waiting = planner.handle(homelab())  # manual mode: a recommended plan waits for an operator
    assert waiting is not None and waiting.migrations

    state, _, plan_id = asked(planner, homelab(), action=RequestAction.REBALANCE, dry_run=True)

    assert state is RequestState.DONE and plan_id is not None and plan_id != waiting.plan_id
    dry = planner.plans.status(plan_id)
    assert dry is not None and (dry.state, dry.reason) == (PlanState.DRY_RUN, "dry run asked by alice: never enqueued")
    assert planner.plans.plan(plan_id) is not None, "the plan is stored, to be shown"
    assert [s.plan_id for s in planner.plans.in_state(PlanState.RECOMMENDED)] == [waiting.plan_id], \
        "the plan an operator may be reading is not superseded by a dry run"
    state, reason, _ = asked(planner, homelab(), action=RequestAction.APPROVE, plan_id=plan_id)
    assert (state, reason) == (RequestState.REFUSED, f"plan {plan_id} is dry-run: dry run asked by alice: never "
                               "enqueued; only a recommended plan can be approved")
    assert planner.jobs.active_jobs() == set() and Queue(keys.MIGRATION_QUEUE, connection=fake_redis).count == 0


def test_a_rebalance_without_dry_run_still_recommends_its_plan(fake_redis: Redis) -> None:
    planner = Planner(fake_redis, Settings(balancing={"mode_of_operation": "manual"}))
    state, _, plan_id = asked(planner, homelab(), action=RequestAction.REBALANCE)
    status = planner.plans.status(plan_id or "")
    assert state is RequestState.DONE and status is not None and status.state is PlanState.RECOMMENDED


@pytest.fixture
def api() -> Iterator[tuple[TestClient, World]]:
    app, redis = fake_app(settings_with_tokens())
    world = make_world(redis)
    with TestClient(app) as client:
        yield client, world


def test_a_rejects_reason_is_kept_with_the_plan_state_and_the_api_shows_it(api: tuple[TestClient, World]) -> None:
    client, world = api
    planner = Planner(world.redis, Settings())
    planner.operator.ensure_group()
    answer = client.post(f"/api/v1/plans/{world.plan.plan_id}/reject", headers=OPS,
                         json={"reason": "waiting for Tuesday's change window"})
    assert answer.status_code == 202
    assert planner.operator.poll() == 1
    shown = client.get(f"/api/v1/plans/{world.plan.plan_id}", headers=OPS).json()["status"]
    assert (shown["state"], shown["reason"]) == ("rejected", "rejected by ops: waiting for Tuesday's change window")


def test_a_reject_without_a_reason_says_who(fake_redis: Redis) -> None:
    planner = Planner(fake_redis, Settings(balancing={"mode_of_operation": "manual"}))
    plan = planner.handle(homelab())
    assert plan is not None
    assert asked(planner, None, action=RequestAction.REJECT, plan_id=plan.plan_id)[0] is RequestState.DONE
    status = planner.plans.status(plan.plan_id)
    assert status is not None and status.reason == "rejected by alice"


@pytest.mark.integration
def test_the_cli_rejects_with_a_reason_and_plans_shows_it(real_redis: Redis, redis_url: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVEBALANCE_REDIS__URL", redis_url)
    planner = Planner(real_redis, Settings(balancing={"mode_of_operation": "manual"}, redis={"url": redis_url}))
    planner.operator.ensure_group()
    plan = planner.handle(homelab())
    assert plan is not None
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            planner.operator.poll()
            stop.wait(0.05)

    answering = threading.Thread(target=answer, daemon=True)
    answering.start()
    try:
        runner = CliRunner()
        out = runner.invoke(cli_app, ["reject", plan.plan_id, "--reason", "not before the backup"])
        assert out.exit_code == 0, out.output
    finally:
        stop.set()
        answering.join(5)
    listed = runner.invoke(cli_app, ["plans", "--json"])
    [row] = [r for r in json.loads(listed.stdout) if r["plan_id"] == plan.plan_id]
    assert (row["state"], row["reason"]) == ("rejected", f"rejected by {out_who()}: not before the backup")
    shown = runner.invoke(cli_app, ["plans", plan.plan_id])
    assert " ".join(shown.stdout.split()).startswith(  # rich wraps the line at the terminal's width
        f"plan {plan.plan_id}: rejected (rejected by {out_who()}: not before the backup); ")


def out_who() -> str:
    from pvebalance.cli.ops import who

    return who()


def test_an_ignored_node_is_no_drain_target(fake_redis: Redis) -> None:
    # homelab's other nodes are pve2 and pve3: with both ignored, pve1 has nowhere to go
    planner = Planner(fake_redis, Settings(proxmox_cluster={"ignore_nodes": ["pve2", "pve3"]}))
    state, reason, _ = asked(planner, homelab(), action=RequestAction.DRAIN, node="pve1")
    assert (state, reason) == (RequestState.REFUSED, "pve1 is the last node that could take guests: nowhere to "
                                                     "drain it to")
    assert fake_redis.hgetall(keys.DRAINED) == {}
    ignored_one = Planner(fake_redis, Settings(proxmox_cluster={"ignore_nodes": ["pve3"]}))
    assert asked(ignored_one, homelab(), action=RequestAction.DRAIN, node="pve2")[0] is RequestState.ACCEPTED


def test_a_latest_plan_this_version_cannot_read_is_treated_as_absent_and_said_once(
        fake_redis: Redis, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    planner = Planner(fake_redis, Settings())
    newer = homelab_plan_json(schema_version=2, failback="...")  # a newer planner's plan, 7 days to live
    fake_redis.set(keys.PLAN_LATEST, newer, ex=7 * 24 * 3600)
    capsys.readouterr()

    first = planner.handle(homelab())
    assert first is not None and first.migrations, "it plans: the unknown plan is as good as none"
    planner.redis.set(keys.PLAN_LATEST, newer)  # still there at the next snapshot
    assert planner.wait_after_failures() == 0.0

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    said = [e for e in lines if "schema this version does not know" in e["event"]]
    assert len(said) == 1 and said[0]["level"] == "warning" and '"schema_version": 2' in said[0]["stored"]
    assert not any(e["level"] in ("error", "critical") for e in lines)


def homelab_plan_json(**changes: object) -> str:
    from pvebalance.engine import Policy, plan_balance

    doc = json.loads(plan_balance(homelab(), Policy()).model_dump_json())
    doc.update(changes)
    return json.dumps(doc)


def test_with_live_off_the_engine_plans_no_move_of_a_running_vm() -> None:
    """The migrator skips a running VM's move when balancing.live is off (PVE moves it only live), so the
    plan must not count on one: containers (restarted) and stopped guests may still move."""
    from pvebalance.engine import Policy, plan_balance
    from pvebalance.shared.models import GuestType

    for scenario in ("all-on-one", "local-storage"):  # running VMs only; VMs and containers
        snap = snapshot_from_api(load_dump(scenario)["api"])
        running = {g.vmid for g in snap.guests if g.running and g.type is GuestType.QEMU}
        assert {m.vmid for m in plan_balance(snap, Policy()).migrations} & running  # moved with live on
        assert not {m.vmid for m in plan_balance(snap, Policy(live=False)).migrations} & running
