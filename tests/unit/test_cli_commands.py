"""The command registry (`pvebalance.cli.COMMANDS`): `pvebalance X` imports only X's module, so the
registry must name, for every command the modules register, the module that registers it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.main import get_command

import pvebalance.cli as cli


def registered() -> dict[str, str]:
    """Each command (or group) of the whole app and the module its code lives in."""
    group = get_command(cli.app)
    out = {}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        callback = command.callback or next(iter(command.commands.values())).callback  # a group: its first command
        out[name] = callback.__module__.removeprefix("pvebalance.cli.")
    return out


def test_every_registered_command_is_in_the_registry_with_its_module() -> None:
    assert registered() == cli.COMMANDS


def imported_after(*args: str) -> set[str]:
    code = ("import sys; sys.argv = ['pvebalance', *sys.argv[1:]]\nfrom pvebalance.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(' '.join(m for m in sys.modules if m.startswith(('pvebalance.cli.', 'redis', 'rq', 'structlog', "
            "'proxmoxer', 'fastapi'))), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    return set(out.stderr.splitlines()[-1].split()) if out.stderr else set()  # the last line: the modules


@pytest.mark.parametrize(("args", "module"), [
    (["plan", "--scenario", "tight"], "offline"),
    (["config", "check", "--help"], "config"),
    (["best-node", "--help"], "read"),
])
def test_a_command_loads_its_own_module_and_no_other_command_module(args: list[str], module: str) -> None:
    loaded = {m for m in imported_after(*args) if m.startswith("pvebalance.cli.")}
    command_modules = {f"pvebalance.cli.{m}" for m in cli.COMMANDS.values()}
    assert loaded & command_modules == {f"pvebalance.cli.{module}"}


def test_an_offline_plan_loads_neither_redis_nor_the_proxmox_client_nor_the_api() -> None:
    loaded = imported_after("plan", "--scenario", "tight")
    assert not {m for m in loaded if m.split(".")[0] in ("redis", "rq", "proxmoxer", "fastapi")}


def test_the_root_help_and_an_unknown_command_see_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "pvebalance", "--help"], capture_output=True, text=True, timeout=60)
    assert all(name in out.stdout for name in cli.COMMANDS)
    wrong = subprocess.run([sys.executable, "-m", "pvebalance", "plna"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "No such command" in wrong.stderr
