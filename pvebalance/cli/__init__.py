"""The `pvebalance` command: one sub-command per service, plus offline planning and the demo.

Each module below registers its commands on `base.app` when imported. `main` imports only the
module of the command it runs (`pvebalance plan` never loads Redis, the job models or the API's
code: a third of its start-up), every module for the root's help or an unknown name; `app`, read
from this package, has them all.
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import TYPE_CHECKING, Any

from pvebalance.shared.errors import OperatorError

from .base import UserError, config_file, err

if TYPE_CHECKING:
    from .base import app

__all__ = ["COMMANDS", "UserError", "app", "config_file", "main", "register"]

# Each command (or group of commands) and the module that registers it: the one place a new command
# is added (tests/unit/test_cli_commands.py checks it against what the modules register).
COMMANDS = {
    "api": "api",
    "approve": "ops", "drain": "ops", "pause": "ops", "rebalance": "ops", "reject": "ops", "resume": "ops",
    "undrain": "ops",
    "best-node": "read", "plans": "read", "requests": "read",
    "cancel": "jobs", "jobs": "jobs",
    "collect": "services", "collector": "services", "demo": "services", "migrator": "services",
    "planner": "services", "record": "services",
    "config": "config", "import-proxlb-config": "config",
    "health": "health",
    "plan": "offline", "simulator": "offline",
    "status": "status",
}


def register(command: str | None = None) -> Any:
    """The app with `command`'s module imported (every module when `command` is None or unknown; none
    for the root's --version)."""
    if command in COMMANDS:
        names = [COMMANDS[command]]
    elif command == "--version":  # the root's own option: no command is needed
        names = []
    else:
        names = sorted(set(COMMANDS.values()))
    for name in names:
        import_module(f"{__name__}.{name}")
    from .base import app

    return app


def __getattr__(name: str) -> Any:
    if name == "app":  # the whole app: tests and embedders see every command
        return register()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    try:
        register(sys.argv[1] if len(sys.argv) > 1 else None)()
    except OperatorError as exc:  # a bad config, a recorded cluster, the API, Redis, a command's own check
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(2)
    except ModuleNotFoundError as exc:  # the demo and the simulator need the `demo` extra (pyproject.toml)
        if exc.name not in ("fakeredis", "cryptography"):
            raise
        err.print(f"error: this command needs pvebalance[demo] ({exc.name} is not installed): "
                  "pip install 'pvebalance[demo]'", markup=False, highlight=False)
        sys.exit(2)
