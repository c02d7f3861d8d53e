"""`pvebalance api`: the HTTP API, metrics and web page (services/api), served by uvicorn.

Registered on the `pvebalance` command when imported (pvebalance/cli/__init__.py).
"""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from .base import ConfigOpt, UserError, app, service_settings


@app.command()
def api(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="address to listen on (default: api.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: api.port)")] = None,
) -> None:
    """Serve the HTTP API (/api/v1, docs at /api/v1/docs), /metrics and the web page at /."""
    import uvicorn

    from pvebalance.services.api.app import create_app

    settings = service_settings(config)
    bind_host, bind_port = host or settings.api.host, settings.api.port if port is None else port
    # Bound here, so that a port in use is one line and exit 2 (uvicorn would log and exit 1).
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind_host, bind_port))
    except (OSError, OverflowError) as exc:
        sock.close()
        raise UserError(f"cannot listen on {bind_host}:{bind_port}: {getattr(exc, 'strerror', None) or exc}") from None
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_config=None, access_log=False,
                                          timeout_graceful_shutdown=3))
    server.run(sockets=[sock])
