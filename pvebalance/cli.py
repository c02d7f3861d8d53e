"""The `pvebalance` command: one sub-command per service, plus offline planning and the demo.

Errors an operator can cause (a bad config, a missing file, an unreachable API or Redis) end as
one line on stderr and exit code 2, never as a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from pvebalance.engine import Policy, plan_balance
from pvebalance.shared.apidump import DumpError, load_dump, snapshot_from_api
from pvebalance.shared.config import ConfigError, Settings, load_settings
from pvebalance.shared.logging import configure_logging
from pvebalance.shared.proxmox import ProxmoxError

from .render import plan_to_json, print_plan

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")]


class UserError(Exception):
    """Raised for anything the operator can fix; printed as one line."""


@app.callback()
def root() -> None:
    """Balance the guests of a Proxmox VE cluster over its nodes."""


def _settings(config: Path | None, **overrides: Any) -> Settings:
    settings = load_settings(config, **overrides)
    configure_logging(settings.logging.level, settings.logging.format)
    return settings


@app.command()
def plan(
    scenario: Annotated[str, typer.Option(help="recorded cluster (pve-api-dump/1 file or bundled name)")],
    method: Annotated[str | None, typer.Option(help="memory | cpu | disk")] = None,
    mode: Annotated[str | None, typer.Option(help="used | assigned")] = None,
    balanciness: Annotated[float | None, typer.Option(help="tolerated spread, percentage points")] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as one JSON object")] = False,
) -> None:
    """Plan on a recorded cluster, offline: no Redis, no Proxmox."""
    balancing: dict[str, Any] = {}
    if method:
        balancing["method"] = method
    if mode:
        balancing["mode"] = mode
    if balanciness is not None:
        balancing["balanciness"] = balanciness
    settings = load_settings(config)
    if balancing:
        settings = load_settings(config, balancing={**settings.balancing.model_dump(), **balancing})
    doc = load_dump(scenario)
    snapshot = snapshot_from_api(doc["api"], cluster=doc["name"])
    policy = Policy.from_settings(settings.balancing, settings.proxmox_cluster)
    result = plan_balance(snapshot, policy)
    if as_json:
        sys.stdout.write(json.dumps(plan_to_json(result), indent=2) + "\n")
    else:
        print_plan(result, Console())


def main() -> None:
    try:
        app()
    except (ConfigError, DumpError, ProxmoxError, UserError) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(2)
