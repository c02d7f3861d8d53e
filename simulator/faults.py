"""Faults the simulator can be told to produce, so tests can drive the failure paths.

Kinds:
- http:       answer METHOD PATH (regex) with `status` and `message`, `count` times (None: always)
- delay:      sleep `seconds` before answering METHOD PATH
- task_error: the next migration task of `vmid` ends `TASK ERROR: <message>`
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Literal

FaultKind = Literal["http", "delay", "task_error"]


@dataclass
class Fault:
    kind: FaultKind
    method: str | None = None
    path: str | None = None
    status: int = 500
    message: str = "simulated failure"
    seconds: float = 0.0
    vmid: int | None = None
    count: int | None = 1

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method) and (
            self.path is None or re.search(self.path, path) is not None
        )


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, spec: dict[str, Any]) -> Fault:
        fields = set(Fault.__dataclass_fields__)
        unknown = set(spec) - fields
        if unknown or spec.get("kind") not in ("http", "delay", "task_error"):
            raise ValueError(f"bad fault {spec}: kind must be http|delay|task_error, fields {sorted(fields)}")
        fault = Fault(**spec)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take(self, pick: Any) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if pick(fault):
                    if fault.count is not None:
                        fault.count -= 1
                        if fault.count <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def http(self, method: str, path: str) -> Fault | None:
        return self._take(lambda f: f.kind == "http" and f.matches(method, path))

    def delay(self, method: str, path: str) -> float:
        fault = self._take(lambda f: f.kind == "delay" and f.matches(method, path))
        return fault.seconds if fault else 0.0

    def task_error(self, vmid: int) -> str | None:
        fault = self._take(lambda f: f.kind == "task_error" and f.vmid in (None, vmid))
        return fault.message if fault else None

    def as_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(f.__dict__) for f in self._faults]
