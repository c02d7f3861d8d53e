"""A small, well-behaved Proxmox VE API client around proxmoxer.

- Several API hosts: a host that does not answer is skipped for the next one.
- Booleans go out as PVE's 0/1 (proxmoxer would send "True", which PVE refuses).
- Every failure is a ProxmoxError that names the host and says what went wrong in one line, and
  says what kind of failure it is: no answer, an answer that is not PVE's JSON, refused credentials,
  a TLS failure, or PVE's own refusal (an HTTP status).
- A 401 is answered by logging in again once (a ticket expires after 2 h); only a second 401 is an
  error, so a long-running worker never fails on an expired ticket.
- Safe to share between threads (the collector reads many configs at once): one login, one
  connection pool of up to MAX_CONNECTIONS kept-alive connections.
- proxmoxer logs in and sends every POST. GETs go straight through the logged-in session's own
  connection pool (urllib3, with the session's TLS settings, proxies, headers and proxmoxer's auth):
  requests' per-call machinery (merging session settings and cookies, hooks, redirects) cost 0.3 ms
  of CPU per call, more than half of a read, seconds on a first snapshot of 10,000 guests.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import requests
import urllib3
from proxmoxer import AuthenticationError, ProxmoxAPI, ResourceException
from requests.adapters import HTTPAdapter
from requests.utils import requote_uri
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from .config import ProxmoxApiSettings

# The client's errors live apart (light to import); they are the client's, so they are named here too.
from .proxmox_errors import AUTH as AUTH
from .proxmox_errors import MALFORMED as MALFORMED
from .proxmox_errors import NO_ANSWER as NO_ANSWER
from .proxmox_errors import TLS as TLS
from .proxmox_errors import ProxmoxError as ProxmoxError

T = TypeVar("T")

UPID_RE = re.compile(
    r"^UPID:(?P<node>[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):(?P<pid>[0-9A-Fa-f]{8}):"
    r"(?P<pstart>[0-9A-Fa-f]{8,9}):(?P<starttime>[0-9A-Fa-f]{8}):(?P<type>[^:\s/]+):"
    r"(?P<id>[^:\s/]*):(?P<user>[^:\s/]+):$"
)


MAX_CONNECTIONS = 64  # kept alive per host: as many as collector.config_reads allows at once


def retry_transient(fn: Callable[[], T], attempts: int = 5, initial: float = 0.5, max_wait: float = 15.0,
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """Call fn, retrying transient API failures (no answer, 5xx, a lock held elsewhere) with backoff."""
    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential_jitter(multiplier=initial, max=max_wait),
        retry=retry_if_exception(lambda exc: isinstance(exc, ProxmoxError) and exc.transient),
        sleep=sleep,
        reraise=True,
    )
    return retrying(fn)


def upid_node(upid: str) -> str:
    m = UPID_RE.match(upid)
    if not m:
        raise ProxmoxError(f"not a Proxmox task id: {upid!r}")
    return m.group("node")


def pve_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (int(v) if isinstance(v, bool) else v) for k, v in params.items() if v is not None}


@dataclass(frozen=True)
class _Session:
    """A logged-in proxmoxer session and the connection pool its GETs go through."""

    api: ProxmoxAPI
    http: requests.Session  # proxmoxer's requests session, for its headers and auth
    pool: urllib3.HTTPConnectionPool
    base_path: str  # "/api2/json"
    headers: dict[str, str]  # the session's own (Accept, Connection: keep-alive, User-Agent)

    def get_headers(self) -> dict[str, str]:
        """The session's headers and proxmoxer's auth for one GET: a token's header, or the ticket's
        cookie (proxmoxer renews a ticket once it is an hour old when its auth is applied)."""
        auth: Any = self.http.auth  # proxmoxer's ProxmoxHTTPAuth or ProxmoxHTTPApiTokenAuth
        headers = dict(self.headers)
        auth(SimpleNamespace(method="GET", headers=headers))
        ticket, _ = auth.get_tokens()
        if ticket:
            headers["Cookie"] = f"PVEAuthCookie={ticket}"
        return headers


class ProxmoxClient:
    def __init__(self, settings: ProxmoxApiSettings) -> None:
        self.settings = settings
        self._api: _Session | None = None
        self._host: str | None = None
        self._requests = 0
        self._lock = threading.RLock()  # guards the session (login, host choice) and the count

    @property
    def requests(self) -> int:
        """Calls made, for the collector's own accounting."""
        return self._requests

    @property
    def host(self) -> str | None:
        return self._host

    def _verify(self) -> bool | str:
        if self.settings.ca_file:
            return str(self.settings.ca_file)
        if self.settings.ssl_verification:  # what requests would take from the environment on each call
            return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        return False

    def _connect(self, host: str) -> _Session:
        s = self.settings
        kwargs: dict[str, Any] = {"verify_ssl": self._verify(), "timeout": s.timeout, "user": s.user}
        if s.token_id and s.token_secret:
            kwargs.update(token_name=s.token_id, token_value=s.token_secret.get_secret_value())
        elif s.password:
            kwargs["password"] = s.password.get_secret_value()
        else:
            raise ProxmoxError("proxmox_api: set token_id and token_secret, or pass (a password)")
        try:
            api = ProxmoxAPI(host, **kwargs)
            session = api._store["session"]
            session.mount("https://", HTTPAdapter(pool_connections=1, pool_maxsize=MAX_CONNECTIONS))
            # requests reads proxies and a CA bundle from the environment on every call, scanning all of
            # os.environ twice: a quarter of a request's CPU, seconds on a first snapshot of 10,000
            # guests. Read once here instead (the CA bundle in _verify), with the same outcome.
            session.proxies = requests.utils.get_environ_proxies(f"https://{host}")
            session.trust_env = False
            base = api._store["base_url"]
            pool = session.get_adapter(base).get_connection_with_tls_context(
                requests.Request("GET", base).prepare(), kwargs["verify_ssl"], session.proxies, session.cert)
            headers = {str(k): str(v) for k, v in session.headers.items()}
            return _Session(api, session, pool, urlsplit(base).path, headers)
        except AuthenticationError:
            raise ProxmoxError(
                f"authentication failed for {s.user} at {host}: check the password", 401, host
            ) from None
        except requests.exceptions.SSLError as exc:
            raise _tls_error(host, exc) from None
        except requests.RequestException as exc:
            raise ProxmoxError(f"{host} does not answer: {_short(exc)}", None, host) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ProxmoxError(f"{host} answered the login with something that is not Proxmox's JSON "
                               f"({type(exc).__name__})", None, host, MALFORMED) from None

    def _call(self, method: str, path: str, params: Mapping[str, Any]) -> Any:
        try:
            return self._call_hosts(method, path, params)
        except ProxmoxError as exc:
            failed = self._api
            if not exc.auth or failed is None:
                raise
        # A 401 on a session that worked: the ticket expired (or was revoked). Log in again, once
        # (once in all: another thread may have done it already).
        self._forget(failed)
        return self._call_hosts(method, path, params)

    def _session(self, host: str) -> _Session:
        """The logged-in session with `host`, made (once, whichever thread asks first) if needed."""
        with self._lock:
            if self._api is None or self._host != host:
                self._api = self._connect(host)
                self._host = host
            self._requests += 1
            return self._api

    def _forget(self, api: _Session) -> None:
        with self._lock:
            if self._api is api:
                self._api = None

    def _call_hosts(self, method: str, path: str, params: Mapping[str, Any]) -> Any:
        hosts = self.settings.hosts
        current = self._host
        order = hosts if current is None else [current] + [h for h in hosts if h != current]
        last: ProxmoxError | None = None
        for host in order:
            api: _Session | None = None
            try:
                api = self._session(host)
                if method == "GET":
                    answer = self._get(api, path, params, host)
                else:
                    answer = api.api(path.strip("/")).post(**pve_params(params))
            except ResourceException as exc:
                errors = exc.errors if isinstance(exc.errors, dict) else None
                raise self._refused(int(exc.status_code), str(exc.content or exc.status_message or ""), errors,
                                    method, path, host) from None
            except (requests.exceptions.SSLError, urllib3.exceptions.SSLError) as exc:
                raise _tls_error(host, exc) from None
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                last = ProxmoxError(f"{host} does not answer ({method} {path}): {_short(exc)}", None, host)
                if api is not None:
                    self._forget(api)
                continue
            except (KeyError, TypeError, ValueError) as exc:  # JSON without PVE's {"data": ...} envelope
                raise _malformed(host, method, path, type(exc).__name__) from None
            except ProxmoxError as exc:
                if exc.kind != NO_ANSWER:
                    raise
                last = exc
                if api is not None:
                    self._forget(api)
                continue
            # proxmoxer hands back {"errors": <body>} for a 2xx body that is not JSON at all.
            if isinstance(answer, dict) and set(answer) == {"errors"} and isinstance(answer["errors"], bytes):
                raise _malformed(host, method, path, _excerpt(answer["errors"]))
            return answer
        assert last is not None
        raise last

    def _get(self, session: _Session, path: str, params: Mapping[str, Any], host: str) -> Any:
        """One GET through the session's pool; the answer's data, as proxmoxer would give it."""
        query = urlencode(pve_params(params), doseq=True)
        url = requote_uri(f"{session.base_path}/{path.strip('/')}" + (f"?{query}" if query else ""))
        # retries=False: tenacity retries at the caller; the same as requests' default adapter.
        resp = session.pool.urlopen("GET", url, headers=session.get_headers(), retries=False, redirect=False,
                                    timeout=urllib3.Timeout(self.settings.timeout), assert_same_host=False)
        body = resp.data
        if resp.status >= 400:
            try:
                errors = json.loads(body).get("errors")
            except (ValueError, AttributeError):
                errors = None
            reason = resp.reason or http.client.responses.get(resp.status, "")
            raise self._refused(resp.status, reason, errors if isinstance(errors, dict) else None, "GET", path, host)
        if not 200 <= resp.status < 300:  # a redirect or an informational status: not an API answer
            raise _malformed(host, "GET", path, _excerpt(body))
        try:
            return json.loads(body.decode("utf-8"))["data"]
        except (UnicodeDecodeError, ValueError):
            raise _malformed(host, "GET", path, _excerpt(body)) from None

    def _refused(self, status: int, text: str, errors: dict[str, Any] | None, method: str, path: str,
                 host: str) -> ProxmoxError:
        """PVE's refusal (an HTTP status of 400 or more) in one line, with its per-parameter errors."""
        text = text.strip()
        if status == 401:
            who = self.settings.user + (f"!{self.settings.token_id}" if self.settings.token_id else "")
            return ProxmoxError(f"authentication failed for {who} at {host}: {text}", status, host)
        detail = ""
        if errors and not isinstance(errors.get("errors"), bytes):
            detail = " (" + "; ".join(f"{k}: {v}" for k, v in errors.items()) + ")"
        return ProxmoxError(f"{method} {path} on {host}: {status} {text}{detail}", status, host)

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params)

    def post(self, path: str, **data: Any) -> Any:
        return self._call("POST", path, data)


def _malformed(host: str, method: str, path: str, what: str) -> ProxmoxError:
    return ProxmoxError(f"{host} gave an answer that is not Proxmox's JSON ({method} {path}): {what}",
                        None, host, MALFORMED)


def _excerpt(body: bytes) -> str:
    return repr(body[:80].decode(errors="replace"))


def _tls_error(host: str, exc: Exception) -> ProxmoxError:
    return ProxmoxError(f"TLS verification of {host} failed (check proxmox_api.ca_file or ssl_verification): "
                        f"{_short(exc)}", None, host, TLS)


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "..."
