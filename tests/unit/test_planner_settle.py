"""No churn, the planner's side (issue 20, item 5): the planner plans only on a snapshot taken at least
`planner.settle_seconds` after the last migration ended. A guest's node changes at once (the cluster's
config file system) while a node's figures are what pvestatd published up to 10 s before: on homelab, a
plan 1.7 s after the last of four moves saw the guests gone from their sources but the sources' memory
still in use, and moved more guests for nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from redis import Redis

from pvebalance.engine import Policy, plan_balance
from pvebalance.services.planner.planner import Planner
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.config import Settings
from pvebalance.shared.jobs import JobState, job_ids
from pvebalance.shared.models import ClusterSnapshot, Plan
from pvebalance.shared.requests import OperatorRequest, RequestAction, RequestState
from tests.helpers import REPO

SETTLE = Settings().planner.settle_seconds


def homelab() -> ClusterSnapshot:
    return snapshot_from_api(load_dump(REPO / "pvebalance" / "scenarios" / "homelab.json")["api"])


def at(snapshot: ClusterSnapshot, epoch: float) -> ClusterSnapshot:
    return snapshot.model_copy(update={"taken_at": datetime.fromtimestamp(epoch, UTC)})


def carried_out(planner: Planner, plan: Plan) -> float:
    """Each job of the plan ends as the migrator ends it (succeeded, the guest cooling down); when the last ended."""
    for job_id in job_ids(plan):
        job = planner.jobs.job(job_id)
        assert job is not None
        assert planner.jobs.transition(job, JobState.SUCCEEDED, "landed", duration_s=20.0)
        planner.jobs.start_cooldown(job.vmid, planner.settings.balancing.cooldown_minutes * 60)
    ended = planner.jobs.last_change_at()
    assert ended is not None
    return ended


def moved(before: ClusterSnapshot, plan: Plan, figures_settled: bool) -> ClusterSnapshot:
    """The cluster after the plan: each guest on its target; the nodes' memory as it was before the moves
    (as read within pvestatd's cycle), or with each guest's memory taken from its source to its target."""
    target = {m.vmid: m.target for m in plan.migrations}
    guests = [g.model_copy(update={"node": target.get(g.vmid, g.node)}) for g in before.guests]
    shift: dict[str, int] = {}
    for g in before.guests:
        if g.vmid in target and figures_settled:
            shift[g.node] = shift.get(g.node, 0) - g.mem
            shift[target[g.vmid]] = shift.get(target[g.vmid], 0) + g.mem
    nodes = [n.model_copy(update={"mem": n.mem + shift.get(n.name, 0)}) for n in before.nodes]
    return before.model_copy(update={"guests": guests, "nodes": nodes})


def test_on_homelab_the_plan_after_a_finished_plan_moves_nothing(fake_redis: Redis) -> None:
    planner = Planner(fake_redis, Settings())
    before = homelab()
    first = planner.handle(at(before, datetime.now(UTC).timestamp()))
    assert first is not None and len(first.migrations) == 4
    ended = carried_out(planner, first)
    lagging = moved(before, first, figures_settled=False)
    assert plan_balance(lagging, Policy()).migrations, "the premise: a plan on the lagging figures moves guests"

    assert planner.handle(at(lagging, ended + 1.7)) is None
    assert planner.handle(at(lagging, ended + SETTLE - 0.1)) is None
    second = planner.handle(at(moved(before, first, figures_settled=True), ended + SETTLE))

    assert second is not None and second.migrations == [] and second.before.spread_pp <= 5.0
    assert planner.jobs.active_jobs() == set()


@pytest.mark.parametrize(("after", "plans"), [(-0.5, False), (0.0, False), (SETTLE - 0.01, False), (SETTLE, True),
                                              (SETTLE + 30, True)])
def test_the_planner_plans_only_once_the_node_figures_have_settled(fake_redis: Redis, after: float,
                                                                  plans: bool) -> None:
    planner = Planner(fake_redis, Settings())
    first = planner.handle(at(homelab(), datetime.now(UTC).timestamp()))
    assert first is not None
    ended = carried_out(planner, first)
    assert (planner.handle(at(moved(homelab(), first, figures_settled=True), ended + after)) is not None) is plans


def test_settle_seconds_is_read_from_the_settings(fake_redis: Redis) -> None:
    planner = Planner(fake_redis, Settings(planner={"settle_seconds": 2}))
    first = planner.handle(at(homelab(), datetime.now(UTC).timestamp()))
    assert first is not None
    ended = carried_out(planner, first)
    after = moved(homelab(), first, figures_settled=True)
    assert planner.handle(at(after, ended + 1.9)) is None
    assert planner.handle(at(after, ended + 2.0)) is not None


def test_a_rebalance_on_figures_not_yet_settled_is_refused_with_the_reason(fake_redis: Redis) -> None:
    planner = Planner(fake_redis, Settings())
    first = planner.handle(at(homelab(), datetime.now(UTC).timestamp()))
    assert first is not None
    ended = carried_out(planner, first)
    request = OperatorRequest(action=RequestAction.REBALANCE, who="test")
    planner.operator.store.submit(request)
    planner.operator.handle(request, at(homelab(), ended + 3))
    status = planner.operator.store.status(request.request_id)
    assert status is not None and status.state is RequestState.REFUSED
    assert status.reason == (f"the latest snapshot was taken 3.0 s after the last migration ended, before the node "
                             f"figures settled (planner.settle_seconds {SETTLE:g}): ask again once the collector has "
                             "read a later one")
