"""How the simulator behaves like a busy real cluster rather than an idle, instant one.

Every knob is on by default (the demo, the tests and the benchmarks all see a realistic API) and
each can be turned off or tuned: `Simulator(dump, realism=Realism(latency_ms=0, ...))`, or the
flags of `pvebalance simulator`. Durations marked "at time-scale 1" are multiplied by the
simulator's time_scale, as migrations are; the request latency is not (it is the API's, in ms).

- Latency and workers: each request takes `latency_ms` (uniform jitter of ± `jitter` of it) on one
  of `workers` workers of the node that serves it, as pveproxy serves API calls with a fixed pool
  of workers (3 by default). A call for `/nodes/NODE/...` is proxied to that node (PVE's
  `proxyto`) and served by NODE's workers; any other call by the node the client talks to (the
  first). More requests than workers wait in line. 0 workers: no limit.
- Lagging node figures: a node's `mem` and `cpu` in /cluster/resources, /nodes, node status and
  RRD are what they were `figure_lag` seconds ago (pvestatd broadcasts them every 10 s); a guest's
  `node` changes at once (it comes from the config file system).
- Host overhead that varies: a node uses, besides its guests, the host's own memory (recorded in
  the scenario), which swings by ± `host_variation` of itself over `variation_period` (page cache,
  KSM merging, ballooning).
- `memhost`: a running VM's memory as the host sees it (PVE 9): its `mem` plus QEMU's own; node
  memory counts `memhost` for VMs and `mem` for containers (a recorded `memhost` is kept).
- Live migration memory: while a running VM migrates live, its target already holds its memory
  (the target QEMU is started first) and its source still does, until the switch-over; the guest
  is paused for `switchover_pause` at the end (qmpstatus `paused`).
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .stats import Stats

MIB = 2**20
NODE_PATH = re.compile(r"^/nodes/([^/]+)/")


@dataclass(frozen=True)
class Realism:
    latency_ms: float = 10.0  # per request, mean
    jitter: float = 0.5  # the latency varies uniformly by ± this fraction of it
    workers: int = 3  # per node, as pveproxy's max_workers; 0: unlimited
    figure_lag: float = 5.0  # seconds at time-scale 1
    host_variation: float = 0.1  # ± fraction of the host's own memory use
    variation_period: float = 120.0  # seconds at time-scale 1
    memhost: bool = True  # VM entries carry `memhost`, and node memory counts it
    live_memory: bool = True  # a live migration holds the guest's memory on both nodes
    switchover_pause: float = 0.3  # seconds at time-scale 1, at the end of a live migration

    def __post_init__(self) -> None:
        if min(self.latency_ms, self.workers, self.figure_lag, self.switchover_pause, self.jitter) < 0:
            raise ValueError(f"simulator realism: no setting may be negative ({self.as_json()})")
        if self.jitter > 1 or self.host_variation < 0 or self.host_variation >= 1 or self.variation_period <= 0:
            raise ValueError("simulator realism: jitter must be 0..1, host_variation 0..<1, variation_period > 0")

    @classmethod
    def off(cls) -> Realism:
        """The instant, idle cluster the simulator used to be: for tests of exact figures."""
        return cls(latency_ms=0.0, jitter=0.0, workers=0, figure_lag=0.0, host_variation=0.0,
                   memhost=False, live_memory=False, switchover_pause=0.0)

    def but(self, **changes: Any) -> Realism:
        return replace(self, **changes)

    def as_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def qemu_overhead(maxmem: int) -> int:
    """QEMU's own memory beside the guest's (device models, page tables): 32 MiB + 1/128 of RAM."""
    return 32 * MIB + maxmem // 128


def host_factor(realism: Realism, node_index: int, now: float, time_scale: float) -> float:
    """How much of its recorded own memory the host uses at `now`: a slow wave, phase per node."""
    if not realism.host_variation:
        return 1.0
    period = max(realism.variation_period * time_scale, 1e-3)
    phase = 2 * math.pi * (now / period + node_index * 0.37)
    return 1.0 + realism.host_variation * math.sin(phase)


class Workers:
    """pveproxy's worker pools, one per node, and the answer time each request spends on a worker."""

    def __init__(self, realism: Realism, nodes: list[str], stats: Stats) -> None:
        self.realism = realism
        self.entry = nodes[0] if nodes else ""
        self.pools = {n: threading.BoundedSemaphore(realism.workers) for n in nodes} if realism.workers > 0 else {}
        self.rng = random.Random()
        self.stats = stats  # counts the requests that found every worker of their node busy
        self._lock = threading.Lock()

    def node_of(self, api_path: str) -> str:
        m = NODE_PATH.match(api_path + "/")
        return m.group(1) if m and m.group(1) in self.pools else self.entry

    def answer_time(self) -> float:
        r = self.realism
        if r.latency_ms <= 0:
            return 0.0
        return r.latency_ms / 1000.0 * self.rng.uniform(1.0 - r.jitter, 1.0 + r.jitter)

    @contextmanager
    def serve(self, api_path: str) -> Iterator[None]:
        pool = self.pools.get(self.node_of(api_path))
        if pool is not None and not pool.acquire(blocking=False):
            with self._lock:
                self.stats.requests_waited += 1
            pool.acquire()
        try:
            pause = self.answer_time()
            if pause:
                time.sleep(pause)
            yield
        finally:
            if pool is not None:
                pool.release()


class FigureHistory:
    """Node usage over time, so an answer can show what it was `lag` seconds ago."""

    def __init__(self, lag: float) -> None:
        self.lag = lag
        self._samples: list[tuple[float, Any]] = []

    def record(self, value: Any, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._samples.append((now, value))
        if self.lag <= 0:
            self._samples[:-1] = []
            return
        # keep the newest sample at least `lag` old (it answers until a newer one is old enough)
        cutoff = now - self.lag
        old = [i for i, (t, _) in enumerate(self._samples) if t <= cutoff]
        if len(old) > 1:
            del self._samples[: old[-1]]

    def at_lag(self, now: float | None = None) -> Any:
        now = time.monotonic() if now is None else now
        cutoff = now - self.lag
        seen = self._samples[0][1]
        for t, value in self._samples:
            if t > cutoff:
                break
            seen = value
        return seen
