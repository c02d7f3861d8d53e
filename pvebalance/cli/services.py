"""The services (`collector`, `planner`, `migrator`), the read-once commands beside the collector
(`collect`, `record`) and the `demo` that runs them all on a simulated cluster.

Each imports its service inside the command: starting one never loads the others.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pvebalance.shared.logging import configure_logging

from .base import ConfigOpt, UserError, app, err, service_settings, settings_of, stop_on_signals


@app.command()
def collector(config: ConfigOpt = None) -> None:
    """Run the collector service: publish a snapshot every `collector.interval` seconds."""
    import threading

    from pvebalance.services.collector.collector import run_collector

    run_collector(service_settings(config), stop_on_signals(threading.Event()))


@app.command()
def collect(
    once: Annotated[bool, typer.Option("--once", help="read the cluster once and print the snapshot")] = True,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="the snapshot model as JSON")] = False,
) -> None:
    """Read the cluster once, with the running collector's config cache in Redis when it answers.

    Read-only: the config cache, the guests' moving averages and the nodes' RRD figures are read
    from Redis, never written (the planner balances on those averages).
    """
    from pvebalance.services.collector.collector import CollectError, Collector, read_limits
    from pvebalance.shared.proxmox import ProxmoxClient
    from pvebalance.shared.redisconn import RedisUnavailable, connect

    settings = settings_of(config)
    configure_logging(settings.logging.level, "console", stream=sys.stderr)
    try:
        redis = connect(settings.redis)
    except RedisUnavailable as exc:
        err.print(f"warning: {exc}; reading every guest config (no cache)", markup=False, highlight=False)
        redis = None
    client = ProxmoxClient(settings.proxmox_api)
    try:
        snapshot = Collector(client, redis, read_only=True, reads=read_limits(settings.collector)).snapshot()
    except CollectError as exc:
        raise UserError(str(exc)) from None
    if as_json:
        sys.stdout.write(snapshot.model_dump_json(indent=2) + "\n")
        return
    from .render import snapshot_table

    Console().print(snapshot_table(snapshot))
    Console().print(f"{client.requests} API requests")


@app.command()
def record(
    out: Annotated[Path, typer.Argument(help="file to write (pve-api-dump/1)")],
    config: ConfigOpt = None,
) -> None:
    """Write the live cluster as a pve-api-dump/1 file, to plan on offline or attach to a bug report."""
    from datetime import UTC, datetime

    from pvebalance.services.collector.collector import CollectError, Collector, read_limits
    from pvebalance.shared.apidump import DUMP_FORMAT
    from pvebalance.shared.proxmox import ProxmoxClient

    settings = settings_of(config)
    configure_logging(settings.logging.level, "console", stream=sys.stderr)
    client = ProxmoxClient(settings.proxmox_api)
    try:
        api = Collector(client, None, full_configs=True, read_only=True,
                        reads=read_limits(settings.collector)).read_api()
    except CollectError as exc:
        raise UserError(str(exc)) from None
    # Written as the API answered, even when an answer is malformed: the file is what a bug report
    # needs, and `plan --scenario` names the bad entry when it reads it.
    status = api.get("/cluster/status")
    name = next((e.get("name") for e in status if isinstance(e, dict) and e.get("type") == "cluster"
                 and isinstance(e.get("name"), str)), None) if isinstance(status, list) else None
    doc = {"format": DUMP_FORMAT, "name": name or out.stem,
           "description": f"recorded from {client.host} at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "api": api}
    try:
        out.write_text(json.dumps(doc, indent=1, sort_keys=True))
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    resources = api["/cluster/resources"] if isinstance(api["/cluster/resources"], list) else []
    guests = sum(1 for r in resources if isinstance(r, dict) and r.get("type") in ("qemu", "lxc"))
    err.print(f"wrote {out}: {guests} guests, {client.requests} API requests", highlight=False)


@app.command()
def planner(config: ConfigOpt = None) -> None:
    """Run the planner service: plan on each new snapshot and enqueue the migrations."""
    import threading

    from pvebalance.services.planner.planner import run_planner

    run_planner(service_settings(config), stop_on_signals(threading.Event()))


@app.command()
def migrator(
    config: ConfigOpt = None,
    burst: Annotated[bool, typer.Option(help="exit when the queue is empty")] = False,
) -> None:
    """Run one migrator worker (an rq worker); start several for parallel migrations."""
    from pvebalance.services.migrator.worker import run_worker

    run_worker(service_settings(config), burst=burst)


@app.command()
def demo(
    scenario: Annotated[str, typer.Option(help="recorded cluster to balance")] = "all-on-one",
    redis_url: Annotated[
        str | None, typer.Option(envvar="REDIS_URL", help="Redis to use; an embedded one if it does not answer")
    ] = None,
    workers: Annotated[int, typer.Option(help="migrator worker processes")] = 3,
    time_scale: Annotated[float, typer.Option(help="simulated migration time factor")] = 0.05,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 300.0,
    storage: Annotated[bool, typer.Option("--storage", help="balance the shared storages too (disk moves), as "
                                          "storage_balancing.enable does")] = False,
) -> None:
    """Balance a simulated cluster end to end: simulator, Redis, collector, planner, migrators."""
    from pvebalance.demo import run_demo
    from pvebalance.services.collector.collector import CollectError

    try:
        ok = run_demo(scenario, redis_url, workers, time_scale, timeout, Console(), storage=storage)
    except CollectError as exc:
        raise UserError(f"the demo could not read its simulated cluster: {exc}") from None
    raise typer.Exit(0 if ok else 1)


