"""The `pvebalance` command: one sub-command per service, plus offline planning and the demo.

Each module below registers its commands on `base.app` when imported; this package imports them
all (the list is the one place a new command module is added) and runs the app.
"""

from __future__ import annotations

import sys

from pvebalance.shared.errors import OperatorError

from . import api, config, health, jobs, offline, ops, read, services, status  # noqa: F401  (register commands)
from .base import UserError, app, config_file, err

__all__ = ["UserError", "app", "config_file", "main"]


def main() -> None:
    try:
        app()
    except OperatorError as exc:  # a bad config, a recorded cluster, the API, Redis, a command's own check
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(2)
    except ModuleNotFoundError as exc:  # the demo and the simulator need the `demo` extra (pyproject.toml)
        if exc.name not in ("fakeredis", "cryptography"):
            raise
        err.print(f"error: this command needs pvebalance[demo] ({exc.name} is not installed): "
                  "pip install 'pvebalance[demo]'", markup=False, highlight=False)
        sys.exit(2)
