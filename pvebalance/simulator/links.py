"""Each node's migration link, shared by the migrations that use it at the moment.

PVE sends a migrating guest's memory (live) and its local disks over the migration network
(datacenter.cfg `migration: network=...`, else the cluster network): out of the source node's link
and into the target's. Two migrations out of one node share the source's link, so running them at
once gains little over running them one after the other; a migration from pve1 to pve2 and one from
pve3 to pve4 do not meet. A link is full duplex: what a node sends and what it receives are separate.

- Rates are max-min fair (progressive filling): every flow gets an equal share of each link it
  crosses, a flow limited elsewhere (by its other link, or by its own cap) leaves its unused share
  to the others. They are computed again whenever a migration's copy starts or ends.
- A link of N Gbit/s moves N/10 GiB of migration data a second: 10 Gbit/s is 1.16 GiB/s on the
  wire, of which about 86 % carries the guest's pages and blocks (TCP/IP, the migration stream's
  framing, and the pages the guest dirties meanwhile and QEMU sends again).
- PVE's `bwlimit` caps one migration's rate (the migrate call's `bwlimit` in KiB/s, else
  datacenter.cfg `bwlimit: migration=...` or `default=...`): a flow's own cap, below its fair share.
- Durations follow the simulator's `time_scale` as every other duration does: rates are divided by it.

Each link records the wall-clock seconds during which any flow used it (`busy_s`, either direction)
and the GiB it sent and received, for /_sim/stats.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

GIB = 2**30
DEFAULT_GBIT = 10.0
GIB_PER_GBIT = 0.1  # GiB of migration data a second per Gbit/s of link (see the module)


def link_rate(gbit: float) -> float:
    """Bytes of migration data a second that a link of `gbit` Gbit/s carries, at time scale 1."""
    return gbit * GIB_PER_GBIT * GIB


def fair_rates(flows: Mapping[Hashable, tuple[str, str, float | None]],
               capacity: Callable[[tuple[str, str]], float]) -> dict[Hashable, float]:
    """Max-min fair rates of flows (source, target, own cap or None) over full-duplex links:
    each flow crosses its source's sending side and its target's receiving side."""
    left: dict[tuple[str, str], float] = {}
    crossing: dict[tuple[str, str], set[Hashable]] = {}
    for key, (source, target, _) in flows.items():
        for side in ((source, "out"), (target, "in")):
            left.setdefault(side, capacity(side))
            crossing.setdefault(side, set()).add(key)
    rates: dict[Hashable, float] = {}
    active = set(flows)
    while active:
        shares = {side: left[side] / len(keys & active) for side, keys in crossing.items() if keys & active}
        share = min(shares.values())
        capped = {k for k in active if (cap := flows[k][2]) is not None and cap <= share}
        fixed = capped or {k for side, s in shares.items() if s <= share for k in crossing[side] & active}
        for k in fixed:
            source, target, cap = flows[k]
            rate = cap if k in capped and cap is not None else share
            rates[k] = rate
            left[(source, "out")] -= rate
            left[(target, "in")] -= rate
        active -= fixed
    return rates


@dataclass
class Flow:
    source: str
    target: str
    remaining: float  # bytes
    cap: float | None  # bytes a second at time scale 1 (bwlimit), or None
    rate: float = 0.0  # bytes a second now, wall clock


@dataclass
class LinkRecord:
    busy_s: float = 0.0
    sent: float = 0.0  # bytes
    received: float = 0.0

    def as_json(self) -> dict[str, float]:
        return {"busy_s": round(self.busy_s, 3), "sent_gib": round(self.sent / GIB, 3),
                "received_gib": round(self.received / GIB, 3)}


@dataclass
class Links:
    """The links of a cluster's nodes (Gbit/s each, `default_gbit` for any other) and the flows on them."""

    gbit: dict[str, float] = field(default_factory=dict)
    default_gbit: float = DEFAULT_GBIT
    time_scale: float = 1.0
    clock: Callable[[], float] = time.monotonic
    flows: dict[Hashable, Flow] = field(default_factory=dict)
    records: dict[str, LinkRecord] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.default_gbit <= 0 or any(v <= 0 for v in self.gbit.values()):
            got = self.gbit or self.default_gbit
            raise ValueError(f"simulator links: every link needs a speed above 0 Gbit/s (got {got})")
        self.changed = threading.Condition()
        self._last = self.clock()

    def gbit_of(self, node: str) -> float:
        return self.gbit.get(node, self.default_gbit)

    def lone_seconds(self, source: str, target: str, nbytes: float, cap: float | None = None) -> float:
        """How long the bytes take between the two nodes with nothing else on their links, at time scale 1."""
        rate = min(link_rate(self.gbit_of(source)), link_rate(self.gbit_of(target)), cap or float("inf"))
        return nbytes / rate

    def start(self, key: Hashable, source: str, target: str, nbytes: float, cap: float | None = None) -> None:
        with self.changed:
            self._advance()
            self.flows[key] = Flow(source, target, float(nbytes), cap)
            self._rerate()

    def wait(self, key: Hashable) -> bool:
        """Block until the flow's bytes are through (True; the flow is gone then), or until it is
        cancelled (False)."""
        with self.changed:
            while True:
                self._advance()
                flow = self.flows.get(key)
                if flow is None:
                    return False
                if flow.remaining <= max(1.0, flow.rate * 1e-3):  # within a millisecond: a timer's slack
                    del self.flows[key]
                    self._rerate()
                    return True
                # wakes early when another flow starts or ends (its rate changes), else when done
                self.changed.wait(flow.remaining / flow.rate if flow.rate > 0 else None)

    def cancel(self, key: Hashable) -> None:
        """The migration ended otherwise (aborted): its flow stops using the links."""
        with self.changed:
            self._advance()
            if self.flows.pop(key, None) is not None:
                self._rerate()

    def as_json(self) -> dict[str, Any]:
        with self.changed:
            self._advance()
            return {node: {"gbit": self.gbit_of(node), **record.as_json()}
                    for node, record in sorted(self.records.items())}

    def reset(self) -> None:
        with self.changed:
            self._advance()
            self.records.clear()

    def _advance(self) -> None:
        """Move every flow on by what it sent since the last change, and count each link's busy time."""
        now = self.clock()
        elapsed, self._last = now - self._last, now
        if elapsed <= 0 or not self.flows:
            return
        busy: set[str] = set()
        for flow in self.flows.values():
            sent = min(flow.rate * elapsed, flow.remaining)
            flow.remaining -= sent
            self.records.setdefault(flow.source, LinkRecord()).sent += sent
            self.records.setdefault(flow.target, LinkRecord()).received += sent
            busy |= {flow.source, flow.target}
        for node in busy:
            self.records[node].busy_s += elapsed

    def _rerate(self) -> None:
        scale = max(self.time_scale, 1e-9)
        flows = {k: (f.source, f.target, f.cap) for k, f in self.flows.items()}
        rates = fair_rates(flows, lambda side: link_rate(self.gbit_of(side[0])))
        for key, flow in self.flows.items():
            flow.rate = rates[key] / scale
        self.changed.notify_all()


def bwlimit_kib(options: Mapping[str, Any], params: Mapping[str, Any]) -> float | None:
    """PVE's cap on one migration, KiB/s: the call's `bwlimit`, else datacenter.cfg's `bwlimit`
    (`migration=N`, else `default=N`; a property string, or already split into a mapping); None: no cap."""
    if params.get("bwlimit") not in (None, ""):
        return float(params["bwlimit"]) or None  # 0: no limit, as PVE reads an override
    raw = options.get("bwlimit")
    limits: dict[str, Any] = {}
    if isinstance(raw, Mapping):
        limits = dict(raw)
    elif isinstance(raw, str):
        limits = dict(part.split("=", 1) for part in raw.split(",") if "=" in part)
    for name in ("migration", "default"):
        if limits.get(name) not in (None, ""):
            return float(limits[name]) or None
    return None
