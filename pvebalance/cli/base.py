"""What every `pvebalance` command shares: the app, the config option, the one-line errors.

Commands live in the modules beside this one, each registering itself on `app` when imported
(`pvebalance.cli` imports them all); they import what they use inside the command, so that
`pvebalance plan` never loads the Proxmox client, Redis or the simulator.

Errors an operator can cause (a bad config, a missing file, an unreachable API or Redis) end as
one line on stderr and exit code 2, never as a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from pvebalance.shared.config import Settings, load_settings
from pvebalance.shared.errors import OperatorError

if TYPE_CHECKING:
    import threading

    from pvebalance.shared.jobs import JobStatusEvent
    from pvebalance.shared.models import ClusterSnapshot

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
err = Console(stderr=True, soft_wrap=True)  # soft_wrap: one message stays one line, at any width

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="YAML config file (default: $PVEBALANCE_CONFIG, else /etc/pvebalance/pvebalance.yaml)")]
CONFIG_ENV = "PVEBALANCE_CONFIG"
DEFAULT_CONFIG = Path("/etc/pvebalance/pvebalance.yaml")  # where the Debian package puts it


class UserError(OperatorError):
    """Raised by a command for anything the operator can fix; printed as one line."""


def show_version(value: bool) -> None:
    """--version on the root command: the installed package's version."""
    if not value:
        return
    try:
        installed = version("pvebalance")
    except PackageNotFoundError:  # run from a source tree that was never installed
        installed = "unknown (not installed)"
    sys.stdout.write(f"pvebalance {installed}\n")
    raise typer.Exit(0)


@app.callback()
def root(version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True,
                                               help="print the version and exit")] = False) -> None:
    """Balance the guests of a Proxmox VE cluster over its nodes."""


def config_file(config: Path | None, *, warn: bool = True) -> Path | None:
    """The config file a command reads: `-c`, else $PVEBALANCE_CONFIG, else DEFAULT_CONFIG when it exists.

    None when there is none: the command runs on the defaults (and the PVEBALANCE_* variables), and
    says so in one line, so that `pvebalance plans` never reads another Redis without a word."""
    if config is not None:
        return config
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    if DEFAULT_CONFIG.is_file():
        return DEFAULT_CONFIG
    if warn:
        err.print(f"warning: no config file (-c, ${CONFIG_ENV} or {DEFAULT_CONFIG}): using the defaults "
                  f"and the PVEBALANCE_* variables", markup=False, highlight=False)
    return None


def settings_of(config: Path | None, **overrides: Any) -> Settings:
    """The settings of the config file `config_file` finds (a missing one warned about)."""
    return load_settings(config_file(config), **overrides)


def service_settings(config: Path | None, **overrides: Any) -> Settings:
    """The settings a service runs on, with its logging configured from them."""
    from pvebalance.shared.logging import configure_logging  # structlog: not for the offline commands

    settings = settings_of(config, **overrides)
    configure_logging(settings.logging.level, settings.logging.format)
    return settings


def read_events(redis: Any, after: str = "0-0", count: int = 1000,
                warn: Callable[[str], None] | None = None) -> list[tuple[str, JobStatusEvent]]:
    """The status events after `after`; one this version cannot read is skipped with a warning."""
    from pvebalance.shared import keys
    from pvebalance.shared.jobstore import JobStore

    say = warn or (lambda text: err.print(f"warning: {text}", markup=False, highlight=False))

    def skipped(entry: str, why: str) -> None:
        say(f"skipped event {entry} in {keys.EVENT_STREAM}: {why}")

    return JobStore(redis).events(after, count, on_skip=skipped)


def warn_unusable(snapshot: ClusterSnapshot) -> None:
    """One line per node whose figures cannot be planned on: the plan leaves it and its guests alone."""
    for node in snapshot.nodes:
        if node.problem:
            err.print(f"warning: node {node.name} is not planned on (nothing moves onto or off it): {node.problem}",
                      markup=False, highlight=False)


def stop_on_signals(stop: threading.Event) -> threading.Event:
    """`stop`, set by SIGTERM or SIGINT: a service ends its current step and exits."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
