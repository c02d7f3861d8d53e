"""The systemd units, run as systemd would run them: each unit's ExecStart, Environment and
EnvironmentFile (read from the unit files, with /opt/pvebalance and /etc/pvebalance mapped to this
test's install and config folder) against a real Redis and the simulator, until all-on-one is balanced.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from redis import Redis

from pvebalance.shared import keys
from pvebalance.shared.jobs import JobState
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import Plan
from tests.helpers import REPO, SimFactory, api_settings, kill_tree

UNITS = REPO / "deploy" / "systemd"
INSTALL_BIN = "/opt/pvebalance/bin/"
CONFIG_DIR = "/etc/pvebalance/"


def read_unit(path: Path) -> configparser.RawConfigParser:
    unit = configparser.RawConfigParser(strict=False, delimiters=("=",), comment_prefixes=("#", ";"))
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(path.read_text())
    return unit


def wanted_units() -> list[str]:
    """The units pvebalance.target wants (Wants= may repeat, which configparser would fold)."""
    lines = (UNITS / "pvebalance.target").read_text().splitlines()
    return [unit for line in lines if line.startswith("Wants=") for unit in line.removeprefix("Wants=").split()]


def unit_file(name: str) -> tuple[Path, str]:
    """The file of a unit, and its instance name for a template (pvebalance-migrator@2 -> '2')."""
    if "@" in name:
        prefix, _, rest = name.partition("@")
        return UNITS / f"{prefix}@.service", rest.removesuffix(".service")
    return UNITS / name, ""


def command_and_env(name: str, bin_dir: Path, etc: Path) -> tuple[list[str], dict[str, str]]:
    path, instance = unit_file(name)
    service = read_unit(path)["Service"]

    def mapped(text: str) -> str:
        return text.replace("%i", instance).replace(INSTALL_BIN, f"{bin_dir}/").replace(CONFIG_DIR, f"{etc}/")

    argv = [mapped(a) for a in shlex.split(service["ExecStart"])]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # systemd's services start with a bare environment
    for assignment in shlex.split(service.get("Environment", "")):
        key, _, value = assignment.partition("=")
        env[key] = value
    env_file = Path(mapped(service["EnvironmentFile"].lstrip("-")))
    for line in env_file.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    env["TMPDIR"] = env["HOME"] = str(etc.parent / "tmp")  # PrivateTmp=yes: a /tmp of the service's own
    return argv, env


def test_every_unit_is_hardened_and_wanted_by_the_target() -> None:
    units = sorted(p.name for p in UNITS.glob("*.service"))
    assert units == ["pvebalance-api.service", "pvebalance-collector.service", "pvebalance-migrator@.service",
                     "pvebalance-planner.service"]
    wanted = wanted_units()
    for name in units:
        service = read_unit(UNITS / name)["Service"]
        for option, value in (("DynamicUser", "yes"), ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                              ("PrivateTmp", "yes"), ("CapabilityBoundingSet", "")):
            assert service[option] == value, f"{name}: {option}"
        assert service["ExecStart"].startswith(f"{INSTALL_BIN}pvebalance ")
        assert f"-c {CONFIG_DIR}pvebalance.yaml" in service["ExecStart"]
        assert any(w == name or w.startswith(name.replace("@.service", "@")) for w in wanted), name


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze on this machine")
def test_systemd_accepts_the_unit_files(tmp_path: Path) -> None:
    for unit in UNITS.iterdir():
        if unit.suffix in (".service", ".target"):
            shutil.copy(unit, tmp_path / unit.name.replace("@.service", "@1.service"))
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(map(str, tmp_path.iterdir()))],
                         capture_output=True, text=True)
    # the one complaint expected here: pvebalance is not installed at /opt/pvebalance on this machine
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if line.strip() and "/opt/pvebalance/bin/pvebalance is not executable" not in line]
    assert not problems, problems


@pytest.mark.integration
def test_units_run_as_written_balance_all_on_one(start_simulator: SimFactory, real_redis: Redis, redis_url: str,
                                                 tmp_path: Path) -> None:
    sim = start_simulator("all-on-one", time_scale=0.01)
    api = api_settings(sim)
    etc, tmp = tmp_path / "etc", tmp_path / "tmp"
    etc.mkdir()
    tmp.mkdir()
    # The config as README's systemd section has it: no secret in it; the secret in pvebalance.env.
    (etc / "pvebalance.yaml").write_text(yaml.safe_dump({
        "proxmox_api": {"hosts": api.hosts, "user": api.user, "token_id": api.token_id, "ca_file": str(api.ca_file)},
        "collector": {"interval": 1},
        "migrator": {"poll_interval": 0.05},
        "logging": {"format": "json"},
    }))
    secret = api.token_secret.get_secret_value() if api.token_secret else ""
    (etc / "pvebalance.env").write_text(f"PVEBALANCE_PROXMOX_API__TOKEN_SECRET={secret}\nREDIS_URL={redis_url}\n")
    bin_dir = Path(sys.executable).parent
    has_api = subprocess.run([str(bin_dir / "pvebalance"), "api", "--help"], capture_output=True).returncode == 0
    started: list[tuple[str, list[str], subprocess.Popen[bytes]]] = []
    try:
        for name in wanted_units():
            if name == "pvebalance-api.service" and not has_api:
                continue  # `pvebalance api` is not in this build: the API does not take part in a rebalance
            argv, env = command_and_env(name, bin_dir, etc)
            proc = subprocess.Popen(argv, env=env, cwd=tmp, stdout=(tmp_path / f"{name}.log").open("wb"),
                                    stderr=subprocess.STDOUT)
            started.append((name, argv, proc))
        assert [argv[1] for _, argv, _ in started].count("migrator") == 2
        deadline = time.monotonic() + 120
        balanced = False
        while time.monotonic() < deadline and not balanced:
            for name, _, proc in started:
                assert proc.poll() is None, f"{name} exited: {(tmp_path / f'{name}.log').read_text()[-2000:]}"
            balanced = is_balanced(real_redis)
            time.sleep(0.5)
        assert balanced, "not balanced within 120 s: " + "; ".join(
            f"{log.name}: {log.read_text()[-500:]}" for log in tmp_path.glob("*.log"))
    finally:
        for _, _, proc in started:
            kill_tree(proc)


def is_balanced(redis: Redis) -> bool:
    """A plan moved guests, every job of it succeeded, and a later plan found nothing to move."""
    plans = sorted((Plan.model_validate_json(raw) for pid in redis.zrange(keys.PLAN_INDEX, 0, -1)
                    if (raw := redis.get(keys.plan(pid.decode())))), key=lambda p: p.created_at)
    store = JobStore(redis)
    states = {e.job_id: e.state for _, e in store.events("0-0", 100_000)}
    return (len(plans) >= 2 and bool(plans[0].migrations) and not plans[-1].migrations and bool(states)
            and set(states.values()) == {JobState.SUCCEEDED} and not store.active_jobs())
