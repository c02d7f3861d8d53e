"""The readable plan table: what an operator needs to decide, in exact output."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from pvebalance.cli.render import USAGE_MEANING, plan_to_json, print_plan
from pvebalance.engine import Policy, plan_balance
from pvebalance.engine.load import DIMENSIONS
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.models import GuestType, Migration, MigrationReason, NodeUsage, Plan, Unmet, UsageSummary

GIB = 2**30


def usage(percents: dict[str, float], spread: float) -> UsageSummary:
    return UsageSummary(spread_pp=spread,
                        nodes={n: NodeUsage(used=p, total=100.0, percent=p) for n, p in percents.items()})


def move(vmid: int, kind: GuestType, online: bool, mem_gib: float, disk_gib: float, spread: float,
         source: str = "pve1", target: str = "pve2", reason: str = "balance", batch: int = 0) -> Migration:
    return Migration(vmid=vmid, name=f"guest{vmid}", type=kind, source=source, target=target,
                     reason=MigrationReason(reason), online=online, mem_bytes=int(mem_gib * GIB),
                     local_disk_bytes=int(disk_gib * GIB), spread_after_pp=spread, batch=batch)


def sample_plan(method: str = "cpu", mode: str = "used", held: bool = True, containers: bool = True) -> Plan:
    migrations = [
        move(101, GuestType.QEMU, True, 4, 10, spread=30.0),  # live: memory and local disks copied
        move(102, GuestType.QEMU, False, 0, 0, spread=25.0, source="pve3", reason="maintenance"),  # stopped VM
    ]
    if containers:  # a container restarts: its memory is not copied, its local disk is
        migrations.append(move(201, GuestType.LXC, False, 2, 8, spread=4.5, target="pve4", batch=1))
    return Plan(method=method, mode=mode, balanciness=5.0,
                before=usage({"pve1": 112.5, "pve2": 40.0, "pve3": 30.0, "pve4": 50.0}, 72.5),
                after=usage({"pve1": 60.0, "pve2": 62.0, "pve3": 0.0, "pve4": 64.5}, 4.5),
                migrations=migrations, held_out={"pve3": "maintenance"} if held else {})


def render(plan: Plan, width: int = 100) -> list[str]:
    """The printed lines, trailing spaces dropped (centred titles are padded to the table's width)."""
    console = Console(record=True, width=width)
    print_plan(plan, console)
    return [line.rstrip() for line in console.export_text().splitlines()]


RULE = "\u2500" * 78
CPU_USED_WITH_MAINTENANCE = f"""\
cpu usage (used): % of each node's cores in use; over 100 % = overcommitted
┏━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━┳━━━━━━━━━┓
┃ node               ┃ before % ┃ after % ┃
┡━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━╇━━━━━━━━━┩
│ pve1               │    112.5 │    60.0 │
│ pve2               │     40.0 │    62.0 │
│ pve3 (maintenance) │     30.0 │     0.0 │
│ pve4               │     50.0 │    64.5 │
│ spread (pp)        │     72.5 │     4.5 │
└────────────────────┴──────────┴─────────┘
spread (pp) leaves out pve3: nothing moves onto it
                            3 migrations, in order
#  vmid  name      type         move          reason        GiB  batch  spread
{RULE}
1   101  guest101  vm           pve1 -> pve2  balance      14.0      0    30.0
2   102  guest102  vm           pve3 -> pve2  maintenance   0.0      0    25.0
3   201  guest201  ct, restart  pve1 -> pve4  balance       8.0      1     4.5
   GiB: memory copied live + local disks copied; spread: pp after the move
3 migrations, 22.0 GiB copied
ct, restart: a container migrates by restart: stopped, moved, started (downtime)
"""


def test_plan_table_marks_containers_counts_gib_moved_and_holds_out_maintenance_nodes() -> None:
    # GiB: 4 GiB memory + 10 GiB local disk copied live = 14.0; a stopped VM copies nothing; a
    # container restarts, so only its 8 GiB local disk is copied, not its memory.
    assert render(sample_plan()) == CPU_USED_WITH_MAINTENANCE.splitlines()


@pytest.mark.parametrize(("unmet", "line"), [
    (Unmet(rule="balance disk", vmids=[], reason="spread 41.0 pp, 36.0 pp above its band of 5 pp"),
     "unmet rule balance disk: spread 41.0 pp, 36.0 pp above its band of 5 pp"),
    (Unmet(rule="anti-affinity web", vmids=[101, 102], reason="only one node may hold them"),
     "unmet rule anti-affinity web for 101, 102: only one node may hold them"),
])
def test_an_unmet_rule_names_its_guests_and_a_dimensions_band_names_none(unmet: Unmet, line: str) -> None:
    plan = sample_plan().model_copy(update={"unmet": [unmet]})
    assert render(plan)[-1] == line


def test_plan_table_without_containers_or_held_out_nodes_has_neither_note() -> None:
    lines = render(sample_plan(method="memory", mode="assigned", held=False, containers=False))
    assert lines[0] == "memory usage (assigned): % of each node's memory given to guests; over 100 % = overcommitted"
    assert "│ pve3        │     30.0 │     0.0 │" in lines
    assert not [ln for ln in lines if "restart" in ln or "leaves out" in ln]
    assert lines[-2:] == ["GiB: memory copied live + local disks copied; spread: pp after the move",
                          "2 migrations, 14.0 GiB copied"]


def test_the_summary_says_when_a_scheduled_plan_is_expected_to_finish() -> None:
    plan = sample_plan()
    plan.expected_seconds = 754.0
    assert "3 migrations, 22.0 GiB copied, expected to finish in 12 min 34 s at the migrator's limits" in render(plan)


@pytest.mark.parametrize(("method", "mode", "header"), [
    ("cpu", "used", "cpu usage (used): % of each node's cores in use; over 100 % = overcommitted"),
    ("cpu", "assigned", "cpu usage (assigned): vCPUs given to guests per node core, in %; over 100 % = overcommitted"),
    ("memory", "used", "memory usage (used): % of each node's memory in use"),
    ("disk", "used", "disk usage (used): % of each node's local storage in guest disks; over 100 % = thin-provisioned"),
])
def test_the_header_says_what_the_percentages_mean(method: str, mode: str, header: str) -> None:
    assert render(sample_plan(method=method, mode=mode))[0] == header


def test_every_dimension_and_mode_has_a_meaning() -> None:
    assert {(m, o) for m in DIMENSIONS for o in ("used", "assigned")} == set(USAGE_MEANING)


def test_plan_table_fits_an_80_column_terminal() -> None:
    assert max(len(line) for line in render(sample_plan(), width=80)) <= 80
    assert "guest201" in "\n".join(render(sample_plan(), width=80))


def test_several_held_out_nodes_are_named_together() -> None:
    plan = sample_plan()
    plan.held_out = {"pve3": "maintenance", "pve4": "ignored"}
    lines = render(plan)
    assert "│ pve4 (ignored)     │     50.0 │    64.5 │" in lines
    assert "spread (pp) leaves out pve3, pve4: nothing moves onto them" in lines


@pytest.mark.parametrize(("cluster", "held_out"), [
    ({}, {"pve3": "maintenance"}),  # the scenario's pve3 is in HA maintenance
    ({"ignore_nodes": ["pve1"]}, {"pve1": "ignored", "pve3": "maintenance"}),
    ({"maintenance_nodes": ["pve2"]}, {"pve2": "maintenance", "pve3": "maintenance"}),
])
def test_the_engine_names_the_nodes_the_spread_leaves_out(cluster: dict[str, list[str]],
                                                          held_out: dict[str, str]) -> None:
    from pvebalance.shared.config import BalancingSettings, ProxmoxClusterSettings

    snapshot = snapshot_from_api(load_dump("maintenance")["api"])
    policy = Policy.from_settings(BalancingSettings(exact_seconds=0), ProxmoxClusterSettings(**cluster))
    plan = plan_balance(snapshot, policy)
    assert plan.held_out == held_out
    assert plan_to_json(plan)["held_out"] == held_out
    assert not [m for m in plan.migrations if m.target in held_out]


def test_plan_offline_times_the_plan_at_the_configs_migrator_limits_and_links(tmp_path: Path) -> None:
    """`pvebalance plan -c FILE` plans with the config's migrator limits: a plan expected at the default
    one migration per source takes less with four over links four times as fast."""
    import json

    from typer.testing import CliRunner

    from pvebalance.cli import app

    def expected(*config: str) -> float:
        result = CliRunner().invoke(app, ["plan", "--scenario", "all-on-one", "--json", *config])
        assert result.exit_code == 0, result.output
        return float(json.loads(result.stdout)["expected_seconds"])

    fast = tmp_path / "fast.yaml"
    fast.write_text("migrator:\n  max_parallel_cluster: 4\n  max_parallel_per_source: 4\n  max_parallel_per_target: 4\n"
                    "  link_gbit: 40\n")
    default = expected()
    assert 0 < expected("-c", str(fast)) < default / 2
