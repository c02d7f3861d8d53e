"""The same snapshot and policy give the same plan, on any machine and however loaded it is.

Plans are compared as `pvebalance plan --json` prints them (render.plan_to_json), less the plan's
id: moves, their order, batches, details and notes must match to the byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest

from pvebalance.cli.render import plan_to_json
from pvebalance.engine import Policy, order, plan_balance
from pvebalance.shared.apidump import load_dump, operator_pools, snapshot_from_api
from pvebalance.shared.config import BalancingSettings, MigratorSettings, ProxmoxClusterSettings
from pvebalance.shared.models import ClusterSnapshot
from tests.helpers import REPO, SCENARIOS

pytestmark = pytest.mark.long  # minutes in all: run first (tests/conftest.py)


def scenario(name: str) -> tuple[ClusterSnapshot, Policy]:
    """As `pvebalance plan --scenario NAME` reads it: the pools recorded with the cluster, default settings."""
    doc = load_dump(REPO / "pvebalance" / "scenarios" / f"{name}.json")
    policy = Policy.from_settings(BalancingSettings(pools=operator_pools(doc)), ProxmoxClusterSettings())
    return snapshot_from_api(doc["api"], cluster=doc["name"]), policy


def plan_document(snapshot: ClusterSnapshot, policy: Policy) -> str:
    document = plan_to_json(plan_balance(snapshot, policy))
    del document["plan_id"]  # a fresh id per plan, by design
    return json.dumps(document, indent=2)


@contextmanager
def one_core_shared(spinners: int) -> Iterator[None]:
    """This thread and `spinners` busy processes on one core: the plan gets a share of that core, the
    other cores stay free for the tests running beside it under xdist (busy processes over every core
    held the whole suite up)."""
    mine = os.sched_getaffinity(0)
    core = {max(mine)}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(spinners)]
    try:
        for proc in busy:
            os.sched_setaffinity(proc.pid, core)
        os.sched_setaffinity(0, core)
        yield
    finally:
        os.sched_setaffinity(0, mine)
        for proc in busy:
            proc.kill()
            proc.wait()


@contextmanager
def cpu_bound_work() -> Iterator[None]:
    """Four busy processes on the plan's core, and a thread competing for this interpreter's GIL:
    enough that the exact solver, bounded by time as it once was, found another plan for `groups`."""
    stop = threading.Event()

    def spin() -> None:
        count = 0
        while not stop.is_set():
            count += 1

    with one_core_shared(4):
        thread = threading.Thread(target=spin, daemon=True)  # made after the pinning: on that core too
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_plan_made_under_load_is_byte_identical_to_one_made_quietly(name: str) -> None:
    snapshot, policy = scenario(name)
    quiet = plan_document(snapshot, policy)
    with cpu_bound_work():
        loaded = plan_document(snapshot, policy)
    assert loaded == quiet


def test_the_time_given_to_the_exact_solver_does_not_change_its_plan() -> None:
    """`exact_seconds` only turns the exact solver on: its search is bounded by work, not time."""
    snapshot, policy = scenario("groups")  # the scenario where the exact solver beats the greedy plan
    hurried = plan_balance(snapshot, replace(policy, exact_seconds=1e-6))
    assert [(m.vmid, m.target) for m in hurried.migrations] == \
        [(m.vmid, m.target) for m in plan_balance(snapshot, policy).migrations]
    assert any(note.startswith("exact solver: ") for note in hurried.notes)


def test_the_exact_solver_within_its_work_limit_says_nothing_of_time() -> None:
    snapshot, policy = scenario("groups")
    plan = plan_balance(snapshot, policy)
    assert not any("safety limit" in note for note in plan.notes)


def test_a_drain_queued_over_a_shared_link_is_byte_identical_under_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two migrations per source share its link, so the drain's queue order is searched (engine/order.py):
    bounded by work, a loaded machine queues it as a quiet one does (each plan's search run afresh)."""
    snapshot, policy = scenario("all-on-one")
    limits = MigratorSettings(max_parallel_cluster=2, max_parallel_per_source=2, max_parallel_per_target=2)
    policy = replace(policy, maintenance_nodes=frozenset({"pve1"}), migrator=limits)
    monkeypatch.setattr(order, "_cache", OrderedDict())
    quiet = plan_document(snapshot, policy)
    monkeypatch.setattr(order, "_cache", OrderedDict())
    with cpu_bound_work():
        loaded = plan_document(snapshot, policy)
    assert loaded == quiet
