"""Commands that need no Redis and no cluster: `plan` on a recorded cluster, and `simulator`.

`plan` imports the engine, the simulator only its defaults (both light); neither loads the
Proxmox client or Redis.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from pvebalance.shared.words import plural
from pvebalance.simulator.links import DEFAULT_GBIT
from pvebalance.simulator.realism import Realism

from .base import ConfigOpt, UserError, app, config_file, err, warn_unusable

if TYPE_CHECKING:
    from pvebalance.shared.models import ClusterSnapshot


@app.command()
def plan(
    scenario: Annotated[str, typer.Option(help="recorded cluster (pve-api-dump/1 file or bundled name)")],
    method: Annotated[str | None, typer.Option(help="memory | cpu | disk, or several at once: memory,cpu")] = None,
    mode: Annotated[str | None, typer.Option(help="used | assigned")] = None,
    balanciness: Annotated[str | None, typer.Option(
        help="tolerated spread, percentage points: one for all, or each its own: memory=5,cpu=10")] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as one JSON object")] = False,
    storage: Annotated[bool, typer.Option("--storage", help="balance the shared storages too (disk moves), as "
                                          "storage_balancing.enable does")] = False,
) -> None:
    """Plan on a recorded cluster, offline: no Redis, no Proxmox."""
    balancing: dict[str, Any] = {}
    if method:
        balancing["method"] = method
    if mode:
        balancing["mode"] = mode
    if balanciness is not None:
        balancing["balanciness"] = balanciness
    from pvebalance.engine import Policy
    from pvebalance.engine.cluster_plan import plan_cluster
    from pvebalance.shared.scenario import load_scenario

    from .render import plan_to_json, print_plan

    recorded = load_scenario(scenario)
    # offline: the defaults are a fine policy to plan with (no warning without a config file)
    settings = recorded.settings(config_file(config, warn=False), **balancing)
    snapshot = recorded.snapshot
    warn_unusable(snapshot)
    # the config's migrator limits and links too: the plan's queue order and expected time follow them
    policy = replace(Policy.from_settings(settings.balancing, settings.proxmox_cluster), migrator=settings.migrator)
    storage_settings = settings.storage_balancing
    if storage:
        storage_settings = storage_settings.model_copy(update={"enable": True})
    # a plan of a large cluster takes seconds: say what is being planned meanwhile (on a terminal only,
    # erased when done; nothing is written where stderr is a file or a pipe)
    with err.status(planning_line(snapshot, policy.dimensions)):
        result = plan_cluster(snapshot, policy, storage_settings)
    if as_json:
        sys.stdout.write(json.dumps(plan_to_json(result), indent=2) + "\n")
    else:
        print_plan(result, Console())


def planning_line(snapshot: ClusterSnapshot, dimensions: tuple[str, ...]) -> str:
    """What `plan` says while it plans: 'planning 10,000 guests on 20 nodes by memory, cpu'."""
    return (f"planning {plural(len(snapshot.guests), 'guest', grouped=True)} on "
            f"{plural(len(snapshot.nodes), 'node', grouped=True)} by {', '.join(dimensions)}")



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

    from pvebalance.shared.apidump import load_dump
    from pvebalance.shared.logging import configure_logging
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
