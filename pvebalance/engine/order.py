"""The queue order of a batch whose moves share links: the order that finishes first, searched over the
plays of timing.py, bounded by work (the play's events), never by time, so a plan never depends on the
machine's load.

Why not longest first: two moves that share a link and start together copy in step and end together,
then both spend PVE's fixed part (and the migrator's gap) at once while the link idles. What keeps a
link busy is an order in which each move's fixed part falls within another move's copy: a long copy
hosts the fixed parts of short moves beside it, and a long move starts its copy before the one hosting
it ends. The search:

1. builds orders move by move, as the migrator would start them: each time a slot frees, the moves
   that may start are tried (up to TRIES of them, from short to long copies; each on a copy of the
   play, on to the next free slot and one fixed part beyond: until then nothing started later
   copies, so that stretch is settled) and the one after which the plan's end looks soonest is taken.
   The estimate: every link's bytes left at its full rate (a true lower bound), in two of the three
   orders also the moves' work left spread over the slots; less, in two of them, a bonus for a move
   on the busiest link whose copy is shorter than a fixed part (two such moves side by side leave the
   link idle while both are in their fixed parts: such a move is best spent while a long copy hosts it);
2. keeps the best of those orders and the given one (longest first), then anneals it: a move moved to
   another place, or two swapped, kept when the plan ends sooner or, decreasingly often, a little
   later (Metropolis; a seeded generator, so the same moves give the same order), until the work is
   spent or the order ends at a lower bound (the busiest link's bytes after one fixed part, or the
   longest move alone). A batch of at most 6 moves has few enough orders to try them all.

A play that can no longer end before the time it must beat stops there (timing.Play.link_bound), so
most tries cost a part of a play.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
from collections import OrderedDict
from collections.abc import Sequence

from pvebalance.shared.config import MigratorSettings

from .timing import _DONE, Copy, Play

# The work a search may do: events played (each play has about three a move: a setup, a copy and a gap
# end), per move in the batch, at most MOST_WORK (about 0.5 s of a slow machine's core).
WORK_PER_MOVE = 1500
MOST_WORK = 90_000
# Each built order may use this share of the work (a batch of hundreds of moves tries fewer of them:
# once its share is spent an order takes the remaining moves as given).
BUILD_SHARE = 0.15
# The orders built: (count the moves' work over the slots in the bound, the bonus per second a copy is
# shorter than a fixed part).
BUILDS = ((True, 0.3), (True, 0.0), (False, 0.3))
EVERY_ORDER_UP_TO = 720  # batches with at most this many orders (6 moves) try them all
TRIES = 16  # moves tried at each start of a built order, at most
ANNEAL_TEMPERATURE = 0.05  # the first temperature, a share of the time a slot spends on a move (then down to 0)
ANNEAL_SEED = 24
_CACHE_SIZE = 32  # searches remembered: the same batch and limits give the same order, found once
_cache: OrderedDict[tuple[object, ...], list[int]] = OrderedDict()
_cache_lock = threading.Lock()


def shortest_order(copies: Sequence[Copy], limits: MigratorSettings, work: int | None = None) -> list[int]:
    """An order of independent moves (none waits for another) that finishes soon over the links: indexes
    into `copies`, whose own order (longest first, say) breaks ties. See the module."""
    work = min(WORK_PER_MOVE * len(copies), MOST_WORK) if work is None else work
    key = (tuple(copies), _limits_key(limits), work)
    with _cache_lock:
        if key in _cache:  # a plan's queue is played for the plans compared (schedule.prefer), then scheduled
            _cache.move_to_end(key)
            return list(_cache[key])
    found = _Search(copies, limits, work).run()
    with _cache_lock:
        _cache[key] = found
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return list(found)


def _limits_key(m: MigratorSettings) -> tuple[object, ...]:
    return (m.max_parallel_cluster, m.max_parallel_per_source, m.max_parallel_per_target, m.poll_interval,
            m.setup_seconds, m.link_gbit, tuple(sorted(m.link_gbit_nodes.items())))


class _Search:
    """One search: its plays and the work they did (`used`, events)."""

    def __init__(self, copies: Sequence[Copy], limits: MigratorSettings, work: int) -> None:
        self.copies, self.limits, self.work = list(copies), limits, work
        self.none: list[list[int]] = [[] for _ in copies]
        self.used = 0  # events played
        self.plays = 0

    def play(self, order: Sequence[int], cutoff: float = math.inf) -> float:
        play = Play(self.copies, self.none, self.limits)
        took = play.run(order, cutoff)
        self.used += play.steps
        self.plays += 1
        return took

    def run(self) -> list[int]:
        n = len(self.copies)
        given = list(range(n))
        if n < 2:
            return given
        fresh = Play(self.copies, self.none, self.limits)
        lower = max(fresh.link_bound() + self.limits.setup_seconds,
                    max(fresh.copies[i].nbytes / fresh.lone_rate(i) for i in given) + self.limits.setup_seconds)
        best, best_time = given, self.play(given)
        if math.factorial(n) <= EVERY_ORDER_UP_TO:
            return self.every_order(best, best_time, lower)
        for with_slots, bonus in BUILDS:
            if best_time <= lower + _DONE:
                return best
            built = self.build(with_slots, bonus, int(self.work * BUILD_SHARE))
            took = self.play(built)
            if took < best_time - _DONE:
                best, best_time = built, took
        return self.anneal(best, best_time, lower)

    def build(self, with_slots: bool, bonus: float, work: int) -> list[int]:
        """An order made move by move as the slots free (see the module, 1.)."""
        play = Play(self.copies, self.none, self.limits)
        busiest = max(range(len(play.capacity)), key=lambda s: (play.unsent[s] / play.capacity[s], -s))
        fixed = self.limits.setup_seconds + play.after
        order: list[int] = []
        rest = list(range(len(self.copies)))
        spent = 0
        while rest:
            may = [i for i in rest if play.fits(i)]
            if not may:
                play.step()
                continue
            pick, best = may[0], math.inf
            # whether a move that waits for none may start depends on its two nodes only: one of each pair will do
            pairs: dict[tuple[int, int], list[int]] = {}
            for k in rest:
                pairs.setdefault((play.src[k], play.dst[k]), []).append(k)
            seen: set[tuple[int, int, int]] = set()
            kinds = []  # the moves that may start, one of each kind (the same move as one tried: the same outcome)
            for i in may:
                kind = (play.src[i], play.dst[i], self.copies[i].nbytes)
                if kind not in seen:
                    seen.add(kind)
                    kinds.append(i)
            if len(kinds) > TRIES:  # spread over the given order (longest first: short to long copies)
                kinds = [kinds[round(k * (len(kinds) - 1) / (TRIES - 1))] for k in range(TRIES)]
            for i in kinds if spent < work else ():
                trial = play.clone()
                trial.steps = 0
                trial.start(i)
                others = [ks[1] if ks[0] == i else ks[0] for ks in pairs.values() if ks[0] != i or len(ks) > 1]
                score = _after_next_start(trial, others, with_slots)
                if busiest in (play.src[i], play.dst[i]):
                    score -= bonus * max(0.0, fixed - self.copies[i].nbytes / play.capacity[busiest])
                spent += trial.steps
                if score < best - _DONE:
                    pick, best = i, score
            play.start(pick)
            order.append(pick)
            rest.remove(pick)
        self.used += spent + play.steps
        return order

    def every_order(self, best: list[int], best_time: float, lower: float) -> list[int]:
        """The best of all orders of a small batch (each play cut off once it cannot beat the best so far)."""
        for order in itertools.permutations(range(len(best))):
            if best_time <= lower + _DONE:
                break
            took = self.play(order, best_time - _DONE)
            if took < best_time - _DONE:
                best, best_time = list(order), took
        return best

    def anneal(self, best: list[int], best_time: float, lower: float) -> list[int]:
        """Simulated annealing from the best order (see the module, 2.); plays of moves cut off once they lose."""
        n = len(best)
        rng = random.Random(ANNEAL_SEED)
        current, current_time = best, best_time
        start_used, most_plays = self.used, 20 * n * n
        start_plays = self.plays
        while self.used < self.work and best_time > lower + _DONE:
            done = max((self.used - start_used) / max(self.work - start_used, 1),
                       (self.plays - start_plays) / most_plays)
            if done >= 1:
                break
            temperature = ANNEAL_TEMPERATURE * best_time * self.limits.max_parallel_cluster / n * (1 - done)
            trial = list(current)
            i, j = rng.sample(range(n), 2)
            if rng.random() < 0.5:
                trial[i], trial[j] = trial[j], trial[i]
            else:
                trial.insert(j, trial.pop(i))
            # Metropolis drawn first: the try is kept if it ends before `beat`, so its play stops once it cannot
            beat = current_time - temperature * math.log(1.0 - rng.random())
            took = self.play(trial, beat)
            if took < beat:
                current, current_time = trial, took
                if took < best_time - _DONE:
                    best, best_time = trial, took
        return best


def _after_next_start(play: Play, rest: list[int], with_slots: bool) -> float:
    """Play on without starting anything until one of `rest` may start, and a fixed part beyond (no move
    started then copies sooner): the plan's end as it looks from there (see the module, 1.)."""
    if not any(play.fits(k) for k in rest):
        while play.running:
            running = play.running
            play.step()
            # a move that waits for none may start only once a slot frees
            if play.running < running and any(play.fits(k) for k in rest):
                break
    horizon = play.clock + play.limits.setup_seconds
    while play.running and play.clock < horizon - _DONE:
        play.step(horizon)
    play.clock = max(play.clock, horizon)
    bound = play.link_bound()
    return max(bound, play.clock + play.work_left() / play.limits.max_parallel_cluster) if with_slots else bound
