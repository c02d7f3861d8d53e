"""How long a plan takes to run: its moves over the nodes' migration links, under the migrator's limits.

PVE sends a migration's memory (live) and local disks out of the source node's migration link and
into the target's. Migrations that use a link at the same moment share it, so two migrations out of
one node run at half speed each: running them at once gains only the part of a migration that is not
the copy. This module plays a plan out in time, as the migrator runs it:

- a move starts as soon as the moves it waits for have ended (the moves out of its target queued
  before it, and its guest's own earlier move: the planner's `depends_on`) and the migrator's limits
  (`max_parallel_cluster`, `_per_source`, `_per_target`) have room, the first such in queue order;
- it takes PVE's own part first (`migrator.setup_seconds`: the tunnel, the target's QEMU, the config
  move), then copies its bytes (`Migration.gib_moved`: the memory of a live migration and the local
  disks) at its max-min fair share of its source's sending and its target's receiving side (links
  are full duplex), recomputed whenever a copy starts or ends;
- its slot is free again when the migrator has seen the task end (half its `poll_interval` on
  average) and the next move has passed its pre-flight (`PREFLIGHT_SECONDS`).

A link of N Gbit/s (`migrator.link_gbit`, per node `link_gbit_nodes`) carries N/10 GiB of migration
data a second: 10 Gbit/s is 1.16 GiB/s on the wire, of which about 86 % carries the guest's pages and
blocks (TCP/IP, the migration stream's framing, pages dirtied meanwhile and sent again). The
simulator's links (pvebalance/simulator/links.py) are the same model, written apart from this one: a test
checks that both agree.

`Play` is that run, one event at a time, copyable part-way: the queue-order search (order.py) tries
next moves from a shared beginning, and cuts a play off once it cannot end before the time it must beat.
Pure and deterministic: the same moves and settings give the same times.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pvebalance.shared.config import MigratorSettings

GIB = 2**30
GIB_PER_GBIT = 0.1  # GiB of migration data a second per Gbit/s of link (see the module)
PREFLIGHT_SECONDS = 0.2  # the next move's pre-flight reads and its POST, after a slot frees
_DONE = 1e-9  # seconds: a phase this close to its end has ended (float rounding)


def link_rate(gbit: float) -> float:
    """Bytes of migration data a second over a link of `gbit` Gbit/s."""
    return gbit * GIB_PER_GBIT * GIB


@dataclass(frozen=True)
class Copy:
    """One move as the links see it."""

    source: str
    target: str
    nbytes: int


def fair_rates(flows: dict[int, Copy], capacity: Callable[[tuple[str, str]], float]) -> dict[int, float]:
    """Max-min fair rates (progressive filling): each flow crosses its source's sending side and its
    target's receiving side; the most shared side fixes its flows' rate first, the others share the rest."""
    sides: dict[tuple[str, str], int] = {}
    for flow in flows.values():
        for side in ((flow.source, "out"), (flow.target, "in")):
            sides.setdefault(side, len(sides))
    keys = list(flows)
    rates = _max_min([(sides[(flows[k].source, "out")], sides[(flows[k].target, "in")]) for k in keys],
                     [capacity(side) for side in sides])
    return dict(zip(keys, rates, strict=True))


def _max_min(flows: Sequence[tuple[int, int]], capacity: Sequence[float]) -> list[float]:
    """`fair_rates` over sides numbered 0..len(capacity)-1: each flow is (its sending side, its receiving side)."""
    left = list(capacity)
    count = [0] * len(capacity)
    for out, into in flows:
        count[out] += 1
        count[into] += 1
    rates = [0.0] * len(flows)
    active = set(range(len(flows)))
    while active:
        share = min(left[s] / count[s] for s in range(len(left)) if count[s])
        fixed = [k for k in active if any(left[s] / count[s] <= share for s in flows[k])]
        for k in fixed:
            rates[k] = share
        for k in fixed:
            for s in flows[k]:
                left[s] -= share
                count[s] -= 1
        active.difference_update(fixed)
    return rates


class Play:
    """The migrator running a queue, one event (a phase or a copy ends) at a time. A search copies a play
    part-way (`clone`) to try several next moves from one shared beginning."""

    def __init__(self, copies: Sequence[Copy], waits_for: Sequence[Sequence[int]], limits: MigratorSettings) -> None:
        self.copies, self.waits_for, self.limits = copies, waits_for, limits
        sides: dict[tuple[str, str], int] = {}
        self.src = [sides.setdefault((c.source, "out"), len(sides)) for c in copies]
        self.dst = [sides.setdefault((c.target, "in"), len(sides)) for c in copies]
        self.capacity = [_rate(limits, node) for node, _ in sides]
        self.after = _after(limits)
        n = len(copies)
        self.times = [(0.0, 0.0)] * n
        self.started = [False] * n
        self.ended = [False] * n
        self.phase_left: dict[int, float] = {}  # running moves in a timed phase (setup, after the copy): seconds left
        self.copying: dict[int, float] = {}  # running moves copying: bytes left
        self.rates: dict[int, float] = {}  # of the copying moves, bytes a second
        self.after_copy: set[int] = set()  # running moves whose copy has ended (in the gap after it)
        self.per_source = [0] * len(sides)
        self.per_target = [0] * len(sides)
        self.unsent = [0.0] * len(sides)  # bytes each side has still to carry
        for i, c in enumerate(copies):
            self.unsent[self.src[i]] += c.nbytes
            self.unsent[self.dst[i]] += c.nbytes
        self.unstarted_work = sum(limits.setup_seconds + c.nbytes / self.lone_rate(i) + self.after
                                  for i, c in enumerate(copies))  # slot-seconds, each move alone on its links
        self.clock, self.running, self.steps = 0.0, 0, 0
        self.tasks_ended, self.last_end = 0, 0.0

    def clone(self) -> Play:
        other = copy.copy(self)
        for name in ("times", "started", "ended", "per_source", "per_target", "unsent"):
            setattr(other, name, list(getattr(self, name)))
        other.phase_left, other.copying, other.rates = dict(self.phase_left), dict(self.copying), dict(self.rates)
        other.after_copy = set(self.after_copy)
        return other

    def fits(self, i: int) -> bool:
        """Whether move i may start now: not started, what it waits for ended, the limits have room."""
        m = self.limits
        return not self.started[i] and self.running < m.max_parallel_cluster \
            and self.per_source[self.src[i]] < m.max_parallel_per_source \
            and self.per_target[self.dst[i]] < m.max_parallel_per_target \
            and all(self.ended[j] for j in self.waits_for[i])

    def start(self, i: int) -> None:
        self.started[i] = True
        self.unstarted_work -= self.limits.setup_seconds + self.copies[i].nbytes / self.lone_rate(i) + self.after
        self.running += 1
        self.per_source[self.src[i]] += 1
        self.per_target[self.dst[i]] += 1
        self.times[i] = (self.clock, self.clock)
        self.phase_left[i] = self.limits.setup_seconds

    def dispatch(self, order: Sequence[int]) -> None:
        """The migrator's rule: the first move in queue order that may start, as long as one may."""
        for i in order:
            if self.running >= self.limits.max_parallel_cluster:
                return
            if self.fits(i):
                self.start(i)

    def step(self, until: float = math.inf) -> None:
        """On to the next event, or to `until` if that comes first."""
        self.steps += 1
        copying, phase_left, rates = self.copying, self.phase_left, self.rates
        step = min([*phase_left.values(), *(copying[i] / rates[i] for i in copying)])
        step = min(step, max(until - self.clock, 0.0))
        self.clock += step
        changed = False
        for i in list(phase_left):
            left = phase_left[i] - step
            if left > _DONE:
                phase_left[i] = left
                continue
            del phase_left[i]
            if i in self.after_copy:  # the migrator has seen it end: its slots are free
                self.after_copy.discard(i)
                self.ended[i], self.running = True, self.running - 1
                self.per_source[self.src[i]] -= 1
                self.per_target[self.dst[i]] -= 1
            else:
                copying[i], changed = float(self.copies[i].nbytes), True
        for i in list(copying):
            rate = rates.get(i, 0.0)
            copying[i] -= rate * step
            self.unsent[self.src[i]] -= rate * step
            self.unsent[self.dst[i]] -= rate * step
            if copying[i] <= rate * _DONE or copying[i] <= 0:
                rounding = copying.pop(i)  # the few bytes (or less than none) float rounding left
                self.unsent[self.src[i]] -= rounding
                self.unsent[self.dst[i]] -= rounding
                changed = True
                self.after_copy.add(i)
                # its task ends with the copy (the switch-over is PVE's fixed part)
                self.times[i] = (self.times[i][0], self.clock)
                self.tasks_ended, self.last_end = self.tasks_ended + 1, self.clock
                phase_left[i] = self.after
        if changed:
            flows = list(copying)
            self.rates = dict(zip(flows, _max_min([(self.src[i], self.dst[i]) for i in flows], self.capacity),
                                  strict=True))

    def run(self, order: Sequence[int], cutoff: float = math.inf) -> float:
        """Play the queue to its end: its last task's end, or infinity once it cannot end before `cutoff`."""
        order, first = list(order), 0  # order[first] is the first move not started
        self.dispatch(order)
        while self.running:
            running = self.running
            self.step()
            if self.running < running:
                while first < len(order) and self.started[order[first]]:
                    first += 1
                self.dispatch(order[first:])
            if cutoff < math.inf and self.link_bound() >= cutoff:
                return math.inf
        return max((end for _, end in self.times), default=0.0)

    def lone_rate(self, i: int) -> float:
        """Move i's rate with nothing else on its links."""
        return min(self.capacity[self.src[i]], self.capacity[self.dst[i]])

    def work_left(self) -> float:
        """The slot-seconds the moves not ended still take, each copying at its lone rate."""
        work = self.unstarted_work
        for i, left in self.phase_left.items():
            work += left if i in self.after_copy else left + self.copies[i].nbytes / self.lone_rate(i) + self.after
        for i, nbytes in self.copying.items():
            work += nbytes / self.lone_rate(i) + self.after
        return work

    def link_bound(self) -> float:
        """No play on from here ends before its last task so far, nor, while tasks are to end, before every
        side has carried its bytes still unsent at its full rate."""
        if self.tasks_ended == len(self.copies):
            return self.last_end
        left = max((u / c for u, c in zip(self.unsent, self.capacity, strict=True)), default=0.0)
        return max(self.last_end, self.clock + left)


def finish_times(copies: Sequence[Copy], waits_for: Sequence[Sequence[int]],
                 limits: MigratorSettings) -> list[tuple[float, float]]:
    """Each move's expected (start, end) of its task, in seconds from the plan's start; `copies` in queue
    order, `waits_for[i]` the indexes of the moves move i waits for. A move's slot frees a little after
    its task's end (`_after`): the next move starts then, but the plan's end is its last task's end."""
    play = Play(copies, waits_for, limits)
    play.run(range(len(copies)))
    return play.times


def makespan(copies: Sequence[Copy], waits_for: Sequence[Sequence[int]], limits: MigratorSettings) -> float:
    return Play(copies, waits_for, limits).run(range(len(copies)))


def _rate(limits: MigratorSettings, node: str) -> float:
    return link_rate(limits.link_gbit_nodes.get(node, limits.link_gbit))


def _after(limits: MigratorSettings) -> float:
    """From the task's end until its slot serves the next move: the migrator's polling, then the pre-flight."""
    return limits.poll_interval / 2 + PREFLIGHT_SECONDS
