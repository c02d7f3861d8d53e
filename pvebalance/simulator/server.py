"""The simulator's HTTPS transport: TLS, PVE's authentication, status lines, and a control API.

Auth as pveproxy does it: POST /access/ticket gives a ticket cookie (+ CSRF token for writes), or
an `Authorization: PVEAPIToken=USER@REALM!ID=SECRET` header. Failed auth is a 401 with an empty
body; the reason phrase is the first line of the error message, as pve-http-server sends it.

Requests are served as a busy cluster serves them (realism.py): each takes a while on one of a
fixed number of workers per node, and waits when they are all busy.

/_sim/... (outside /api2/json, no auth, see control.py) lets tests drive faults and events and read
what the simulator saw. Faults (faults.py) stand in front of the API: a delay before or after the
answer, an HTTP error or a malformed body instead of it; every migrate and disk move POST is
recorded with what answered it.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from . import disks, storages  # noqa: F401  (register move_disk/move_volume and the storage views)
from .api import Api, Request, WithTotal
from .certs import make_self_signed
from .cluster import ApiError, Cluster
from .control import control
from .faults import Fault, Faults
from .links import DEFAULT_GBIT, Links
from .permissions import Privileges
from .realism import Realism, Workers
from .tasks import TaskManager

PREFIX = "/api2/json"


class Simulator:
    """One simulated cluster behind one HTTPS listener.

    `realism` (default: Realism(), everything on) says how far it behaves like a busy cluster;
    single fields can be given as keyword arguments: `Simulator(dump, latency_ms=20, workers=4)`.
    `link_gbit` is each node's migration link (links.py), unless the scenario's `link_gbit`
    (node -> Gbit/s) names the node.
    """

    def __init__(
        self,
        dump: dict[str, Any],
        users: dict[str, str] | None = None,
        tokens: dict[str, str] | None = None,
        time_scale: float = 1.0,
        auth_fail_delay: float = 0.0,
        realism: Realism | None = None,
        link_gbit: float = DEFAULT_GBIT,
        privileges: dict[str, Iterable[str]] | None = None,
        **realism_fields: Any,
    ) -> None:
        self.realism = (realism or Realism()).but(**realism_fields)
        self.cluster = Cluster(dump, self.realism, time_scale)
        self.workers = Workers(self.realism, list(self.cluster.nodes), self.cluster.stats)
        self.faults = Faults()
        links = Links(scenario_links(dump, set(self.cluster.nodes)), link_gbit, time_scale)
        self.tasks = TaskManager(self.cluster, self.faults, time_scale, links)
        # user or user!token -> its privileges (on / with propagation); anyone not named holds them all
        self.api = Api(self.cluster, self.tasks, privileges=Privileges(privileges))
        self.users = users if users is not None else {"root@pam": "pvebalance"}
        self.tokens = tokens if tokens is not None else self.default_tokens()
        self.auth_fail_delay = auth_fail_delay
        self.tickets: dict[str, tuple[str, str]] = {}  # ticket -> (user, csrf token)
        self.httpd: ThreadingHTTPServer | None = None
        self.cafile: Path | None = None

    @staticmethod
    def default_tokens() -> dict[str, str]:
        """The API token every simulator accepts unless told otherwise (it guards nothing real)."""
        return {"root@pam!pvebalance": "00000000-sim0-0000-0000-000000000000"}

    def start(self, port: int = 0, host: str = "127.0.0.1", certdir: Path | None = None,
              certfile: Path | None = None, keyfile: Path | None = None) -> int:
        if certfile is None or keyfile is None:
            certfile, keyfile = make_self_signed(certdir or Path(".sim-certs"), host)
        self.cafile = certfile
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
        handler = type("BoundHandler", (Handler,), {"sim": self})
        httpd = TlsServer((host, port), handler, ctx)
        self.httpd = httpd
        # a short poll interval: stop() waits for it, and tests start and stop many simulators
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="pve-simulator",
                         daemon=True).start()
        return int(httpd.server_address[1])

    def stop(self) -> None:
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()

    @property
    def port(self) -> int:
        assert self.httpd is not None
        return int(self.httpd.server_address[1])

    def login(self, username: str, password: str) -> dict[str, Any] | None:
        if self.users.get(username) != password and not (
            password in self.tickets and self.tickets[password][0] == username
        ):
            return None
        stamp = f"{int(time.time()):08X}"
        ticket = f"PVE:{username}:{stamp}::{base64.b64encode(secrets.token_bytes(48)).decode()}"
        csrf = f"{stamp}:{base64.b64encode(secrets.token_bytes(24)).decode().rstrip('=')}"
        self.tickets[ticket] = (username, csrf)
        return {"username": username, "ticket": ticket, "CSRFPreventionToken": csrf,
                "clustername": self.cluster.name, "cap": {"vms": {"VM.Migrate": 1}}}

    def authenticate(self, headers: Any, method: str) -> str:
        """The user (or user!token) behind a request, or ApiError(401)."""
        auth = headers.get("Authorization", "")
        if auth.startswith("PVEAPIToken="):
            ident, _, secret = auth[len("PVEAPIToken="):].partition("=")
            if self.tokens.get(ident) == secret:
                return str(ident)
            raise ApiError(401, "Authentication failed!")
        cookie = headers.get("Cookie", "")
        for part in cookie.split(";"):
            name, _, value = part.strip().partition("=")
            if name == "PVEAuthCookie":
                found = self.tickets.get(unquote(value))
                if found is None:
                    raise ApiError(401, "Authentication failed!")
                if method != "GET" and headers.get("CSRFPreventionToken") != found[1]:
                    raise ApiError(401, "Permission denied - invalid csrf token")
                return str(found[0])
        raise ApiError(401, "No ticket")

    def control(self, method: str, path: str, body: dict[str, Any]) -> Any:
        """The /_sim control API used by tests (control.py)."""
        return control(self, method, path, body)


def scenario_links(dump: dict[str, Any], nodes: set[str]) -> dict[str, float]:
    """The scenario's own link speeds (`link_gbit`: node -> Gbit/s), checked: a ValueError in one line."""
    raw = dump.get("link_gbit") or {}
    if not isinstance(raw, dict):
        raise ValueError(f"scenario link_gbit: expected node -> Gbit/s, got {type(raw).__name__}")
    out = {}
    for node, gbit in raw.items():
        if node not in nodes:
            raise ValueError(f"scenario link_gbit: no node '{node}' in the cluster")
        if isinstance(gbit, bool) or not isinstance(gbit, int | float) or gbit <= 0:
            raise ValueError(f"scenario link_gbit: {node}: expected Gbit/s above 0, got {gbit!r}")
        out[str(node)] = float(gbit)
    return out


class TlsServer(ThreadingHTTPServer):
    """pveproxy's listening side: a backlog as deep as the system allows (Python's default of 5 drops
    connections when many clients connect at once, and each dropped one waits a second to try
    again), and each connection's TLS handshake in its own thread, not in the accept loop where
    the handshakes would queue behind each other."""

    request_queue_size = socket.SOMAXCONN
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 context: ssl.SSLContext) -> None:
        super().__init__(address, handler)
        self.context = context

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = self.socket.accept()
        return self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a failed handshake, a client gone: nothing to report
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    sim: Simulator
    protocol_version = "HTTP/1.1"
    server_version = "pve-api-daemon/3.0"
    # Headers and body leave in two writes; with Nagle on, each answer waits ~40 ms for an ACK.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        self.request.do_handshake()  # here, in this connection's thread (TlsServer.get_request)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _read_params(self, query: str) -> dict[str, Any]:
        params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            raw = self.rfile.read(length).decode()
            if "json" in (self.headers.get("Content-Type") or ""):
                params.update(json.loads(raw or "{}"))
            else:
                params.update(parse_qsl(raw, keep_blank_values=True))
        return params

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        path = "/".join(unquote(p) for p in url.path.split("/"))
        try:
            params = self._read_params(url.query)
        except (ValueError, KeyError) as exc:
            self._send(Reply.error(ApiError(400, f"bad request: {exc}")))
            return
        if path.startswith("/_sim/"):
            try:
                self._send(Reply.ok(self.sim.control(method, path, params)))
            except ApiError as exc:
                self._send(Reply.error(exc))
            except (ValueError, KeyError, TypeError) as exc:
                self._send(Reply.error(ApiError(400, f"bad request: {exc}")))
            return
        if not path.startswith(PREFIX + "/"):
            self._send(Reply.error(ApiError(501, f"Method '{method} {path}' not implemented")))
            return
        api_path = path[len(PREFIX):].rstrip("/") or "/"
        arrived = time.time()
        self.sim.cluster.stats.requests[f"{method} {api_path}"] += 1
        delay = self.sim.faults.delay(method, api_path)
        if delay and delay.when == "before":
            time.sleep(delay.seconds)
        with self.sim.workers.serve(api_path):
            reply = self._answer(method, api_path, params)
        posted = (MIGRATE_PATH.match(api_path) or DISK_MOVE_PATH.match(api_path)) if method == "POST" else None
        if posted:
            self._record_post(posted, params, reply, arrived, delay)
        if delay and delay.when == "after":
            time.sleep(delay.seconds)  # the request took effect; only its answer is late
        self._send(reply)

    def _answer(self, method: str, api_path: str, params: dict[str, Any]) -> Reply:
        """What PVE (or a fault standing in front of it) answers, as status, reason and body."""
        sim = self.sim
        fault = sim.faults.answer(method, api_path)
        if fault and fault.kind == "http":
            if fault.status == 401:  # pveproxy's auth failure: empty body, message as reason only
                time.sleep(sim.auth_fail_delay)
                return Reply(401, b"", fault.text, fault="http")
            return Reply.error(ApiError(fault.status, fault.text), fault="http")
        if fault and not fault.truncate:
            return Reply(200, (fault.body or "").encode(), None, fault="malformed",
                         content_type="text/html;charset=UTF-8")
        reply = self._handle(method, api_path, params)
        if fault:  # truncate: the request was handled, its answer breaks off half way
            reply.body, reply.fault = reply.body[: len(reply.body) // 2], "malformed"
        return reply

    def _handle(self, method: str, api_path: str, params: dict[str, Any]) -> Reply:
        sim = self.sim
        try:
            if method == "POST" and api_path == "/access/ticket":
                data = sim.login(str(params.get("username", "")), str(params.get("password", "")))
                if data is None:
                    time.sleep(sim.auth_fail_delay)
                    return Reply.error(ApiError(401, "authentication failure"))
                return Reply.ok(data)
            try:
                user = sim.authenticate(self.headers, method)
            except ApiError as exc:
                time.sleep(sim.auth_fail_delay)
                return Reply(401, b"", exc.message)
            reply = Reply.ok(sim.api.handle(Request(method, api_path, params, user)))
            reply.user = user
            return reply
        except ApiError as exc:
            return Reply.error(exc)
        except (ValueError, KeyError) as exc:
            return Reply.error(ApiError(400, f"bad request: {exc}"))

    def _record_post(self, m: re.Match[str], params: dict[str, Any], reply: Reply,
                     arrived: float, delay: Fault | None) -> None:
        """Every migrate and disk move POST, whatever answered it, for tests to check a run against."""
        user = reply.user
        if user is None:
            try:
                user = self.sim.authenticate(self.headers, "POST")
            except ApiError:
                user = None
        fault = reply.fault or (f"delay-{delay.when}" if delay else None)
        answer = {"user": user, "status": reply.status, "upid": reply.upid,
                  "error": reply.reason if reply.status >= 400 else None, "fault": fault}
        with self.sim.cluster.lock:
            if m.re is DISK_MOVE_PATH:
                self.sim.cluster.stats.disk_move_requests.append({
                    "vmid": int(m["vmid"]), "type": m["type"], "time": arrived, "node": m["node"],
                    "disk": params.get("disk") or params.get("volume"), "storage": params.get("storage"),
                    "delete": params.get("delete"), **answer})
                return
            self.sim.cluster.stats.migrate_request(
                vmid=int(m["vmid"]), type=m["type"], time=arrived, source=m["node"],
                target=params.get("target"), **answer,
            )

    def _send(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status, reply.reason.splitlines()[0] if reply.reason else None)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.send_header("Cache-Control", "max-age=0")
            self.end_headers()
            self.wfile.write(reply.body)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            # the client gave up (e.g. a shorter timeout than a delay fault): nobody to answer
            self.close_connection = True


MIGRATE_PATH = re.compile(r"^/nodes/(?P<node>[^/]+)/(?P<type>qemu|lxc)/(?P<vmid>\d+)/migrate$")
DISK_MOVE_PATH = re.compile(r"^/nodes/(?P<node>[^/]+)/(?P<type>qemu|lxc)/(?P<vmid>\d+)/(?:move_disk|move_volume)$")


@dataclass
class Reply:
    status: int
    body: bytes
    reason: str | None
    fault: str | None = None  # the fault kind that shaped this answer
    upid: str | None = None  # the payload, when it is a task id
    user: str | None = None
    content_type: str = "application/json;charset=UTF-8"

    @classmethod
    def ok(cls, data: Any) -> Reply:
        body: dict[str, Any] = {"data": data}
        if isinstance(data, WithTotal):
            body = {"data": data.data, "total": data.total}
        upid = data if isinstance(data, str) and data.startswith("UPID:") else None
        return cls(200, json.dumps(body).encode(), None, upid=upid)

    @classmethod
    def error(cls, exc: ApiError, fault: str | None = None) -> Reply:
        """PVE's error answer: reason = first line of the message, JSON body with data null."""
        body: dict[str, Any] = {"data": None, "message": exc.message + "\n"}
        if exc.errors:
            body["errors"] = exc.errors
        return cls(exc.status, json.dumps(body).encode(), exc.message, fault=fault)
