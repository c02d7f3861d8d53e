"""The `pvebalance` command: one sub-command per service, plus offline planning and the demo.

Errors an operator can cause (a bad config, a missing file, an unreachable API or Redis) end as
one line on stderr and exit code 2, never as a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from pvebalance.engine import Policy, plan_balance
from pvebalance.shared.apidump import DumpError, load_dump, operator_pools, snapshot_from_api
from pvebalance.shared.config import ConfigError, Settings, load_settings
from pvebalance.shared.logging import configure_logging
from pvebalance.shared.models import ClusterSnapshot, JobState, JobStatusEvent
from pvebalance.shared.proxmox import ProxmoxError
from pvebalance.shared.redisconn import RedisUnavailable
from pvebalance.simulator.links import DEFAULT_GBIT
from pvebalance.simulator.realism import Realism

from .cli_config import register as register_config_commands
from .cli_config import show_version
from .render import plan_to_json, print_plan

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
err = Console(stderr=True, soft_wrap=True)  # soft_wrap: one message stays one line, at any width

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="YAML config file (default: $PVEBALANCE_CONFIG, else /etc/pvebalance/pvebalance.yaml)")]
CONFIG_ENV = "PVEBALANCE_CONFIG"
DEFAULT_CONFIG = Path("/etc/pvebalance/pvebalance.yaml")  # where the Debian package puts it


class UserError(Exception):
    """Raised for anything the operator can fix; printed as one line."""


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


def _settings(config: Path | None, **overrides: Any) -> Settings:
    settings = settings_of(config, **overrides)
    configure_logging(settings.logging.level, settings.logging.format)
    return settings


@app.command()
def plan(
    scenario: Annotated[str, typer.Option(help="recorded cluster (pve-api-dump/1 file or bundled name)")],
    method: Annotated[str | None, typer.Option(help="memory | cpu | disk, or several at once: memory,cpu")] = None,
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
    doc = load_dump(scenario)
    config = config_file(config, warn=False)  # offline: the defaults are a fine policy to plan with
    settings = load_settings(config)
    if not settings.balancing.pools and operator_pools(doc):
        balancing["pools"] = operator_pools(doc)  # the rules recorded with the cluster
    if balancing:
        settings = load_settings(config, balancing={**settings.balancing.model_dump(), **balancing})
    try:
        snapshot = snapshot_from_api(doc["api"], cluster=doc["name"])
    except DumpError as exc:
        raise DumpError(f"scenario {scenario}: {exc}") from None
    warn_unusable(snapshot)
    policy = Policy.from_settings(settings.balancing, settings.proxmox_cluster)
    result = plan_balance(snapshot, policy)
    if as_json:
        sys.stdout.write(json.dumps(plan_to_json(result), indent=2) + "\n")
    else:
        print_plan(result, Console())


@app.command()
def simulator(
    scenario: Annotated[str, typer.Option(help="recorded cluster to serve")] = "all-on-one",
    port: Annotated[int, typer.Option(help="HTTPS port (0: any free port)")] = 8006,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    time_scale: Annotated[float, typer.Option(help="multiplies every simulated migration's duration")] = 1.0,
    cert: Annotated[Path | None, typer.Option(help="PEM certificate (default: self-signed, made now)")] = None,
    key: Annotated[Path | None, typer.Option(help="PEM key for --cert")] = None,
    certdir: Annotated[Path, typer.Option(help="where a self-signed certificate is written")] = Path(".sim-certs"),
    latency: Annotated[float, typer.Option(min=0, help="ms each request takes, ± jitter (0: instant)")]
    = Realism.latency_ms,
    workers: Annotated[int, typer.Option(min=0, help="requests each node serves at once; more wait (0: no limit)")]
    = Realism.workers,
    figure_lag: Annotated[float, typer.Option(min=0, help="s node figures lag behind, at time-scale 1")]
    = Realism.figure_lag,
    host_variation: Annotated[float, typer.Option(min=0, max=0.9, help="± share of its own memory a host uses")]
    = Realism.host_variation,
    live_memory: Annotated[bool, typer.Option(help="a live migration holds memory on both nodes until it ends")]
    = Realism.live_memory,
    idle: Annotated[bool, typer.Option(help="an idle, instant cluster: every realism above off")] = False,
    link_gbit: Annotated[float, typer.Option(min=0.001, help="each node's migration link, Gbit/s, shared by the "
                                             "migrations using it (a scenario's link_gbit names nodes' own)")]
    = DEFAULT_GBIT,
    privileges: Annotated[str | None, typer.Option(help="give the API token only these privileges, comma-separated "
                                                   "(e.g. Sys.Audit,VM.Audit), as a restricted PVE token has: "
                                                   "calls that need another answer 403 as PVE does")] = None,
) -> None:
    """Serve a recorded cluster as a Proxmox VE 9 API over HTTPS, until interrupted."""
    import threading

    from pvebalance.simulator.server import Simulator

    configure_logging("INFO", "console")
    realism = Realism.off() if idle else Realism(latency_ms=latency, workers=workers, figure_lag=figure_lag,
                                                 host_variation=host_variation, live_memory=live_memory)
    from pvebalance.simulator.permissions import parse as parse_privileges

    try:
        granted = parse_privileges(privileges) if privileges is not None else None
    except ValueError as exc:
        raise UserError(f"--privileges: {exc}") from None
    token = next(iter(Simulator.default_tokens()))
    try:
        sim = Simulator(load_dump(scenario), time_scale=time_scale, realism=realism, link_gbit=link_gbit,
                        privileges={token: granted} if granted is not None else None)
    except ValueError as exc:  # the scenario's link_gbit
        raise UserError(f"scenario {scenario}: {exc}") from None
    try:
        bound = sim.start(port, host, certdir=certdir, certfile=cert, keyfile=key)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    token_ident, token_secret = next(iter(sim.tokens.items()))
    user, token_id = token_ident.split("!")
    err.print(f"Proxmox VE simulator for '{sim.cluster.name}' on https://{host}:{bound}/api2/json", highlight=False)
    err.print(f"  CA certificate: {sim.cafile}", highlight=False)
    err.print(f"  API token: user {user}, token_id {token_id}, token_secret {token_secret}", highlight=False)
    if granted is not None:
        err.print(f"  the token's privileges (on /): {', '.join(sorted(granted)) or 'none'}", highlight=False)
    err.print(f"  password login: {user} / {sim.users[user]}", highlight=False)
    err.print("  realism: " + ", ".join(f"{k} {v}" for k, v in realism.as_json().items()), highlight=False)
    links = sim.tasks.links
    err.print(f"  migration links: {links.default_gbit:g} Gbit/s"
              + "".join(f", {n} {g:g}" for n, g in sorted(links.gbit.items())), highlight=False)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        sim.stop()


@app.command()
def collector(config: ConfigOpt = None) -> None:
    """Run the collector service: publish a snapshot every `collector.interval` seconds."""
    import threading

    from pvebalance.services.collector.collector import run_collector

    run_collector(_settings(config), _stop_on_signals(threading.Event()))


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
    from pvebalance.shared.redisconn import connect

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

    run_planner(_settings(config), _stop_on_signals(threading.Event()))


@app.command()
def migrator(
    config: ConfigOpt = None,
    burst: Annotated[bool, typer.Option(help="exit when the queue is empty")] = False,
) -> None:
    """Run one migrator worker (an rq worker); start several for parallel migrations."""
    from pvebalance.services.migrator.worker import run_worker

    run_worker(_settings(config), burst=burst)


@app.command()
def demo(
    scenario: Annotated[str, typer.Option(help="recorded cluster to balance")] = "all-on-one",
    redis_url: Annotated[
        str | None, typer.Option(envvar="REDIS_URL", help="Redis to use; an embedded one if it does not answer")
    ] = None,
    workers: Annotated[int, typer.Option(help="migrator worker processes")] = 3,
    time_scale: Annotated[float, typer.Option(help="simulated migration time factor")] = 0.05,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 300.0,
) -> None:
    """Balance a simulated cluster end to end: simulator, Redis, collector, planner, migrators."""
    from pvebalance.services.collector.collector import CollectError

    from .demo import run_demo

    try:
        ok = run_demo(scenario, redis_url, workers, time_scale, timeout, Console())
    except CollectError as exc:
        raise UserError(f"the demo could not read its simulated cluster: {exc}") from None
    raise typer.Exit(0 if ok else 1)


@app.command()
def jobs(
    job_id: Annotated[str | None, typer.Argument(help="show this job with all its events")] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Migration jobs not yet ended, and the latest state of recent ones."""
    from pvebalance.shared.jobstore import JobStore
    from pvebalance.shared.redisconn import connect

    from .cli_tables import compact, id_column, plural, text_columns, when

    redis = connect(settings_of(config).redis)
    store = JobStore(redis)
    events = [e for _, e in read_events(redis, count=10_000)]
    if job_id is not None:
        record = store.load(job_id)
        if not record:
            raise UserError(f"no job {job_id} (`pvebalance jobs` lists them)")
        mine = [e for e in events if e.job_id == job_id]
        if as_json:
            doc = {"job": dict(record.fields), "events": [e.model_dump(mode="json") for e in mine]}
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
            return
        console = Console()
        for field, value in sorted(record.fields.items()):
            console.print(f"{field}: {value}", markup=False, highlight=False)
        table = compact(plural(len(mine), "event"))
        text_columns(table, "at", "state", "upid", "message")
        for e in mine:
            table.add_row(f"{e.at.astimezone():%H:%M:%S.%f}"[:-3], e.state.value, e.upid or "", e.message)
        console.print(table)
        return
    latest = {e.job_id: e for e in events}
    rows = sorted(latest.values(), key=lambda e: e.at)
    if as_json:
        sys.stdout.write(json.dumps([e.model_dump(mode="json") for e in rows], indent=2) + "\n")
        return
    table = compact(f"{plural(len(store.active_jobs()), 'active job')}, {plural(len(rows), 'recent job')}")
    id_column(table, "job", [e.job_id for e in rows])
    text_columns(table, "vmid", "move", "state", "at", "message", right=("vmid",), whole=("at", "move"))
    for e in rows:
        table.add_row(e.job_id, str(e.vmid), f"{e.source} -> {e.target}", e.state.value, when(e.at), e.message)
    Console().print(table)


@app.command()
def cancel(job_id: Annotated[str, typer.Argument(help="a job id, as `pvebalance jobs` shows it")],
           config: ConfigOpt = None) -> None:
    """Cancel a migration job that has not started migrating yet."""
    from pvebalance.shared.jobstore import JobStore
    from pvebalance.shared.redisconn import connect

    try:
        state = JobStore(connect(settings_of(config).redis)).cancel(job_id)
    except ValidationError as exc:  # a job written by a version whose schema this one does not know
        first = exc.errors(include_url=False)[0]
        raise UserError(f"job {job_id} cannot be read by this version of pvebalance "
                        f"({'.'.join(str(p) for p in first['loc']) or 'job'}: {first['msg']}); not cancelled") from None
    if state is None:
        raise UserError(f"no job {job_id}")
    if state is not JobState.CANCELLED:
        raise UserError(f"job {job_id} is {state.value}: only queued or waiting jobs can be cancelled")
    err.print(f"job {job_id} cancelled", highlight=False)


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


def _stop_on_signals(stop: Any) -> Any:
    import signal

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


register_config_commands(app)  # config check, import-proxlb-config (cli_config.py)
# Commands in their own modules register themselves on `app` when imported.
from . import (  # noqa: E402,F401
    cli_health,
    cli_ops,
    cli_read,
    cli_status,
)


def main() -> None:
    try:
        app()
    except (ConfigError, DumpError, ProxmoxError, RedisUnavailable, UserError) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(2)
    except ModuleNotFoundError as exc:  # the demo and the simulator need the `demo` extra (pyproject.toml)
        if exc.name not in ("fakeredis", "cryptography"):
            raise
        err.print(f"error: this command needs pvebalance[demo] ({exc.name} is not installed): "
                  "pip install 'pvebalance[demo]'", markup=False, highlight=False)
        sys.exit(2)


from pvebalance import cli_api  # noqa: E402, F401  (registers `pvebalance api` on `app`)
