"""The HTTP API: FastAPI, served by uvicorn (`pvebalance api`).

Versioned under /api/v1 (OpenAPI at /api/v1/openapi.json, docs at /api/v1/docs, served without a
CDN by fastapi-offline), the web page at /, metrics at /metrics, /healthz and /readyz. Endpoints are
registered in ROUTERS: a new group of endpoints is a new routes_*.py module and a line there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from pvebalance import __version__
from pvebalance.shared.config import Settings
from pvebalance.shared.heartbeat import beat
from pvebalance.shared.logging import get_logger
from pvebalance.shared.redisconn import Outage

from . import health, history, routes_placement, routes_read, routes_requests
from .auth import Caller, reader
from .context import ApiContext
from .metrics import build_registry
from .webhooks import Notifier

log = get_logger("pvebalance.api")
STATIC = Path(__file__).parent / "static"
ROUTERS: list[APIRouter] = [health.router, routes_read.router, routes_requests.router, routes_placement.router]



def _heartbeats(context: ApiContext, stop: threading.Event) -> None:
    outage = Outage(log, "Redis", "the API's heartbeat")
    while not stop.is_set():
        try:
            beat(context.redis, "api")
            history.record(context.read)  # the page's usage lines: one sample a minute at most
            outage.ok()
        except RedisError as exc:
            outage.failed(exc)
        stop.wait(5)


PROBES = ("/healthz", "/readyz", "/metrics")


def _query_names(dependant: Any) -> set[str]:
    """The query parameters an endpoint and its dependencies declare."""
    names = {str(f.alias) for f in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def known_query_only(request: Request) -> None:
    """A query parameter no endpoint declares is a typo (`?plan=` for `?plan_id=`): one clear 422 naming it and
    what the endpoint takes, rather than an answer that silently ignores it."""
    if request.url.path in PROBES:
        return  # probes and scrapers may add what they like (a cache-buster); they are answered all the same
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = _query_names(dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        # shaped as every other 422 of the API (FastAPI's validation errors), one per unknown parameter
        takes = f"takes {', '.join(sorted(known))}" if known else "takes no query parameter"
        raise RequestValidationError([{"type": "extra_forbidden", "loc": ("query", name),
                                       "input": request.query_params[name],
                                       "msg": f"unknown query parameter: {request.url.path} {takes}"}
                                      for name in unknown])


def create_app(settings: Settings, context: ApiContext | None = None, background: bool = True) -> FastAPI:
    """The app; `background` starts the heartbeat and the webhook notifier with it (off in unit tests)."""
    ctx = context or ApiContext.connect(settings)
    stop = threading.Event()
    redis_outage = Outage(log, "Redis", "the API")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if background:
            threading.Thread(target=_heartbeats, args=(ctx, stop), name="api-heartbeat", daemon=True).start()
            if settings.notifications.webhooks:
                notifier = Notifier(ctx)
                threading.Thread(target=notifier.run, args=(stop,), name="notifier", daemon=True).start()
        if not settings.api.tokens:
            log.warning("api.tokens is empty: every request that changes something is refused (401)"
                        + (", and so is every read" if settings.api.read_requires_token else ""))
        yield
        stop.set()
        await ctx.async_redis.aclose()

    app = FastAPIOffline(
        title="pvebalance", version=__version__, lifespan=lifespan,
        description="Balancer for Proxmox VE clusters: the cluster, plans, migration jobs, operator requests.",
        openapi_url="/api/v1/openapi.json", docs_url="/api/v1/docs", redoc_url=None,
        static_url="/api/v1/docs-static", dependencies=[Depends(known_query_only)],
    )
    app.state.ctx = ctx
    for router in ROUTERS:
        app.include_router(router)

    @app.exception_handler(RedisError)
    async def redis_away(request: Request, exc: RedisError) -> JSONResponse:
        redis_outage.failed(exc)
        return JSONResponse({"detail": "Redis does not answer; try again shortly"}, status_code=503)

    @app.middleware("http")
    async def access_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # Our own access line: method, path, status, the token's *name*. uvicorn's is off, and the
        # query string is left out (nothing secret goes there, but nothing needs logging there either).
        started = time.monotonic()
        response = await call_next(request)
        if request.url.path not in PROBES:
            log.info("request", method=request.method, path=request.url.path, status=response.status_code,
                     who=getattr(request.state, "who", None), ms=round(1000 * (time.monotonic() - started), 1))
        if response.status_code < 500:
            redis_outage.ok()
        return response

    registry = build_registry(ctx)

    @app.get("/metrics", tags=["health"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
                        401: {"description": "no token (api.read_requires_token), or a token that matches none"}})
    def metrics(_: Annotated[Caller | None, Depends(reader)]) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
