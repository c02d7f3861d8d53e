"""`pvebalance import-proxlb-config`: ProxLB's own example config, the 1.0 INI format, bad input."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from pvebalance.cli import app
from pvebalance.cli.proxlb_import import read_proxlb
from pvebalance.shared.config import load_settings
from tests.helpers import REPO

PROXLB_EXAMPLE = REPO / "tests" / "fixtures" / "proxlb_example_2x.yaml"
PASSWORD = "crazyPassw0rd!"  # the example's, as published

# ProxLB 2.x example config key -> pvebalance key, in the file's order.
EXAMPLE_MAPPING = [
    ("proxmox_api.hosts", "proxmox_api.hosts"),
    ("proxmox_api.user", "proxmox_api.user"),
    ("proxmox_api.pass", "proxmox_api.pass"),
    ("proxmox_api.ssl_verification", "proxmox_api.ssl_verification"),
    ("proxmox_api.timeout", "proxmox_api.timeout"),
    ("proxmox_cluster.maintenance_nodes", "proxmox_cluster.maintenance_nodes"),
    ("proxmox_cluster.ignore_nodes", "proxmox_cluster.ignore_nodes"),
    ("balancing.enable", "balancing.enable"),
    ("balancing.parallel", "migrator.max_parallel_cluster"),
    ("balancing.parallel_jobs", "migrator.max_parallel_cluster"),
    ("balancing.live", "balancing.live"),
    ("balancing.with_local_disks", "balancing.with_local_disks"),
    ("balancing.balance_types", "balancing.balance_types"),
    ("balancing.max_job_validation", "migrator.task_timeout_base"),
    ("balancing.memory_threshold", "balancing.threshold.memory"),
    ("balancing.cpu_threshold", "balancing.threshold.cpu"),
    ("balancing.balanciness", "balancing.balanciness"),
    ("balancing.method", "balancing.method"),
    ("balancing.mode", "balancing.mode"),
    ("balancing.node_resource_reserve.defaults.memory", "balancing.node_resource_reserve.defaults.memory"),
    ("balancing.node_resource_reserve.node01.memory", "balancing.node_resource_reserve.node01.memory"),
    ("balancing.pools.dev.type", "balancing.pools.dev.type"),
    ("balancing.pools.de-nbg01-db.type", "balancing.pools.de-nbg01-db.type"),
    ("balancing.pools.de-nbg01-db.pin", "balancing.pools.de-nbg01-db.pin"),
    ("balancing.pools.de-nbg01-db.strict", "balancing.pools.de-nbg01-db.strict"),
    ("service.schedule", "planner.interval"),
    ("service.log_level", "logging.level"),
]
EXAMPLE_UNMAPPED = [
    "proxmox_cluster.overprovisioning",
    "balancing.enforce_affinity",
    "balancing.enforce_pinning",
    "balancing.with_conntrack_state",
    "balancing.balance_larger_guests_first",
    "service.daemon",
    "service.delay",
]


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def _get(data: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        data = data[key]
    return data


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("import") / "pvebalance.yaml"
    return out, invoke("import-proxlb-config", str(PROXLB_EXAMPLE), "-o", str(out))


def test_proxlb_example_maps_exactly_these_keys() -> None:
    result = read_proxlb(PROXLB_EXAMPLE)
    assert result.mapped == EXAMPLE_MAPPING
    assert result.defaults == []  # it sets every key whose default differs
    assert [key for key, _ in result.notes] == [
        "balancing.max_job_validation", "balancing.memory_threshold", "balancing.cpu_threshold", "service.schedule"]
    assert [key for key, _ in result.unmapped] == EXAMPLE_UNMAPPED
    assert all(why for _, why in result.unmapped)
    assert result.unknown == []


@pytest.mark.parametrize(("proxlb_key", "pvebalance_key"),
                         [m for m in EXAMPLE_MAPPING if m[1] not in ("migrator.max_parallel_cluster",
                                                                      "planner.interval")])
def test_each_mapped_value_is_carried_over(converted: tuple[Path, Any], proxlb_key: str, pvebalance_key: str) -> None:
    out, _ = converted
    proxlb = yaml.safe_load(PROXLB_EXAMPLE.read_text())
    assert _get(yaml.safe_load(out.read_text()), pvebalance_key) == _get(proxlb, proxlb_key)


def test_proxlb_example_converts_to_a_config_that_config_check_accepts(converted: tuple[Path, Any]) -> None:
    out, result = converted
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    check = invoke("config", "check", "-c", str(out))
    assert check.exit_code == 0, check.stderr
    settings = load_settings(out)
    assert settings.proxmox_api.password is not None
    assert settings.proxmox_api.password.get_secret_value() == PASSWORD  # the secret is carried over
    assert settings.migrator.max_parallel_cluster == 1  # parallel: False


def test_import_to_a_file_lists_every_key_on_stderr_and_never_a_secret(converted: tuple[Path, Any]) -> None:
    out, result = converted
    lines = result.stderr.splitlines()
    assert lines[0] == f"{PROXLB_EXAMPLE}: ProxLB YAML (1.1+, 2.x)"
    assert [ln for ln in lines if ln.startswith("mapped: ")] == [f"mapped: {a} -> {b}" for a, b in EXAMPLE_MAPPING]
    assert [ln.split(": ")[1] for ln in lines if ln.startswith("not mapped: ")] == EXAMPLE_UNMAPPED
    assert lines[-1].startswith(f"wrote {out}: 27 keys mapped, 7 not mapped")
    assert PASSWORD not in result.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600  # it holds the password


def test_an_existing_output_file_is_made_private_too(tmp_path: Path) -> None:
    out = tmp_path / "pvebalance.yaml"
    out.write_text("old\n")
    out.chmod(0o644)
    assert invoke("import-proxlb-config", str(PROXLB_EXAMPLE), "-o", str(out)).exit_code == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert PASSWORD in out.read_text()


def test_import_without_output_prints_the_config(tmp_path: Path) -> None:
    result = invoke("import-proxlb-config", str(PROXLB_EXAMPLE))
    assert result.exit_code == 0
    printed = yaml.safe_load(result.stdout)
    assert printed["proxmox_api"]["pass"] == PASSWORD
    assert printed["balancing"]["pools"]["de-nbg01-db"] == {"type": "anti-affinity", "pin": ["virt66", "virt77"],
                                                             "strict": False}
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("balancing:\n  parallel: true\n  parallel_jobs: 3\n", "migrator.max_parallel_cluster", 3),
    ("balancing:\n  parallel: true\n", "migrator.max_parallel_cluster", 5),  # ProxLB's default parallel_jobs
    ("balancing:\n  max_node_inflow: 2\n", "balancing.max_migrations_per_target", 2),
    ("balancing:\n  cpu_overcommit: 2.0\n  ignore_guests: [web1]\n", "balancing.cpu_overcommit", 2.0),
    ("proxmox_api:\n  token_id: proxlb\n  token_secret: abc-def\n", "proxmox_api.token_secret", "abc-def"),
])
def test_yaml_keys_of_later_proxlb_versions_map(tmp_path: Path, text: str, key: str, expected: Any) -> None:
    source = tmp_path / "proxlb.yaml"
    source.write_text(text)
    assert _get(read_proxlb(source).config, key) == expected


@pytest.mark.parametrize(("text", "key", "why"), [
    ("balancing:\n  mode: psi\n", "balancing.mode", "PSI"),
    ("proxmox_api:\n  timeout: true\n", "proxmox_api.timeout", "not a number of seconds"),
    ("service:\n  log_level: CRITICAL\n", "service.log_level", "DEBUG, INFO, WARNING, ERROR"),
    ("balancing:\n  psi:\n    nodes: {memory: {pressure_full: 0.2}}\n", "balancing.psi", "PSI"),
    ("solver:\n  enable: true\n", "solver", "exact solver"),
    ("proxmox_cluster:\n  maintenance_nodes_schedule: {duration: 2}\n",
     "proxmox_cluster.maintenance_nodes_schedule", "maintenance windows"),
])
def test_values_without_a_counterpart_are_listed_with_why(tmp_path: Path, text: str, key: str, why: str) -> None:
    source = tmp_path / "proxlb.yaml"
    source.write_text(text)
    result = read_proxlb(source)
    assert result.mapped == []
    said = [(k, w) for k, w in result.unmapped if "(not set: " not in k]  # the enforce_* differences: below
    assert [k for k, _ in said] == [key]
    assert why in said[0][1]


def test_proxlb_defaults_that_differ_are_written_when_the_file_leaves_them_out(tmp_path: Path) -> None:
    # ProxLB migrates nothing unless balancing.enable and balance_types are set: the converted
    # config must not start migrating because pvebalance's defaults are more eager.
    source = tmp_path / "proxlb.yaml"
    source.write_text("proxmox_api:\n  hosts: [pve1]\n  user: root@pam\n  pass: hunter2hunter2\nbalancing:\n"
                      "  parallel_jobs: 4\nproxmox_cluster:\n")
    result = read_proxlb(source)
    assert result.unknown == []
    assert result.defaults == [
        ("balancing.enable", False, "balancing.enable", False),
        ("balancing.balance_types", [], "balancing.balance_types", []),
        ("balancing.balanciness", 10, "balancing.balanciness", 10),
        ("balancing.parallel", False, "migrator.max_parallel_cluster", 1),
        ("service.schedule", {"interval": 12, "format": "hours"}, "planner.interval", 43200.0),
    ]
    out = tmp_path / "pvebalance.yaml"
    cli = invoke("import-proxlb-config", str(source), "-o", str(out))
    assert cli.exit_code == 0
    assert ("default kept: balancing.enable is not set; ProxLB's default false written as balancing.enable: false "
            "(pvebalance's default differs)") in cli.stderr.splitlines()
    settings = load_settings(out)
    assert (settings.balancing.enable, settings.balancing.balance_types, settings.balancing.balanciness,
            settings.migrator.max_parallel_cluster) == (False, [], 10, 1)
    assert list(yaml.safe_load(out.read_text())) == ["proxmox_api", "balancing", "redis", "planner",
                                                     "migrator"]  # pvebalance's order


PROXLB_1_0_INI = """\
[proxmox]
api_host: hypervisor01.example.com,hypervisor02.example.com
api_user: root@pam
api_pass: FooBar
verify_ssl: 1
timeout: 10
[vm_balancing]
enable: 1
method: memory
mode: used
mode_option: bytes
type: all
# a comment
balanciness: 10
parallel_migrations: 0
maintenance_nodes: dummynode03,dummynode04
ignore_nodes: dummynode01,dummynode02
ignore_vms: testvm01,test*
[storage_balancing]
enable: 0
[update_service]
enable: 0
[api]
enable: 0
[service]
master_only: 0
daemon: 1
schedule: 24
log_verbosity: INFO
config_version: 3
"""


def test_proxlb_1_0_ini_config_maps(tmp_path: Path) -> None:
    source = tmp_path / "proxlb.conf"
    source.write_text(PROXLB_1_0_INI)
    result = read_proxlb(source)
    assert result.source_format == "ProxLB 1.0 INI"
    assert result.config == {
        "proxmox_api": {"hosts": ["hypervisor01.example.com", "hypervisor02.example.com"], "user": "root@pam",
                        "pass": "FooBar", "ssl_verification": True, "timeout": 10},
        "balancing": {"enable": True, "method": "memory", "mode": "used", "balance_types": ["vm", "ct"],
                      "balanciness": 10, "ignore_guests": ["testvm01"]},
        "migrator": {"max_parallel_cluster": 1},
        "proxmox_cluster": {"maintenance_nodes": ["dummynode03", "dummynode04"],
                            "ignore_nodes": ["dummynode01", "dummynode02"]},
        "logging": {"level": "INFO"},
        "planner": {"interval": 86400.0},  # schedule: 24 (hours)
        "redis": {"url": "redis://127.0.0.1:6379/0"},
    }
    assert [k for k, _ in result.unmapped] == [
        "vm_balancing.mode_option", "vm_balancing.ignore_vms (test*)", "storage_balancing", "update_service", "api",
        "service.master_only", "service.daemon", "service.config_version"]
    out = tmp_path / "pvebalance.yaml"
    assert invoke("import-proxlb-config", str(source), "-o", str(out)).exit_code == 0
    assert invoke("config", "check", "-c", str(out)).exit_code == 0


def test_unknown_keys_are_listed_and_nothing_is_written(tmp_path: Path) -> None:
    source = tmp_path / "proxlb.yaml"
    source.write_text("proxmox_api:\n  hosts: [pve1]\n  pass: hunter2hunter2\nbalancing:\n  balancyness: 5\n"
                      "  pools:\n    web: {type: anti-affinity, weight: 2}\nextra_section: {a: 1}\n")
    out = tmp_path / "pvebalance.yaml"
    result = invoke("import-proxlb-config", str(source), "-o", str(out))
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert [ln for ln in lines if ln.startswith("unknown: ")] == [
        "unknown: balancing.balancyness: not a ProxLB setting this importer knows",
        "unknown: balancing.pools.web.weight: not a ProxLB setting this importer knows",
        "unknown: extra_section: not a ProxLB setting this importer knows",
    ]
    assert lines[-1] == (f"error: {source}: 3 unknown keys (balancing.balancyness, balancing.pools.web.weight, "
                         "extra_section); fix or remove them, nothing written")
    assert not out.exists()
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize(("text", "last_line"), [
    (None, "error: cannot read {source}: No such file or directory"),
    ("proxmox_api: [unclosed\n", "error: {source} is neither ProxLB YAML nor INI: "),
    ("- just\n- a list\n", "error: {source} holds no ProxLB settings (expected a mapping of sections)"),
    ("[proxmox]\napi_host = a\n[proxmox]\n", "error: {source}: While reading from "),
    ("balancing:\n  balanciness: 500\n", "error: {source}: 1 values pvebalance refuses; nothing written"),
])
def test_bad_proxlb_files_end_in_one_error_line_and_exit_2(tmp_path: Path, text: str | None, last_line: str) -> None:
    source = tmp_path / "proxlb.yaml"
    if text is not None:
        source.write_text(text)
    out = tmp_path / "pvebalance.yaml"
    result = invoke("import-proxlb-config", str(source), "-o", str(out))
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1].startswith(last_line.format(source=source))
    assert [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")][-1] == result.stderr.splitlines()[-1]
    assert not out.exists()


def test_the_proxlb_file_is_never_overwritten(tmp_path: Path) -> None:
    source = tmp_path / "proxlb.yaml"
    source.write_text(PROXLB_EXAMPLE.read_text())
    result = invoke("import-proxlb-config", str(source), "-o", str(tmp_path / "." / "proxlb.yaml"))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / 'proxlb.yaml'} is the ProxLB file itself: write the pvebalance config elsewhere"]
    assert source.read_text() == PROXLB_EXAMPLE.read_text()


@pytest.mark.parametrize(("text", "seconds"), [
    ("service:\n  schedule: {interval: 12, format: hours}\n", 43200.0),
    ("service:\n  schedule: {interval: 30, format: minutes}\n", 1800.0),
    ("service:\n  schedule: 6\n", 21600.0),  # 1.1.0: hours
    ("balancing:\n  enable: true\n", 43200.0),  # not set: ProxLB's default, every 12 hours
])
def test_schedule_becomes_the_planning_interval(tmp_path: Path, text: str, seconds: float) -> None:
    source = tmp_path / "proxlb.yaml"
    source.write_text(text)
    result = read_proxlb(source)
    assert result.config["planner"]["interval"] == seconds
    out = tmp_path / "pvebalance.yaml"
    assert invoke("import-proxlb-config", str(source), "-o", str(out)).exit_code == 0
    assert load_settings(out).planner.interval == seconds


def test_enforce_off_is_said_to_differ_and_on_needs_nothing(tmp_path: Path) -> None:
    source = tmp_path / "proxlb.yaml"
    source.write_text("balancing:\n  enforce_affinity: false\n  enforce_pinning: true\n")
    why = dict(read_proxlb(source).unmapped)
    assert why["balancing.enforce_affinity"].startswith("DIFFERS: with it off, ProxLB repaired broken affinity and "
                                                        "anti-affinity only in a round that also balanced")
    assert "this config may move guests ProxLB left in place" in why["balancing.enforce_affinity"]
    assert why["balancing.enforce_pinning"].startswith("nothing to set: pvebalance always repairs")
    source.write_text("balancing:\n  enable: true\n")
    left_out = dict(read_proxlb(source).unmapped)
    assert left_out["balancing.enforce_pinning (not set: ProxLB's default is off)"].startswith(
        "DIFFERS: with it off, ProxLB moved guests onto their pinned nodes only in a round that also balanced")


def test_a_redis_section_is_written_and_said(tmp_path: Path) -> None:
    out = tmp_path / "pvebalance.yaml"
    result = invoke("import-proxlb-config", str(PROXLB_EXAMPLE), "-o", str(out))
    assert yaml.safe_load(out.read_text())["redis"] == {"url": "redis://127.0.0.1:6379/0"}
    assert any(line.startswith("added: redis.url: redis://127.0.0.1:6379/0 ") for line in result.stderr.splitlines())
