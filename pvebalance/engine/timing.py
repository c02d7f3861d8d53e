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

Pure and deterministic: the same moves and settings give the same times.
"""

from __future__ import annotations

from collections import Counter
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
    left: dict[tuple[str, str], float] = {}
    crossing: dict[tuple[str, str], set[int]] = {}
    for key, flow in flows.items():
        for side in ((flow.source, "out"), (flow.target, "in")):
            left.setdefault(side, capacity(side))
            crossing.setdefault(side, set()).add(key)
    rates: dict[int, float] = {}
    active = set(flows)
    while active:
        shares = {side: left[side] / len(keys & active) for side, keys in crossing.items() if keys & active}
        share = min(shares.values())
        fixed = {k for side, s in shares.items() if s <= share for k in crossing[side] & active}
        for k in fixed:
            rates[k] = share
            left[(flows[k].source, "out")] -= share
            left[(flows[k].target, "in")] -= share
        active -= fixed
    return rates


def finish_times(copies: Sequence[Copy], waits_for: Sequence[Sequence[int]],
                 limits: MigratorSettings) -> list[tuple[float, float]]:
    """Each move's expected (start, end) of its task, in seconds from the plan's start; `copies` in queue
    order, `waits_for[i]` the indexes of the moves move i waits for. A move's slot frees a little after
    its task's end (`_after`): the next move starts then, but the plan's end is its last task's end."""
    n = len(copies)
    times = [(0.0, 0.0)] * n
    started = [False] * n
    ended = [False] * n
    phase_left: dict[int, float] = {}  # running moves in a timed phase (setup, after the copy): seconds left
    copying: dict[int, float] = {}  # running moves copying: bytes left
    after_copy: set[int] = set()
    per_source: Counter[str] = Counter()
    per_target: Counter[str] = Counter()
    clock, running = 0.0, 0

    def dispatch() -> None:
        nonlocal running
        for i in range(n):
            if running >= limits.max_parallel_cluster:
                return
            c = copies[i]
            if started[i] or not all(ended[j] for j in waits_for[i]) \
                    or per_source[c.source] >= limits.max_parallel_per_source \
                    or per_target[c.target] >= limits.max_parallel_per_target:
                continue
            started[i], running = True, running + 1
            per_source[c.source] += 1
            per_target[c.target] += 1
            times[i] = (clock, clock)
            phase_left[i] = limits.setup_seconds

    dispatch()
    while running:
        rates = fair_rates({i: copies[i] for i in copying}, lambda side: _rate(limits, side[0]))
        step = min([*phase_left.values(), *(copying[i] / rates[i] for i in copying)])
        clock += step
        for i in list(phase_left):
            phase_left[i] -= step
            if phase_left[i] > _DONE:
                continue
            del phase_left[i]
            if i in after_copy:  # the migrator has seen it end: its slots are free
                ended[i], running = True, running - 1
                per_source[copies[i].source] -= 1
                per_target[copies[i].target] -= 1
            else:
                copying[i] = float(copies[i].nbytes)
        for i in list(copying):
            copying[i] -= rates.get(i, 0.0) * step
            if copying[i] <= rates.get(i, 0.0) * _DONE or copying[i] <= 0:
                del copying[i]
                after_copy.add(i)
                times[i] = (times[i][0], clock)  # its task ends with the copy (the switch-over is PVE's fixed part)
                phase_left[i] = _after(limits)
        dispatch()
    return times


def makespan(copies: Sequence[Copy], waits_for: Sequence[Sequence[int]], limits: MigratorSettings) -> float:
    return max((end for _, end in finish_times(copies, waits_for, limits)), default=0.0)


# Plays of the queue a reordering may try: bounded by work, not time, so that a plan never depends on the
# machine's load (about 0.7 ms a play for 40 moves).
ORDER_PLAYS = 600


def shortest_order(copies: Sequence[Copy], limits: MigratorSettings, plays: int = ORDER_PLAYS) -> list[int]:
    """An order of independent moves (none waits for another) that finishes soon over the links: the
    given order (longest first, say), improved by moving one move to another place while that helps
    (first improvement, going on from the move that last helped), for at most `plays` plays.

    Why not longest first: two moves that share a link and start together copy in step and end
    together, then both spend PVE's fixed part (and the migrator's gap) at once while the link idles.
    Orders in which one move's fixed part falls within another's copy keep the link busy."""
    n = len(copies)
    none: list[list[int]] = [[] for _ in range(n)]
    played = 0

    def play(order: list[int]) -> float:
        nonlocal played
        played += 1
        return makespan([copies[i] for i in order], none, limits)

    best = list(range(n))
    best_time = play(best)
    improved, first = True, 0
    while improved and played < plays:
        improved = False
        for i in (k % n for k in range(first, first + n)):
            for j in range(n):
                if i == j or played >= plays:
                    continue
                trial = best[:i] + best[i + 1:]
                trial.insert(j, best[i])
                took = play(trial)
                if took < best_time - _DONE:
                    best, best_time, improved, first = trial, took, True, i + 1
                    break
            if improved or played >= plays:
                break
    return best


def _rate(limits: MigratorSettings, node: str) -> float:
    return link_rate(limits.link_gbit_nodes.get(node, limits.link_gbit))


def _after(limits: MigratorSettings) -> float:
    """From the task's end until its slot serves the next move: the migrator's polling, then the pre-flight."""
    return limits.poll_interval / 2 + PREFLIGHT_SECONDS
