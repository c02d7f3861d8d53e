"""structlog setup: JSON lines in services, key=value on a terminal.

Called once by each entry point. stdlib loggers (rq, urllib3, proxmoxer) are routed through the
same processors, so every line of a service has one format. Bind job and plan ids with
structlog.contextvars.bound_contextvars so they reach every line, including rq's own.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

_SECRET_KEYS = ("password", "token_secret", "secret", "ticket", "csrf")


def _drop_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if any(part in key.lower() for part in _SECRET_KEYS):
            event[key] = "***"
    return event


def configure_logging(
    level: str = "INFO",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: Any = None,
) -> None:
    import structlog  # here, not above: a module that only names its logger loads none (`get_logger`)

    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.dict_tracebacks)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "proxmoxer"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # rq configures its own handler on its loggers; route them through ours instead.
    for name in ("rq", "rq.worker", "rq.queue", "rq.job"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True


def get_logger(name: str) -> Any:
    """structlog's logger `name`, loaded on its first use: the modules that name one when imported
    (the actions, which `pvebalance plan` loads for the plan's models) need no structlog until they
    log (45 ms of that command's start-up)."""
    return _Lazy(name)


class _Lazy:
    def __init__(self, name: str) -> None:
        self._name = name
        self._proxy: Any = None

    def __getattr__(self, attr: str) -> Any:  # only for what the instance lacks: the logger's own
        if self._proxy is None:
            import structlog

            # structlog's own lazy proxy: it binds on each call, so a later configure (or a test's
            # capture_logs) is honoured as before
            self._proxy = structlog.stdlib.get_logger(self._name)
        return getattr(self._proxy, attr)
