"""The operator's commands for real: the `pvebalance` command in its own process, a redis-server, the
collector and planner services, rq worker processes, proxmoxer over HTTPS against the simulator."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Queue

from pvebalance.engine import Policy
from pvebalance.engine.rules import build_constraints
from pvebalance.services.collector.collector import run_collector
from pvebalance.services.planner.planner import run_planner
from pvebalance.shared import keys, snapshots
from pvebalance.shared.config import load_settings
from pvebalance.shared.models import ClusterSnapshot
from pvebalance.shared.plans import PlanStore
from pvebalance.shared.requests import OperatorRequest, RequestAction, RequestStore
from tests.helpers import SimFactory, start_workers, stop_services, write_config

pytestmark = pytest.mark.integration


@dataclass
class Cluster:
    config: Path
    redis: Redis
    sim: Any
    stop: threading.Event = field(default_factory=threading.Event)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pvebalance", *args, "-c", str(self.config)],
                              capture_output=True, text=True, timeout=timeout)

    def snapshot(self) -> ClusterSnapshot:
        latest = snapshots.latest(self.redis)
        assert latest is not None
        return latest

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)

    def nothing_enqueued(self) -> bool:
        return Queue(keys.MIGRATION_QUEUE, connection=self.redis).count == 0 and not self.redis.smembers(
            keys.ACTIVE_JOBS) and not self.redis.keys(f"{keys.PREFIX}:job:*")


@pytest.fixture
def cluster(start_simulator: SimFactory, real_redis: Redis, redis_url: str,
            tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    started: list[tuple[Cluster, list[threading.Thread], list[subprocess.Popen[bytes]]]] = []

    def start(scenario: str = "tight", workers: int = 0, mode: str = "manual", **sections: Any) -> Cluster:
        sim = start_simulator(scenario, time_scale=0.01)
        balancing = {"mode_of_operation": mode, **sections.pop("balancing", {})}
        config = write_config(tmp_path / "pvebalance.yaml", sim, redis_url, collector={"interval": 0.5},
                              planner={"retry_after_failure": 2}, balancing=balancing, **sections)
        settings = load_settings(config)
        c = Cluster(config, real_redis, sim)
        threads = [threading.Thread(target=run, args=(settings, c.stop), daemon=True)
                   for run in (run_collector, run_planner)]
        for t in threads:
            t.start()
        procs = start_workers(config, workers, burst=False, log_dir=tmp_path)
        started.append((c, threads, procs))
        c.wait_for("a first snapshot", lambda: real_redis.get(keys.SNAPSHOT_LATEST) is not None)
        return c

    yield start
    for c, threads, procs in started:
        stop_services(c.stop, threads, procs)


# --- bad input: one line, exit 2, nothing enqueued ---------------------------------------------------

@pytest.mark.parametrize(("args", "error"), [
    (("drain", "pve9"), "error: drain refused: unknown node 'pve9' (the cluster's nodes: pve1, pve2, pve3, pve4)"),
    (("undrain", "pve2"), "error: undrain refused: pve2 is not drained"),
    (("approve", "plan-nosuchplan"),
     "error: approve refused: no plan plan-nosuchplan (plans are kept 7 days; `pvebalance plans` lists them)"),
    (("reject", "plan-nosuchplan"), "error: reject refused: no plan plan-nosuchplan"),
    (("approve", "plan-x", "--moves", "1,a"), "error: --moves '1,a': give guest ids separated by commas, e.g. 101,102"),
    (("pause", "--for", "soon"), "error: --for 'soon': give a duration such as 90s, 15m, 2h or 1d"),
])
def test_bad_request_ends_in_one_line_and_exit_2_with_nothing_enqueued(cluster: Callable[..., Cluster],
                                                                       args: tuple[str, ...], error: str) -> None:
    c = cluster()
    out = c.cli(*args)
    assert (out.returncode, out.stderr.strip()) == (2, error)
    assert c.nothing_enqueued()


def test_drain_that_cannot_fit_is_refused_naming_the_guests_and_moves_nothing(cluster: Callable[..., Cluster]) -> None:
    c = cluster("tight", workers=1, mode="automatic", balancing={"enable": False})  # tight: little room anywhere

    out = c.cli("drain", "pve1")

    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: drain refused: the other nodes cannot take every guest "
                                                   "of pve1: "), out.stderr
    assert "of pve1: 5 do not fit: " in lines[0]
    for vmid in (100, 101, 104, 106, 107):  # the largest guests of pve1: no other node has room for them
        assert f"guest {vmid}: no node may take it with room to spare" in lines[0]
    assert c.redis.hget(keys.DRAINED, "pve1") is None, "a refused drain holds nothing"
    assert c.nothing_enqueued()


def test_drain_of_the_last_node_that_could_take_guests_is_refused(cluster: Callable[..., Cluster]) -> None:
    c = cluster("tight", proxmox_cluster={"maintenance_nodes": ["pve1", "pve2", "pve3"]})
    out = c.cli("drain", "pve4")
    assert (out.returncode, out.stderr.strip()) == (
        2, "error: drain refused: pve4 is the last node that could take guests: nowhere to drain it to")
    assert c.nothing_enqueued()


def test_approve_of_a_superseded_plan_is_refused_with_the_newer_plan_named(cluster: Callable[..., Cluster]) -> None:
    c = cluster("all-on-one")
    plans = PlanStore(c.redis)
    c.wait_for("a recommended plan", lambda: bool(plans.in_state(plans_state("recommended"))))
    old = plans.in_state(plans_state("recommended"))[0].plan_id
    # A rebalance plans again on a newer snapshot: the first plan is superseded. (A dry run would not.)
    asked = RequestStore(c.redis).submit(OperatorRequest(action=RequestAction.REBALANCE, who="test")).request

    def rebalanced() -> bool:
        status = RequestStore(c.redis).status(asked.request_id)
        return status is not None and status.state.value == "done"

    c.wait_for("the rebalance done", rebalanced)
    newer = plans.in_state(plans_state("recommended"))[-1].plan_id
    assert newer != old

    out = c.cli("approve", old)

    assert (out.returncode, out.stderr.strip()) == (
        2, f"error: approve refused: plan {old} is superseded: superseded by plan {newer}, made on a newer "
           "snapshot: a rebalance was asked for; only a recommended plan can be approved")
    assert c.nothing_enqueued()


def plans_state(name: str) -> Any:
    from pvebalance.shared.plans import PlanState

    return PlanState(name)


# --- the workflows ------------------------------------------------------------------------------------

def test_drain_wait_empties_the_node_keeps_it_empty_and_undrain_lets_it_fill(cluster: Callable[..., Cluster]) -> None:
    c = cluster("all-on-one", workers=3, mode="automatic")
    c.wait_for("the cluster balanced", lambda: _on(c, "pve2") > 0 and not c.redis.smembers(keys.ACTIVE_JOBS), 180)

    drained_at = time.time()
    out = c.cli("drain", "pve2", "--wait", timeout=240)

    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1] == "drain done: pve2 is empty"
    # not a terminal: one line per finished move instead of a progress bar (and never silence till the end)
    moves = [line for line in lines if line.startswith("[")]
    assert moves and all(re.fullmatch(rf"\[{i}/{len(moves)}\] guest \d+ \(\S+\) pve2 -> pve\d: succeeded in \d+ s",
                                      line) for i, line in enumerate(moves, 1)), moves
    assert [vmid for vmid, g in c.sim.cluster.guests.items() if g.node == "pve2"] == []
    snapshot = c.snapshot()
    policy = Policy()
    book = build_constraints(snapshot, policy)
    where = {g.vmid: g.node for g in snapshot.guests}
    guests = {g.vmid: g for g in snapshot.guests}
    broken = [b.violation for f in book.families for b in f.check(book, where, guests) if b.required]
    assert broken == []
    # Later plans leave pve2 alone while it is drained: a node far below the others, and nothing moves.
    assert c.snapshot().taken_at.timestamp() > drained_at
    seen = c.snapshot().snapshot_id
    c.wait_for("four more snapshots", lambda: _snapshots_since(c, seen) >= 4)
    [drain] = [r for r in RequestStore(c.redis).recent() if r.request.action.value == "drain"]
    drain_plan = PlanStore(c.redis).plan(drain.plan_id or "")
    assert drain_plan is not None and {m.source for m in drain_plan.migrations} == {"pve2"}
    for plan, _ in PlanStore(c.redis).recent(100):  # a plan made as the drain was asked may still fill pve2
        if plan.created_at > drain_plan.created_at:
            assert "pve2" not in {m.target for m in plan.migrations}
    assert _on(c, "pve2") == 0
    placed = json.loads(c.cli("best-node", "--memory", "1G", "--json").stdout)
    assert placed["refused"]["pve2"] == "pve2 is drained (maintenance)", "placement never names a drained node"

    out = c.cli("undrain", "pve2")

    assert (out.returncode, out.stderr.strip()) == (0, "undrain done: pve2 may take guests again")
    c.wait_for("guests back on pve2", lambda: _on(c, "pve2") > 0, 120)


def test_manual_mode_plans_wait_for_approval_and_approve_runs_only_the_chosen_moves(
        cluster: Callable[..., Cluster]) -> None:
    c = cluster("all-on-one", workers=2)
    plans = PlanStore(c.redis)
    c.wait_for("a recommended plan", lambda: bool(plans.in_state(plans_state("recommended"))))
    plan = plans.plan(plans.in_state(plans_state("recommended"))[-1].plan_id)
    assert plan is not None and plan.migrations
    time.sleep(1.5)  # three snapshots, each a little different (the simulated hosts' memory swings)
    assert c.nothing_enqueued(), "manual mode enqueues nothing without an approval"
    assert [s.plan_id for s in plans.in_state(plans_state("recommended"))] == [plan.plan_id], \
        "a plan still safe and needed keeps waiting: noise does not supersede it"
    chosen = [m.vmid for m in plan.migrations[:2]]

    out = c.cli("approve", plan.plan_id, "--moves", ",".join(map(str, chosen)))

    assert (out.returncode, out.stderr.strip()) == (0, "approve done: 2 migrations enqueued")
    c.wait_for("the two moves", lambda: all(c.sim.cluster.guests[v].node != "pve1" for v in chosen), 120)
    moved = sorted(v for v, g in c.sim.cluster.guests.items() if g.node != "pve1")
    assert moved == sorted(chosen)
    c.wait_for("the plan done", lambda: plans.status(plan.plan_id).state.value == "done")  # type: ignore[union-attr]


def test_pause_stops_balancing_plans_and_resume_starts_them_again(cluster: Callable[..., Cluster]) -> None:
    c = cluster("all-on-one", workers=0, mode="automatic")
    out = c.cli("pause", "--for", "2h", "--reason", "patching pve1")
    said = out.stderr.strip()
    assert out.returncode == 0 and said.startswith("pause done: balancing paused until ") and \
        said.endswith(" (patching pve1)"), said
    c.redis.delete(keys.PLAN_LATEST)
    for key in c.redis.keys(f"{keys.PREFIX}:job:*"):
        c.redis.delete(key)
    c.redis.delete(keys.ACTIVE_JOBS)
    before = c.redis.zcard(keys.PLAN_INDEX)
    time.sleep(2.0)  # four snapshots
    assert c.redis.zcard(keys.PLAN_INDEX) == before

    out = c.cli("resume")

    assert (out.returncode, out.stderr.strip()) == (0, "resume done: balancing resumed")
    c.wait_for("a plan after resuming", lambda: c.redis.zcard(keys.PLAN_INDEX) > before)


def test_best_node_that_fits_nowhere_says_why_for_every_node(cluster: Callable[..., Cluster]) -> None:
    c = cluster("tight")
    out = c.cli("best-node", "--memory", "4T", "--cores", "2")
    assert out.returncode == 2
    line = out.stderr.strip()
    assert line.startswith("error: no node may take a guest of 4096 GiB and 2 vCPUs: pve1: pve1 would use ")
    assert all(f"; {n}: {n} would use " in line for n in ("pve2", "pve3", "pve4"))
    out = c.cli("best-node", "--memory", "2G", "--cores", "2", "--json")
    answer = json.loads(out.stdout)
    assert out.returncode == 0 and answer["best"] == answer["ranked"][0]["node"]
    assert [r["percent_after"] for r in answer["ranked"]] == sorted(r["percent_after"] for r in answer["ranked"])


def _on(c: Cluster, node: str) -> int:
    return sum(1 for g in c.sim.cluster.guests.values() if g.node == node)


def test_rebalance_yes_runs_the_plan_and_follows_it_to_the_end(cluster: Callable[..., Cluster]) -> None:
    c = cluster("all-on-one", workers=3)

    out = c.cli("rebalance", "--yes", "--json", timeout=240)

    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert len(result["plan"]["migrations"]) == 17
    assert set(result["jobs"].values()) == {"succeeded"}
    assert {str(m["vmid"]): c.sim.cluster.guests[m["vmid"]].node for m in result["plan"]["migrations"]} == {
        str(m["vmid"]): m["target"] for m in result["plan"]["migrations"]}
    job_id = f"migrate-{result['plan']['plan_id']}-{result['plan']['migrations'][0]['vmid']}"
    shown = c.cli("jobs", job_id, "--json")
    assert [e["state"] for e in json.loads(shown.stdout)["events"]] in (
        ["queued", "running", "succeeded"], ["queued", "waiting", "running", "succeeded"])  # waiting: for a slot
    listed = json.loads(c.cli("plans", "--json").stdout)
    mine = next(p for p in listed if p["plan_id"] == result["plan"]["plan_id"])
    c.wait_for("the plan done", lambda: PlanStore(c.redis).status(mine["plan_id"]).state.value == "done")  # type: ignore[union-attr]


def test_rebalance_refuses_to_ask_on_a_non_interactive_input_without_yes(cluster: Callable[..., Cluster]) -> None:
    c = cluster("all-on-one")
    out = c.cli("rebalance")
    assert (out.returncode, out.stderr.strip().splitlines()[-1]) == (
        2, "error: not asking on a non-interactive input: add --yes to run the plan")
    assert c.nothing_enqueued()


def _snapshots_since(c: Cluster, snapshot_id: str) -> int:
    entries = c.redis.xrange(keys.SNAPSHOT_STREAM)
    ids = [s.snapshot_id for _, f in entries if (s := snapshots.from_entry(f)) is not None]
    return len(ids) - 1 - ids.index(snapshot_id) if snapshot_id in ids else 0


def test_reject_drops_a_recommended_plan_and_it_can_no_longer_be_approved(cluster: Callable[..., Cluster]) -> None:
    c = cluster("all-on-one")
    plans = PlanStore(c.redis)
    c.wait_for("a recommended plan", lambda: bool(plans.in_state(plans_state("recommended"))))
    plan_id = plans.in_state(plans_state("recommended"))[-1].plan_id

    out = c.cli("reject", plan_id)

    said = out.stderr.strip()
    assert out.returncode == 0 and said.startswith(f"reject done: plan {plan_id} rejected; its ") and \
        said.endswith(" are not planned again until " + said.split(" until ")[-1]), said
    assert said.endswith("(planner.reject_hold)")
    status = plans.status(plan_id)
    assert status is not None and (status.state.value, status.reason.startswith("rejected by ")) == ("rejected", True)
    out = c.cli("approve", plan_id)
    assert (out.returncode, out.stderr.strip()) == (
        2, f"error: approve refused: plan {plan_id} is rejected: {status.reason}; only a recommended plan can be "
           "approved")
    assert c.nothing_enqueued()
