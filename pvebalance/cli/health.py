"""`pvebalance health [SERVICE]`: is this host's (container's, pod's) service alive? For health checks.

collector, planner: a heartbeat in Redis (shared/heartbeat.py) from an instance on this host, beaten
by the leader's work loop or by a follower waiting to lead. migrator: an rq worker of this host in
rq's worker registry (it expires when the worker stops beating). api: its /healthz answers 200.

Without SERVICE the service is read off the running `pvebalance SERVICE ...` command (with its
`-c` config), so one image-wide HEALTHCHECK serves every service. Exit 0 healthy, 1 unhealthy (as
Docker and Kubernetes read exit codes), each with one line; never a traceback.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated

import typer

from pvebalance.shared.config import ConfigError, RedisSettings, load_settings

from .base import ConfigOpt, app, config_file

SERVICES = ("collector", "planner", "migrator", "api")


def running_service(proc: Path = Path("/proc")) -> tuple[str, Path | None, int | None] | None:
    """(service, its -c config, its --port) of the first `pvebalance SERVICE` process found, or None."""
    me = os.getpid()
    pids = sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit())
    for pid in pids:
        if pid == me:
            continue
        try:
            argv = (proc / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        found = service_of(argv)
        if found:
            return found
    return None


def service_of(argv: list[str]) -> tuple[str, Path | None, int | None] | None:
    """The service a `pvebalance SERVICE ...` (or `python -m pvebalance SERVICE ...`) command runs."""
    for i, word in enumerate(argv[:-1]):
        if os.path.basename(word) == "pvebalance" and (i == 0 or argv[i - 1] != "health"):
            rest = argv[i + 1:]
            break
    else:
        return None
    if not rest or rest[0] not in SERVICES:
        return None

    def option(*names: str) -> str | None:
        for j, arg in enumerate(rest):
            for name in names:
                if arg == name and j + 1 < len(rest):
                    return rest[j + 1]
                if arg.startswith(name + "="):
                    return arg.split("=", 1)[1]
        return None

    config, port = option("-c", "--config"), option("--port")
    return rest[0], Path(config) if config else None, int(port) if port and port.isdigit() else None


def _unhealthy(text: str) -> None:
    typer.echo(f"unhealthy: {text}", err=True)
    raise typer.Exit(1)


@app.command()
def health(
    service: Annotated[str | None, typer.Argument(help="collector | planner | migrator | api "
                                                 "(default: the service this container runs)")] = None,
    config: ConfigOpt = None,
    port: Annotated[int | None, typer.Option(help="the API's port (api only; default: the config's api.port)")]
    = None,
    anywhere: Annotated[bool, typer.Option("--anywhere", help="any host's instance will do")] = False,
) -> None:
    """Exit 0 when the service is alive on this host (for HEALTHCHECK, probes and monitoring), else 1."""
    if service is None:
        found = running_service()
        if found is None:
            typer.echo("healthy: no pvebalance service runs here (nothing to check)")
            return
        service, config, port = found[0], config or found[1], port or found[2]
    if service not in SERVICES:
        _unhealthy(f"unknown service {service!r} (one of {', '.join(SERVICES)})")
    try:
        # no warning without a config file: a health check answers in one line
        settings = load_settings(config_file(config, warn=False))
    except ConfigError as exc:
        _unhealthy(str(exc))
    if service == "api":
        host = settings.api.host if settings.api.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        _check_api(host, port or settings.api.port)
        return
    host = "" if anywhere else socket.gethostname()
    try:
        instances = _alive(settings.redis, service, host)
    except Exception as exc:  # Redis away, refused, or answering nonsense: unhealthy, in one line
        _unhealthy(f"cannot ask Redis about the {service}: {type(exc).__name__}: {exc}")
    where = "" if anywhere else f" on {host}"
    if not instances:
        _unhealthy(f"no live {service}{where} (no heartbeat in Redis)")
    typer.echo(f"healthy: {service}{where}: {', '.join(instances)}")


def _alive(target: RedisSettings, service: str, host: str) -> list[str]:
    from pvebalance.shared import keys
    from pvebalance.shared.heartbeat import alive
    from pvebalance.shared.redisconn import connect

    redis = connect(target, socket_timeout=5)  # RedisUnavailable: one line naming the Redis and why
    if service == "migrator":
        from rq import Queue, Worker

        names = [w.name for w in Worker.all(queue=Queue(keys.MIGRATION_QUEUE, connection=redis))]
        return sorted(n for n in names if n.startswith(f"migrator-{host}-" if host else "migrator-"))
    return [i for i in alive(redis, service) if not host or i.startswith(f"{host}-")]


def _check_api(host: str, port: int) -> None:
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            status = answer.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        _unhealthy(f"the API at {url} does not answer: {getattr(exc, 'reason', exc)}")
    if status != 200:
        _unhealthy(f"the API at {url} answered {status}")
    typer.echo(f"healthy: api ({url} answered 200)")
    sys.stdout.flush()
