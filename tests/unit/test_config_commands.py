"""`pvebalance config check`, the shipped example config, --version and -h."""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from pvebalance.cli import app
from pvebalance.shared.config import Settings, load_settings
from tests.helpers import REPO

EXAMPLE = REPO / "config" / "pvebalance.example.yaml"


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The session's Redis sets REDIS_URL; these tests are about the file alone.
    monkeypatch.delenv("REDIS_URL", raising=False)
    for name in [n for n in os.environ if n.startswith("PVEBALANCE_")]:
        monkeypatch.delenv(name)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pvebalance.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "lines"), [
    ("balancing:\n  balanciness: -1\n",
     ["balancing.balanciness: Input should be greater than or equal to 0 (got -1)"]),
    # every wrong key, not only the first, each on its own line (in the model's order, unknown keys last)
    ("proxmox_api:\n  timeout: 0\n  pass: hunter2hunter2\n"
     "balancing:\n  balancyness: 5\n  mode: psi\nmigrator:\n  max_parallel_cluster: many\nfoo: 1\n",
     ["proxmox_api.timeout: Input should be greater than 0 (got 0)",
      "balancing.mode: Input should be 'used' or 'assigned' (got 'psi')",
      "balancing.balancyness: unknown key (got 5)",
      "migrator.max_parallel_cluster: Input should be a valid integer, unable to parse string as an integer "
      "(got 'many')",
      "foo: unknown key (got 1)"]),
    ("proxmox_api:\n  token_secret: s3cret-value\n",
     ["proxmox_api: token_id and token_secret must be given together"]),
    ("proxmox_api:\n  token_id: root@pam!pvebalance\n  token_secret: s3cret-value\n",
     ["proxmox_api: token_id is the token's name only (without 'user@realm!')"]),
])
def test_config_check_names_each_wrong_key_on_its_own_line(tmp_path: Path, text: str, lines: list[str]) -> None:
    path = write(tmp_path, text)
    result = invoke("config", "check", "-c", str(path))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {path}: {line}" for line in lines]
    assert "hunter2" not in result.stderr and "s3cret" not in result.stderr


@pytest.mark.parametrize(("text", "expected"), [
    (None, "error: config file {path} does not exist"),
    ("balancing: [unclosed\n", "error: cannot read config file {path}: "),
])
def test_config_check_of_an_unreadable_file_is_one_line(tmp_path: Path, text: str | None, expected: str) -> None:
    path = tmp_path / "pvebalance.yaml"
    if text is not None:
        path.write_text(text)
    result = invoke("config", "check", "-c", str(path))
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(expected.format(path=path))


def test_config_check_of_a_valid_file_says_ok_with_a_summary_and_no_secret(tmp_path: Path) -> None:
    path = write(tmp_path, "proxmox_api:\n  hosts: [pve1, pve2]\n  user: balancer@pve\n  pass: hunter2hunter2\n"
                           "proxmox_cluster:\n  maintenance_nodes: [pve2]\n"
                           "balancing:\n  method: cpu\n  enable: false\n  pools: {web: {type: anti-affinity}}\n"
                           "redis:\n  url: redis://:redispass@redis.example:6380/1\n")
    result = invoke("config", "check", "-c", str(path))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{path}: ok",
        "  proxmox_api: pve1, pve2 as balancer@pve (password), TLS verified",
        "  balancing: off (plans only), cpu (used), balanciness 5 pp, types vm, ct",
        "  maintenance nodes: pve2; ignored nodes: none",
        "  pools: web (anti-affinity)",
        "  redis: redis://redis.example:6380/1",
    ]


def test_version_is_the_package_metadata_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"pvebalance {version('pvebalance')}\n"


@pytest.mark.parametrize("args", [["-h"], ["config", "-h"], ["import-proxlb-config", "-h"], ["plan", "-h"]])
def test_dash_h_is_help(args: list[str]) -> None:
    short = invoke(*args)
    long = invoke(*args[:-1], "--help")
    assert short.exit_code == long.exit_code == 0
    assert short.stdout == long.stdout and "Usage: " in short.stdout


# --- the shipped example config ----------------------------------------------------------------

def _leaves(node: yaml.Node, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Each key path of a YAML mapping, with the line its key is on (nested mappings too)."""
    found: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            here = (*path, key.value)
            found[here] = key.start_mark.line
            found.update(_leaves(value, here))
    return found


def _get(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def test_example_config_loads_and_passes_config_check() -> None:
    load_settings(EXAMPLE)
    assert invoke("config", "check", "-c", str(EXAMPLE)).exit_code == 0


def test_example_config_has_every_section_and_key_of_the_settings_model() -> None:
    keys = set(_leaves(yaml.compose(EXAMPLE.read_text())))
    lines = EXAMPLE.read_text().splitlines()
    commented = {ln.strip().lstrip("#").split(":")[0].strip() for ln in lines if ln.strip().startswith("# ")}
    for section, info in Settings.model_fields.items():
        assert (section,) in keys, f"section {section} missing"
        model = info.annotation
        assert isinstance(model, type)
        for name, field in model.model_fields.items():
            key = field.alias or name
            # keys that are unset by default appear as a commented line (a value there would be an example)
            assert (section, key) in keys or key in commented, f"{section}.{key} missing"


def test_example_config_values_are_the_defaults_unless_marked_example() -> None:
    text = EXAMPLE.read_text()
    lines = text.splitlines()
    leaves = _leaves(yaml.compose(text))
    examples = {path for path, line in leaves.items() if "(example)" in lines[line]}
    loaded = load_settings(EXAMPLE).model_dump(by_alias=True)
    defaults = Settings().model_dump(by_alias=True)
    raw = yaml.safe_load(text)
    checked = 0
    for path in leaves:
        if any(path[:i] in examples for i in range(1, len(path) + 1)):
            continue
        if isinstance(_get(raw, path), dict) and _get(raw, path):
            continue  # a section: its keys are checked one by one
        assert _get(loaded, path) == _get(defaults, path), f"{'.'.join(path)} differs from the default"
        checked += 1
    assert examples == {("proxmox_api", "hosts"), ("proxmox_api", "token_id"), ("proxmox_api", "token_secret"),
                        ("balancing", "node_resource_reserve"), ("balancing", "pools")}
    assert checked >= 40


def test_config_check_names_the_variables_that_override_the_file(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "balancing:\n  method: cpu\n")
    monkeypatch.setenv("PVEBALANCE_BALANCING__BALANCINESS", "500")
    result = invoke("config", "check", "-c", str(path))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        # a variable is read as JSON where the key may also be a mapping: 500, not '500'
        f"error: {path}: balancing.balanciness: Input should be less than or equal to 100 (got 500)",
        "note: PVEBALANCE_BALANCING__BALANCINESS set: they override the file",
    ]
    monkeypatch.setenv("PVEBALANCE_BALANCING__BALANCINESS", "7")
    monkeypatch.setenv("REDIS_URL", "redis://:s3cr3tpw@redis.example:6379/0")
    result = invoke("config", "check", "-c", str(path))
    assert result.exit_code == 0
    assert "balanciness 7 pp" in result.stdout and "s3cr3tpw" not in result.stdout
    assert result.stdout.splitlines()[-1] == "  overridden by PVEBALANCE_BALANCING__BALANCINESS, REDIS_URL"


@pytest.mark.parametrize(("balancing", "said"), [
    ("method: [memory, cpu]\n  balanciness: {memory: 5, cpu: 10}",
     "balancing: on, memory,cpu (used), balanciness memory 5 pp, cpu 10 pp"),
    ("method: [memory, cpu]\n  balanciness: {cpu: 10}",  # a dimension the mapping leaves out: 5
     "balancing: on, memory,cpu (used), balanciness memory 5 pp, cpu 10 pp"),
    ("method: memory,cpu\n  balanciness: 7", "balancing: on, memory,cpu (used), balanciness 7 pp"),
    ("method: weighted\n  weights: {memory: 1, cpu: 2}",
     "balancing: on, memory,cpu (used), balanciness memory 5 pp, cpu 2.5 pp"),
])
def test_config_check_says_each_balanced_dimension_and_its_band(tmp_path: Path, balancing: str, said: str) -> None:
    """A band per dimension (issue 19's mapping) is summed up as the engine reads it, not a traceback."""
    path = tmp_path / "c.yaml"
    path.write_text(f"balancing:\n  {balancing}\n")
    result = CliRunner().invoke(app, ["config", "check", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert f"  {said}, types vm, ct" in result.stdout.splitlines()
