"""Faults the simulator can be told to produce, so tests can drive the failure paths.

A fault is a JSON object (`sim.faults.add({...})` or `POST /_sim/faults`). Every kind takes
`count` (how many answers it shapes; null: no limit; default 1) and `for_seconds` (null, or how
long from being added it stays active). It is gone once either runs out. METHOD and PATH match
the API path below /api2/json (PATH is a regex searched in it); either may be left out.

Kinds:
- http:       answer METHOD PATH with `status` instead of handling it. A 401 looks like
              pveproxy's auth failure: empty body, reason phrase = `message` (default
              "Authentication failed!"). Any other status has PVE's JSON error body
              `{"data": null, "message": "<message>\\n"}` and the message as reason phrase.
              {"kind": "http", "method": "POST", "path": "/migrate$", "status": 500,
               "message": "simulated failure", "count": 1, "for_seconds": null}
- malformed:  answer METHOD PATH with HTTP 200 and a body that is not PVE's JSON: `body` as
              given (default an HTML proxy error page), the request is not handled; or, with
              `"truncate": true`, the request IS handled (a POST's migration starts) and the
              first half of its real JSON answer is sent, with its real status.
              {"kind": "malformed", "path": "^/cluster/resources$", "body": "<html>proxy error</html>"}
- data:       answer METHOD PATH with HTTP 200 and PVE's JSON envelope around `data` (default null),
              without handling the request: a well-formed answer that says nothing, or the wrong
              thing (a list, a string, an object without the fields the caller reads).
              {"kind": "data", "method": "GET", "path": "/tasks/[^/]+/status$", "data": null, "count": 3}
- delay:      sleep `seconds` on METHOD PATH. `"when": "before"` (default) sleeps before handling;
              `"after"` handles the request first and sleeps before sending the answer, so a
              client with a shorter timeout gives up although the request took effect.
              {"kind": "delay", "method": "POST", "path": "/migrate$", "seconds": 2, "when": "after"}
- task_error: the next migration task of `vmid` (null: any) ends `TASK ERROR: <message>`.
              {"kind": "task_error", "vmid": 118, "message": "migration aborted"}
- disk_error: the next disk move (move_disk, move_volume) of `vmid` (null: any) breaks off half way
              through its copy (a copy that runs when the fault is added: at its end): PVE frees the
              new volume, the source and the config stay as they were; a VM's task ends
              `TASK ERROR: storage migration failed: <message>`, a CT's `TASK ERROR: <message>`
              (disks.py).
              {"kind": "disk_error", "vmid": 103, "message": "mirroring error: drive-scsi0: Input/output error"}
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FaultKind = Literal["http", "malformed", "data", "delay", "task_error", "disk_error"]
KINDS = ("http", "malformed", "data", "delay", "task_error", "disk_error")
ANSWERING = ("http", "malformed", "data")  # kinds that answer instead of the API
PROXY_ERROR_PAGE = "<html><head><title>502 Bad Gateway</title></head><body>proxy error</body></html>"


@dataclass
class Fault:
    kind: FaultKind
    method: str | None = None
    path: str | None = None
    status: int = 500
    message: str | None = None  # None: "Authentication failed!" for a 401, else "simulated failure"
    seconds: float = 0.0
    when: Literal["before", "after"] = "before"
    body: str | None = None
    truncate: bool = False
    vmid: int | None = None
    data: Any = None  # kind data: what {"data": ...} holds
    count: int | None = 1
    for_seconds: float | None = None
    added: float = field(default_factory=time.monotonic)  # set on add; for_seconds runs from here

    def __post_init__(self) -> None:
        if self.message is None:
            self.message = "Authentication failed!" if self.status == 401 else "simulated failure"
        if self.kind == "malformed" and self.body is None and not self.truncate:
            self.body = PROXY_ERROR_PAGE
        if self.kind == "data":  # served as a malformed body is: 200, this text, the request not handled
            self.body, self.truncate = json.dumps({"data": self.data}), False

    @property
    def text(self) -> str:
        return self.message or ""

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method) and (
            self.path is None or re.search(self.path, path) is not None
        )

    def expired(self, now: float) -> bool:
        return self.for_seconds is not None and now - self.added >= self.for_seconds

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("added")
        if self.for_seconds is not None:
            out["remaining_seconds"] = max(self.for_seconds - (time.monotonic() - self.added), 0.0)
        return out


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, spec: dict[str, Any]) -> Fault:
        fields = set(Fault.__dataclass_fields__) - {"added"}
        unknown = set(spec) - fields
        if unknown or spec.get("kind") not in KINDS:
            raise ValueError(f"bad fault {spec}: kind must be {'|'.join(KINDS)}, fields {sorted(fields)}")
        if spec.get("when", "before") not in ("before", "after"):
            raise ValueError(f"bad fault {spec}: when must be before|after")
        fault = Fault(**spec)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take(self, pick: Callable[[Fault], bool]) -> Fault | None:
        with self._lock:
            now = time.monotonic()
            self._faults[:] = [f for f in self._faults if not f.expired(now)]
            for fault in self._faults:
                if pick(fault):
                    if fault.count is not None:
                        fault.count -= 1
                        if fault.count <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def answer(self, method: str, path: str) -> Fault | None:
        """The http, malformed or data fault that answers this request instead of the API, if any."""
        return self._take(lambda f: f.kind in ANSWERING and f.matches(method, path))

    def delay(self, method: str, path: str) -> Fault | None:
        return self._take(lambda f: f.kind == "delay" and f.matches(method, path))

    def task_error(self, vmid: int) -> str | None:
        fault = self._take(lambda f: f.kind == "task_error" and f.vmid in (None, vmid))
        return fault.text if fault else None

    def disk_error(self, vmid: int) -> str | None:
        fault = self._take(lambda f: f.kind == "disk_error" and f.vmid in (None, vmid))
        return fault.text if fault else None

    def as_json(self) -> list[dict[str, Any]]:
        with self._lock:
            now = time.monotonic()
            return [f.as_json() for f in self._faults if not f.expired(now)]
