"""The simulator's HTTPS transport: TLS, PVE's authentication, status lines, and a control API.

Auth as pveproxy does it: POST /access/ticket gives a ticket cookie (+ CSRF token for writes), or
an `Authorization: PVEAPIToken=USER@REALM!ID=SECRET` header. Failed auth is a 401 with an empty
body; the reason phrase is the first line of the error message, as pve-http-server sends it.

/_sim/... (outside /api2/json, no auth) lets tests drive faults and read what the simulator saw.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .api import Api, Request
from .certs import make_self_signed
from .cluster import ApiError, Cluster
from .faults import Faults
from .tasks import TaskManager

PREFIX = "/api2/json"


class Simulator:
    """One simulated cluster behind one HTTPS listener."""

    def __init__(
        self,
        dump: dict[str, Any],
        users: dict[str, str] | None = None,
        tokens: dict[str, str] | None = None,
        time_scale: float = 1.0,
        auth_fail_delay: float = 0.0,
    ) -> None:
        self.cluster = Cluster(dump)
        self.faults = Faults()
        self.tasks = TaskManager(self.cluster, self.faults, time_scale)
        self.api = Api(self.cluster, self.tasks)
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
        httpd = ThreadingHTTPServer((host, port), handler)
        httpd.daemon_threads = True
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        self.httpd = httpd
        threading.Thread(target=httpd.serve_forever, name="pve-simulator", daemon=True).start()
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
        """The /_sim control API used by tests."""
        c = self.cluster
        parts = path.strip("/").split("/")[1:]
        with c.lock:
            if parts == ["stats"] and method == "GET":
                return c.stats.as_json()
            if parts == ["stats"] and method == "DELETE":
                c.stats.__init__()  # type: ignore[misc]
                return None
            if parts == ["faults"]:
                if method == "POST":
                    return self.faults.add(body).__dict__
                if method == "DELETE":
                    self.faults.clear()
                    return None
                return self.faults.as_json()
            if len(parts) == 3 and parts[0] == "guests" and method == "POST":
                g = c.guest(int(parts[1]))
                if parts[2] == "lock":
                    g.config["lock"] = body.get("lock", "backup")
                elif parts[2] == "unlock":
                    g.config.pop("lock", None)
                elif parts[2] == "move":  # moved by hand, outside the balancer
                    c.node(body["target"], require_online=False)
                    g.entry["node"] = body["target"]
                return c.guest_entry(g)
            if parts == ["options"] and method == "POST":  # datacenter.cfg, e.g. {"crs": {...}}
                c.options.update(body)
                return c.options
            if len(parts) == 3 and parts[0] == "nodes" and parts[2] == "status" and method == "POST":
                node = c.node(parts[1], require_online=False)
                node.entry["status"] = "online" if body.get("online", True) else "offline"
                return c.node_entry(node)
            if len(parts) == 3 and parts[0] == "nodes" and parts[2] == "maintenance" and method == "POST":
                node = c.node(parts[1], require_online=False)
                if body.get("enable", True):
                    node.entry["hastate"] = "maintenance"
                else:
                    node.entry["hastate"] = "online"
                return c.node_entry(node)
        raise ApiError(404, f"no control endpoint {method} {path}")


class Handler(BaseHTTPRequestHandler):
    sim: Simulator
    protocol_version = "HTTP/1.1"
    server_version = "pve-api-daemon/3.0"
    # Headers and body leave in two writes; with Nagle on, each answer waits ~40 ms for an ACK.
    disable_nagle_algorithm = True

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
            if path.startswith("/_sim/"):
                self._send(200, {"data": self.sim.control(method, path, params)})
                return
            if not path.startswith(PREFIX + "/"):
                raise ApiError(501, f"Method '{method} {path}' not implemented")
            api_path = path[len(PREFIX):].rstrip("/") or "/"
            self.sim.cluster.stats.requests[f"{method} {api_path}"] += 1
            time.sleep(self.sim.faults.delay(method, api_path))
            fault = self.sim.faults.http(method, api_path)
            if fault:
                raise ApiError(fault.status, fault.message)
            if method == "POST" and api_path == "/access/ticket":
                data = self.sim.login(str(params.get("username", "")), str(params.get("password", "")))
                if data is None:
                    time.sleep(self.sim.auth_fail_delay)
                    self._send(401, {"data": None, "message": "authentication failure\n"},
                               "authentication failure")
                    return
                self._send(200, {"data": data})
                return
            try:
                user = self.sim.authenticate(self.headers, method)
            except ApiError as exc:
                time.sleep(self.sim.auth_fail_delay)
                self._send(401, None, exc.message)
                return
            data = self.sim.api.handle(Request(method, api_path, params, user))
            self._send(200, {"data": data})
        except ApiError as exc:
            body: dict[str, Any] = {"data": None, "message": exc.message + "\n"}
            if exc.errors:
                body["errors"] = exc.errors
            self._send(exc.status, body, exc.message)
        except (ValueError, KeyError) as exc:
            self._send(400, {"data": None, "message": f"bad request: {exc}\n"}, "bad request")

    def _send(self, status: int, body: dict[str, Any] | None, reason: str | None = None) -> None:
        raw = b"" if body is None else json.dumps(body).encode()
        self.send_response(status, reason.splitlines()[0] if reason else None)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Cache-Control", "max-age=0")
        self.end_headers()
        self.wfile.write(raw)
