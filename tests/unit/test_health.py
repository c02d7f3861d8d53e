"""`pvebalance health`: which service a command runs, and what counts as alive."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import Redis
from typer.testing import CliRunner

from pvebalance.cli import app
from pvebalance.cli.health import running_service, service_of
from pvebalance.shared.heartbeat import beat


@pytest.mark.parametrize(("argv", "expected"), [
    (["/venv/bin/pvebalance", "collector", "-c", "/etc/p.yaml"], ("collector", Path("/etc/p.yaml"), None)),
    (["tini", "--", "pvebalance", "planner", "--config=/c.yaml"], ("planner", Path("/c.yaml"), None)),
    (["python3", "-m", "pvebalance", "migrator"], ("migrator", None, None)),
    (["pvebalance", "api", "--host", "0.0.0.0", "--port", "9000"], ("api", None, 9000)),
    (["pvebalance", "simulator", "--port", "8006"], None),
    (["pvebalance", "health", "collector"], None),
    (["redis-server", "--port", "6379"], None),
    ([""], None),
])
def test_the_service_is_read_off_its_command_line(argv: list[str], expected: object) -> None:
    assert service_of(argv) == expected


def test_the_running_service_is_found_in_proc(tmp_path: Path) -> None:
    for pid, argv in ((1, ["tini", "--", "pvebalance", "collector", "-c", "/x.yaml"]), (7, ["sleep", "9"])):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
    assert running_service(tmp_path) == ("collector", Path("/x.yaml"), None)


@pytest.mark.integration
def test_healthy_only_with_a_heartbeat_of_this_host(real_redis: Redis, redis_url: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVEBALANCE_REDIS__URL", redis_url)
    runner = CliRunner()
    result = runner.invoke(app, ["health", "planner"])
    assert result.exit_code == 1 and "no live planner" in result.output
    beat(real_redis, "planner", instance="elsewhere-1-abc")
    assert runner.invoke(app, ["health", "planner"]).exit_code == 1
    assert runner.invoke(app, ["health", "planner", "--anywhere"]).exit_code == 0
    beat(real_redis, "planner")  # this process: this host's instance
    result = runner.invoke(app, ["health", "planner"])
    assert result.exit_code == 0 and "healthy: planner" in result.output
    assert runner.invoke(app, ["health", "migrator"]).exit_code == 1  # no rq worker here


def test_redis_away_is_unhealthy_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVEBALANCE_REDIS__URL", "redis://127.0.0.1:1/0")
    result = CliRunner().invoke(app, ["health", "collector"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "does not answer" in result.output


def test_api_without_an_answer_is_unhealthy() -> None:
    result = CliRunner().invoke(app, ["health", "api", "--port", "1"])
    assert result.exit_code == 1 and "does not answer" in result.output
