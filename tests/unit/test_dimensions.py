"""Several dimensions at once (issue 19): memory and CPU each within its band, judged from the raw
dump by tests/oracle_balance.py and the rules replayed by test_rules' own checker; the settings that
name dimensions; what the plan says about each dimension.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from pvebalance.cli import app
from pvebalance.cli.render import plan_to_json, print_plan
from pvebalance.engine import Policy, plan_balance
from pvebalance.engine.load import DIMENSIONS
from pvebalance.shared.apidump import load_dump, operator_pools, snapshot_from_api
from pvebalance.shared.config import BalancingSettings, load_settings
from pvebalance.shared.models import ClusterSnapshot, Plan
from tests.helpers import REPO, SCENARIOS
from tests.oracle_balance import Move, spreads_after
from tests.unit.test_engine_determinism import cpu_bound_work
from tests.unit.test_rules import replay_checking_rules

pytestmark = pytest.mark.long  # minutes in all: run first (tests/conftest.py)

BOTH = ["memory", "cpu"]


@cache
def scenario(name: str) -> tuple[ClusterSnapshot, dict[str, Any]]:
    doc = load_dump(REPO / "pvebalance" / "scenarios" / f"{name}.json")
    return snapshot_from_api(doc["api"], cluster=doc["name"]), doc


def policy_for(name: str, **balancing: Any) -> Policy:
    _, doc = scenario(name)
    return Policy.from_settings(BalancingSettings(pools=operator_pools(doc), **balancing))


def document(plan: Plan) -> str:
    shown = plan_to_json(plan)
    del shown["plan_id"]  # a fresh id per plan, by design
    return json.dumps(shown, indent=1)


@pytest.mark.parametrize("name", SCENARIOS)
def test_memory_and_cpu_both_end_within_5_pp_keeping_every_rule_and_the_same_plan_twice(name: str) -> None:
    snap, doc = scenario(name)
    policy = policy_for(name, method=BOTH, balanciness=5)
    plan = plan_balance(snap, policy)
    moves = [Move(m.vmid, m.source, m.target) for m in plan.migrations]
    spreads = spreads_after(doc["api"], moves, held_out=policy.ignore_nodes)
    assert spreads["memory"] <= 5 + 1e-6 and spreads["cpu"] <= 5 + 1e-6, spreads  # float sums: 1e-6 pp
    replay_checking_rules(snap, policy, plan)  # every rule, read from the snapshot, at every step
    assert plan.unmet == [] and plan.violations == []
    assert plan.method == "memory,cpu" and plan.bands == {"memory": 5.0, "cpu": 5.0}
    assert document(plan_balance(snap, policy)) == document(plan)


# Memory-only plans as they were before several dimensions (main at 17e728b, this machine): the
# moves of each bundled scenario, and on large-5k and xl-10k the figures the issue holds them to.
MEMORY_ONLY = {"all-on-one": 17, "groups": 29, "ha-rules": 12, "homelab": 4, "local-storage": 7, "maintenance": 28,
               "mid-300": 16, "operator-rules": 7, "tight": 3, "large-5k": 225, "xl-10k": 455}


@pytest.mark.parametrize("name", sorted(MEMORY_ONLY))
def test_memory_only_plans_keep_their_number_of_migrations(name: str) -> None:
    snap, doc = scenario(name)
    policy = policy_for(name)
    plan = plan_balance(snap, policy)
    assert len(plan.migrations) == MEMORY_ONLY[name]
    moves = [Move(m.vmid, m.source, m.target) for m in plan.migrations]
    assert spreads_after(doc["api"], moves, held_out=policy.ignore_nodes)["memory"] <= 5 + 1e-6


# Memory and CPU at once (5 pp each): the migrations of each bundled scenario's plan, at the proven
# minimum where one is known (the table; operator-rules: the exact model's 10 in 60 s), and
# on large-5k and xl-10k within 1.15x of the bench's lower bound (245 and 481, bench/dimensions_bench.py).
BOTH_MIGRATIONS = {"all-on-one": 18, "groups": 34, "ha-rules": 18, "homelab": 6, "local-storage": 8, "maintenance": 28,
                   "mid-300": 18, "operator-rules": 10, "tight": 7, "large-5k": 275, "xl-10k": 538}


@pytest.mark.parametrize("name", sorted(BOTH_MIGRATIONS))
def test_memory_and_cpu_plans_keep_their_number_of_migrations(name: str) -> None:
    snap, doc = scenario(name)
    policy = policy_for(name, method=BOTH, balanciness=5)
    plan = plan_balance(snap, policy)
    assert len(plan.migrations) == BOTH_MIGRATIONS[name]
    moves = [Move(m.vmid, m.source, m.target) for m in plan.migrations]
    spreads = spreads_after(doc["api"], moves, held_out=policy.ignore_nodes)
    assert spreads["memory"] <= 5 + 1e-6 and spreads["cpu"] <= 5 + 1e-6, spreads


@pytest.mark.parametrize("name", ["homelab", "groups", "mid-300"])  # the exact model, the box plan, the search
def test_a_plan_of_two_dimensions_made_under_load_is_byte_identical(name: str) -> None:
    snap, _ = scenario(name)
    policy = policy_for(name, method=BOTH)
    quiet = document(plan_balance(snap, policy))
    with cpu_bound_work():
        loaded = document(plan_balance(snap, policy))
    assert loaded == quiet


def test_a_dimension_the_plan_cannot_bring_within_its_band_is_named_in_unmet() -> None:
    """local-storage's local disks cannot be brought within 5 pp (most guests' disks cannot move): the
    plan balances memory as it would alone and names disk in unmet, with how far and why."""
    snap, doc = scenario("local-storage")
    plan = plan_balance(snap, policy_for("local-storage", method=["memory", "disk"]))
    assert [u.rule for u in plan.unmet] == ["balance disk"]
    disk = plan.after.dimensions["disk"].spread_pp
    assert plan.unmet[0].reason.startswith(f"spread {disk:.1f} pp, {disk - 5:.1f} pp above its band of 5 pp: ")
    moves = [Move(m.vmid, m.source, m.target) for m in plan.migrations]
    assert spreads_after(doc["api"], moves)["memory"] <= 5
    assert plan.outcome == "partial"
    assert "disk cannot be brought within its band with the others: planned for the others" in plan.notes


@pytest.mark.parametrize(("name", "method"), [("mid-300", ["disk"]), ("xl-10k", ["cpu", "disk"])])
def test_a_node_full_of_memory_that_holds_a_dimension_apart_gets_room_from_memory_balanced_too(
        name: str, method: list[str]) -> None:
    """The emptiest node's disk can fill only if memory leaves it first (mid-300's pve04, xl-10k's
    pve12: 93 % of its memory in use, the limit 95 %). Planned for the dimensions asked alone, disk
    stayed apart (17.2 and 22.8 pp; on xl-10k the greedy, unbounded then, had scanned every pair of
    100 nodes for over 15 minutes); with memory balanced as well, no wider than it began, every
    dimension asked for ends within its band."""
    snap, doc = scenario(name)
    policy = policy_for(name, method=method, balanciness=5)
    plan = plan_balance(snap, policy)
    moves = [Move(m.vmid, m.source, m.target) for m in plan.migrations]
    after, before = spreads_after(doc["api"], moves), spreads_after(doc["api"], [])
    assert after["memory"] <= before["memory"] and ("cpu" not in method or after["cpu"] <= 5 + 1e-6)
    assert plan.after.dimensions["disk"].spread_pp <= 5 and plan.unmet == []
    assert any(n.startswith("memory held to ") and "disk stayed above its band without it" in n for n in plan.notes)
    replay_checking_rules(snap, policy, plan)


def test_a_dimension_held_apart_by_something_else_than_memory_is_planned_without_it() -> None:
    """local-storage's disks are held by their storages (most guests' disks cannot move), not by a
    node's memory: memory is not balanced for room, and the plan says why disk stays apart."""
    snap, _ = scenario("local-storage")
    plan = plan_balance(snap, policy_for("local-storage", method=["cpu", "disk"], balanciness=5))
    assert list(plan.bands) == ["cpu", "disk"] and [u.rule for u in plan.unmet] == ["balance disk"]


NO_LOCAL_DISKS = "disk not balanced: no node has a local storage for guest disks: they are all on shared storage"


@pytest.mark.parametrize(("method", "others"), [(["cpu", "disk"], ["cpu"]), (["memory", "cpu", "disk"], BOTH)])
def test_local_disk_on_a_cluster_of_shared_storage_is_left_out_and_the_others_planned(
        method: list[str], others: list[str]) -> None:
    """operator-rules records no local storage on any node: with disk among the dimensions, every node
    had been left out as having no capacity, so the plan moved nothing and called its pins unmet."""
    snap, _ = scenario("operator-rules")
    plan = plan_balance(snap, policy_for("operator-rules", method=method, balanciness=5))
    alone = plan_balance(snap, policy_for("operator-rules", method=others, balanciness=5))
    assert NO_LOCAL_DISKS in plan.notes and plan.unmet == []
    assert [(m.vmid, m.source, m.target) for m in plan.migrations] == \
        [(m.vmid, m.source, m.target) for m in alone.migrations]
    assert list(plan.after.dimensions) == others and plan.held_out == {}


def test_local_disk_alone_on_a_cluster_of_shared_storage_plans_the_rules_moves_only() -> None:
    snap, _ = scenario("operator-rules")
    policy = policy_for("operator-rules", method=["disk"])
    plan = plan_balance(snap, policy)
    assert plan.notes[0] == NO_LOCAL_DISKS and plan.unmet == []
    assert plan.migrations and {m.reason for m in plan.migrations} == {"pin"}  # its three pinned guests
    replay_checking_rules(snap, policy, plan)


def test_a_dimension_below_its_threshold_is_left_as_it_is_and_the_notes_say_so() -> None:
    snap, _ = scenario("homelab")  # no node's CPU above 62 %
    plan = plan_balance(snap, policy_for("homelab", method=BOTH, threshold={"cpu": 70}))
    assert "no node above the cpu threshold of 70.0%: cpu not balanced" in plan.notes
    assert plan.after.dimensions["memory"].spread_pp <= 5
    assert plan.after.dimensions["cpu"].spread_pp > 5 and plan.unmet == []  # cpu is not held to its band
    assert plan.bands == {"memory": 5.0, "cpu": 5.0}  # as asked


def test_each_dimension_keeps_its_own_band() -> None:
    snap, _ = scenario("all-on-one")
    plan = plan_balance(snap, policy_for("all-on-one", method=BOTH, balanciness={"memory": 5, "cpu": 10}))
    assert plan.bands == {"memory": 5.0, "cpu": 10.0}
    assert plan.after.dimensions["memory"].spread_pp <= 5 and plan.after.dimensions["cpu"].spread_pp <= 10
    assert plan.after.dimensions["cpu"].spread_pp > 5  # 10 pp is all it asks: no move spent on more


def test_plan_json_gives_each_dimension_and_the_table_a_column_each() -> None:
    snap, _ = scenario("homelab")
    plan = plan_balance(snap, policy_for("homelab", method=BOTH))
    shown = plan_to_json(plan)
    for side in ("before", "after"):
        assert list(shown[side]["dimensions"]) == BOTH
        assert shown[side]["spread_pp"] == shown[side]["dimensions"]["memory"]["spread_pp"]  # the first's
        assert shown[side]["nodes"] == shown[side]["dimensions"]["memory"]["nodes"]
    console = Console(record=True, width=120)
    print_plan(plan, console)
    lines = console.export_text().splitlines()
    assert lines[0] == "memory usage (used): % of each node's memory in use"
    assert lines[1] == "cpu usage (used): % of each node's cores in use; over 100 % = overcommitted"
    header = next(line for line in lines if "before" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == [
        "node", "memory before %", "memory after %", "cpu before %", "cpu after %"]
    spread = next(line for line in lines if line.startswith("│ spread (pp)"))
    figures = [c.strip() for c in spread.strip("│ ").split("│")][1:]
    assert figures == [f"{plan.before.dimensions[d].spread_pp:.1f}" if i % 2 == 0 else
                       f"{plan.after.dimensions[d].spread_pp:.1f}" for d in BOTH for i in (0, 1)]


# --- settings: a wrong dimension or band is one line, exit 2, at config check and at start-up ---------

CHOICE = "(one of memory, cpu, disk, a list of them, or weighted)"
WRONG = [
    ("method: ram", f"balancing.method: unknown dimension 'ram' {CHOICE}"),
    ("method: [memory, ram]", f"balancing.method: unknown dimension 'ram' {CHOICE}"),
    ("method: [memory, weighted]", f"balancing.method: unknown dimension 'weighted' {CHOICE}"),
    ("method: [memory, memory]", "balancing.method: ['memory', 'memory'] names a dimension twice"),
    ("method: []",
     "balancing.method: an empty list: name at least one dimension (memory, cpu, disk, a list of them, or weighted)"),
    ("balanciness: {memory: 5, cpu: -1}",
     "balancing.balanciness: balanciness of cpu must be a percentage from 0 up to 100 (got -1)"),
    ("balanciness: {ram: 5}", "balancing.balanciness: unknown dimension 'ram' (one of memory, cpu, disk)"),
    ("balanciness: -1", "balancing.balanciness: Input should be greater than or equal to 0 (got -1)"),
    ("threshold: {cpu: 0}", "balancing.threshold: threshold of cpu must be a percentage above 0, up to 100 (got 0)"),
    # the one-line form of an environment variable or `plan --balanciness`
    ("balanciness: memory=5,cpu=x",
     "balancing.balanciness: balanciness of cpu must be a percentage from 0 up to 100 (got 'x')"),
    ("balanciness: memory=5,cpu", "balancing.balanciness: 'cpu' is not dimension=percent (as in memory=5,cpu=10)"),
    ("balanciness: memory=5,ram=3", "balancing.balanciness: unknown dimension 'ram' (one of memory, cpu, disk)"),
    ("threshold: cpu=0", "balancing.threshold: threshold of cpu must be a percentage above 0, up to 100 (got '0')"),
    ("""threshold: '{"cpu": 70'""", """balancing.threshold: '{"cpu": 70' is not a JSON mapping"""),  # as JSON, cut
]


@pytest.mark.parametrize(("line", "problem"), WRONG)
def test_config_check_says_a_wrong_dimension_or_band_in_one_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "pvebalance.yaml"
    path.write_text(f"balancing:\n  {line}\n")
    result = CliRunner().invoke(app, ["config", "check", "-c", str(path)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {path}: {problem}"]


def test_a_service_refuses_a_wrong_dimension_at_start_up_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "pvebalance.yaml"
    path.write_text("balancing:\n  method: [memory, gpu]\n")
    for command in (["plan", "--scenario", "homelab", "-c", str(path)], ["planner", "-c", str(path)]):
        out = subprocess.run([sys.executable, "-m", "pvebalance", *command], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 2
        assert len(out.stderr.splitlines()) == 1 and "balancing.method: unknown dimension 'gpu'" in out.stderr
        assert "Traceback" not in out.stderr


def test_the_cli_balances_the_dimensions_it_is_given() -> None:
    out = subprocess.run([sys.executable, "-m", "pvebalance", "plan", "--scenario", "homelab", "--method",
                          "memory,cpu", "--balanciness", "5", "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["method"] == "memory,cpu" and shown["bands"] == {"memory": 5.0, "cpu": 5.0}
    assert all(shown["after"]["dimensions"][d]["spread_pp"] <= 5 for d in BOTH)


@pytest.mark.parametrize(("given", "bands"), [
    (["--balanciness", "memory=5,cpu=10"], {"memory": 5.0, "cpu": 10.0}),
    (["--balanciness", "cpu = 8"], {"memory": 5.0, "cpu": 8.0}),  # a dimension left out: 5
    (["--balanciness", "4"], {"memory": 4.0, "cpu": 4.0}),
])
def test_the_cli_takes_a_band_for_each_dimension_in_one_option(given: list[str], bands: dict[str, float]) -> None:
    result = CliRunner().invoke(app, ["plan", "--scenario", "homelab", "--method", "memory,cpu", *given, "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["bands"] == bands


@pytest.mark.parametrize(("given", "line"), [
    (["--method", "memory,cpux"],
     "error: invalid --method: unknown dimension 'cpux' (one of memory, cpu, disk, a list of them, or weighted)"),
    (["--balanciness", "memory=5,cpu"],
     "error: invalid --balanciness: 'cpu' is not dimension=percent (as in memory=5,cpu=10)"),
    (["--mode", "usedx"], "error: invalid --mode: Input should be 'used' or 'assigned' (got 'usedx')"),
])
def test_a_wrong_plan_option_is_one_line_that_names_the_option(given: list[str], line: str) -> None:
    """The settings alone are valid (no config file: the defaults): the option typed is what is wrong."""
    out = subprocess.run([sys.executable, "-m", "pvebalance", "plan", "--scenario", "homelab", *given],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [line]


def test_bands_and_thresholds_for_each_dimension_are_read_from_one_environment_variable_each(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVEBALANCE_BALANCING__BALANCINESS", "memory=3,cpu=12")
    assert load_settings(None).balancing.balanciness == {"memory": 3.0, "cpu": 12.0}
    for typed in ("cpu=70", '{"cpu": 70}'):  # a threshold as one line, or as JSON
        monkeypatch.setenv("PVEBALANCE_BALANCING__THRESHOLD", typed)
        assert load_settings(None).balancing.threshold == {"cpu": 70.0}


def test_every_dimension_of_the_table_is_known_to_the_settings_and_the_plan_table() -> None:
    from pvebalance.cli.render import USAGE_MEANING

    for name in DIMENSIONS:
        assert {m for d, m in USAGE_MEANING if d == name} == {"used", "assigned"}
        assert BalancingSettings(method=[name]).method == [name]


def test_the_api_and_metrics_show_every_balanced_dimension() -> None:
    """The cluster view names the dimensions usage is given in (the page draws those), and each
    balanced dimension's spread and band; /metrics exports them per dimension."""
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from tests.api_helpers import OPS, fake_app, make_world, settings_with_tokens

    settings = settings_with_tokens(balancing={"method": ["memory", "cpu"], "balanciness": {"memory": 5, "cpu": 8}})
    app, redis = fake_app(settings)
    make_world(redis)
    with TestClient(app) as client:
        view = client.get("/api/v1/cluster", headers=OPS).json()
        metrics = client.get("/metrics", headers=OPS).text
    assert view["resources"] == list(DIMENSIONS)
    assert view["method"] == "memory,cpu" and view["bands"] == {"memory": 5.0, "cpu": 8.0}
    assert set(view["spreads"]) == {"memory", "cpu"} and view["spread_pp"] == view["spreads"]["memory"]
    assert all(set(node["usage"]) == set(DIMENSIONS) for node in view["nodes"])
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics) for s in family.samples}
    for dim in BOTH:
        assert samples[("pvebalance_dimension_spread_pp", (("dimension", dim),))] == pytest.approx(
            view["spreads"][dim], abs=1e-3)
    assert samples[("pvebalance_band_pp", (("dimension", "cpu"),))] == 8.0
    assert samples[("pvebalance_config", (("setting", "balanciness_pp"),))] == 5.0


@pytest.mark.parametrize(("name", "band"), [("homelab", 0), ("tight", 0), ("tight", 0.5)])
def test_a_band_of_zero_or_under_a_point_is_planned_for_and_each_dimension_left_above_it_is_named(
        name: str, band: float, recwarn: pytest.WarningsRecorder) -> None:
    """`balanciness: 0` is a valid band (the settings allow 0-100): with several dimensions the plan is
    made, no division by the band's zero width (closest.py and node_subsets.py had raised
    ZeroDivisionError, improve.py warned on the terminal), and every dimension it leaves above its
    band is in `unmet`."""
    snap, _ = scenario(name)
    plan = plan_balance(snap, policy_for(name, method=BOTH, balanciness=band))
    assert plan.violations == []
    above = {d for d in BOTH if plan.after.dimensions[d].spread_pp > band + 1e-6}
    assert {u.rule for u in plan.unmet if u.rule.startswith("balance ")} == {f"balance {d}" for d in above}
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
