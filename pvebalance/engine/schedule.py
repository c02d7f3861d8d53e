"""When each move of a plan runs: its batch, its place in the queue, and how long groups stay split.

The engine builds a plan as a sequence in which every step fits (state.py). The migrator runs moves
in parallel, and a live migration holds the guest's memory on both its source and its target until
it ends. One rule makes any overlap safe: a move into a node starts only after every move out of
that node that came before it in the engine's sequence has ended (batches follow that rule, and the
planner enqueues each move after the moves out of its target in earlier batches). Then a node never
holds more than it did at some step of the sequence, whichever moves overlap and in whatever order
they end: take the last move into it (in the sequence) that has started; every move out of it
before that one has ended, and no arrival after it has begun, so the node holds at most what it held
right after that step, which `fit.fits` accepted. That rule is the only order the schedule keeps;
within it, it is free to:

- put each together-group's (affinity) moves in one batch, next to each other in the queue and
  largest first, so the group is split for as short a time as the limits allow; and
- order each batch for the shortest total time under the migrator's limits (in the cluster, per
  source, per target): list scheduling, the longest expected migration first (LPT).

Durations are the migrator's expected ones (`MigratorSettings.expected_seconds`), an upper estimate,
so a group's split time is an "at most". The plan's expected time to finish is another figure: the
queue played out over the nodes' migration links (timing.py), where migrations out of one node share
its link. Pure and deterministic: ties are broken by the sequence.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from pvebalance.shared.models import ClusterSnapshot, GroupSplit, GuestType
from pvebalance.shared.words import plural

from .order import shortest_order
from .policy import Policy
from .rules import Constraints
from .state import Move
from .timing import Copy, makespan


@dataclass(frozen=True)
class Timetable:
    """The moves in queue order, each with its batch and expected start and end (seconds from the start)."""

    moves: list[Move]
    batches: list[int]
    starts: list[float]
    ends: list[float]
    splits: list[GroupSplit]
    notes: list[str]
    expected_seconds: float = 0.0  # the queue over the migration links (timing.py): the plan's time to finish
    after: list[list[int]] | None = None  # for each move in queue order, the earlier ones it waits for

    @property
    def makespan(self) -> float:
        return max(self.ends, default=0.0)


def expected_seconds(move: Move, policy: Policy) -> float:
    """As the migrator expects the job's task to take (shared/jobqueue.py: the same bytes)."""
    return policy.migrator.expected_seconds(move.guest.mem + move.guest.local_disk)


def schedule(moves: Sequence[Move], snapshot: ClusterSnapshot, policy: Policy, constraints: Constraints) -> Timetable:
    """The batches and queue order of a plan's moves (given in the engine's sequence); see the module."""
    order, level, starts, ends, groups = _queue(moves, policy, constraints)
    splits = _splits(moves, snapshot, constraints, level, ends)
    notes = [_split_note(s, groups[s.group], policy) for s in splits]
    queued = [moves[i] for i in order]
    return Timetable(queued, [level[i] for i in order], [starts[i] for i in order],
                     [ends[i] for i in order], splits, notes, expected_time(queued, policy),
                     _departures_before(queued))


def plan_seconds(moves: Sequence[Move], policy: Policy, constraints: Constraints) -> float:
    """How long these moves (in the engine's sequence) are expected to take, queued as `schedule` queues them."""
    order = _queue(moves, policy, constraints)[0]
    return expected_time([moves[i] for i in order], policy)


def expected_time(queued: Sequence[Move], policy: Policy) -> float:
    """The moves in queue order, each waiting as its job waits (the plan's `after`: for the moves out of its
    target queued before it, and its guest's earlier move), over the migration links."""
    copies = [Copy(m.source, m.target, copied_bytes(m, policy)) for m in queued]
    return makespan(copies, _departures_before(queued), policy.migrator)


def copied_bytes(move: Move, policy: Policy) -> int:
    """What the move sends over the links, as `Migration.gib_moved` counts it: a live VM's memory, local disks."""
    g = move.guest
    live = g.type is GuestType.QEMU and g.running and policy.live
    return (g.mem if live else 0) + g.local_disk


def prefer(a: Sequence[Move], b: Sequence[Move], policy: Policy, constraints: Constraints) -> bool:
    """Whether plan `a` beats plan `b` (both balance; each in the engine's sequence) by
    `balancing.objective`: migrations, the fewer moves, then the one expected to finish first; time,
    the one expected to finish first among plans of about as many moves (see ABOUT_AS_MANY), then fewer."""
    if policy.objective == "time" and max(len(a), len(b)) <= ABOUT_AS_MANY * min(len(a), len(b)) + 1:
        return (plan_seconds(a, policy, constraints), len(a)) < (plan_seconds(b, policy, constraints), len(b))
    if len(a) != len(b):
        return len(a) < len(b)
    return plan_seconds(a, policy, constraints) < plan_seconds(b, policy, constraints)


# `objective: time` weighs a plan's time against plans of at most this many times its moves (plus one):
# each migration disturbs its guest (a pause at the switch-over, memory held twice), so time does not buy
# many more of them.
ABOUT_AS_MANY = 1.25


def _queue(moves: Sequence[Move], policy: Policy, constraints: Constraints
           ) -> tuple[list[int], list[int], list[float], list[float], dict[str, list[int]]]:
    """The queue order (indexes into `moves`), each move's batch, expected start and end (the upper
    estimates), and the together-groups."""
    seconds = [expected_seconds(m, policy) for m in moves]
    preds = _departures_before(moves)
    groups = _groups(moves, constraints)
    root, kept = _one_batch_per_group(len(moves), preds, groups)
    level = _levels(len(moves), preds, root)
    order: list[int] = []
    starts = [0.0] * len(moves)
    ends = [0.0] * len(moves)
    clock = 0.0
    by_level: dict[int, list[int]] = defaultdict(list)
    for i in range(len(moves)):
        by_level[level[i]].append(i)
    group_of = {i: name for name, members in groups.items() if name in kept for i in members}
    for batch in sorted(by_level):
        started = _list_schedule(moves, by_level[batch], seconds, group_of, policy, clock, starts, ends)
        if _shares_links(moves, started, group_of, policy):
            copies = [Copy(moves[i].source, moves[i].target, copied_bytes(moves[i], policy)) for i in started]
            started = [started[k] for k in shortest_order(copies, policy.migrator)]
        order += started
        clock = max((ends[i] for i in started), default=clock)
    return order, level, starts, ends, groups


def _shares_links(moves: Sequence[Move], batch: list[int], group_of: dict[int, str], policy: Policy) -> bool:
    """Whether the batch's queue order is worth choosing over the links (order.shortest_order): the limits
    let two moves out of (or into) one node run at once, so they share its link, and the queue's order is
    the order they start in (no per-target limit holds a worker back while a later move could start), and
    no move of the batch waits for another (an arrival before a departure from its node) or belongs to a
    group (whose moves stay next to each other)."""
    m = policy.migrator
    together = min(m.max_parallel_cluster, max(m.max_parallel_per_source, m.max_parallel_per_target))
    if together < 2 or m.max_parallel_per_target < min(m.max_parallel_cluster, m.max_parallel_per_source) \
            or len(batch) > SHARED_ORDER_MAX or any(i in group_of for i in batch):
        return False
    arriving = {moves[i].target for i in batch}
    return not any(moves[i].source in arriving for i in batch)


SHARED_ORDER_MAX = 200  # moves in a batch whose order is chosen over the links (each play of it takes longer)


def _departures_before(moves: Sequence[Move]) -> list[list[int]]:
    """For each move, the earlier moves (in the sequence) out of its target, and the guest's own
    earlier move (a guest parked on a third node moves twice): it must wait for them."""
    leaving: dict[str, list[int]] = defaultdict(list)
    last_of: dict[int, int] = {}
    preds = []
    for i, m in enumerate(moves):
        own = [last_of[m.guest.vmid]] if m.guest.vmid in last_of else []
        preds.append(sorted(set(leaving[m.target]) | set(own)))
        leaving[m.source].append(i)
        last_of[m.guest.vmid] = i
    return preds


def _groups(moves: Sequence[Move], c: Constraints) -> dict[str, list[int]]:
    """Every together-group (of every family) with moves in the plan: its name -> its moves."""
    index = {m.guest.vmid: i for i, m in enumerate(moves)}
    out = {}
    for family in sorted(c.together):
        for group in c.together[family]:
            members = sorted(index[v] for v in group.vmids if v in index)
            if members:
                out[group.name] = members
    return dict(sorted(out.items()))


def _find(root: list[int], i: int) -> int:
    while root[i] != i:
        root[i] = root[root[i]]
        i = root[i]
    return i


def _one_batch_per_group(n: int, preds: list[list[int]], groups: dict[str, list[int]]) -> tuple[list[int], set[str]]:
    """Join each group's moves into one batch, group by group, unless a move of it must wait (through
    others) for another of it, or for a group joined before: then its moves keep their own batches."""
    root = list(range(n))
    kept = set()
    for name, members in groups.items():
        if len(members) < 2:
            continue
        trial = list(root)
        for i in members[1:]:
            a, b = _find(trial, members[0]), _find(trial, i)
            if a != b:
                trial[max(a, b)] = min(a, b)
        if _levels(n, preds, trial, strict=True):
            root = trial
            kept.add(name)
    return [_find(root, i) for i in range(n)], kept


def _levels(n: int, preds: list[list[int]], root: list[int], strict: bool = False) -> list[int]:
    """Each move's batch: one after the latest batch it waits for; joined moves share the latest.
    With `strict`, [] when the joins make a move wait for itself (no batch order exists)."""
    roots = sorted({_find(root, i) for i in range(n)})
    after: dict[int, set[int]] = defaultdict(set)
    waiting = Counter[int]()
    for i in range(n):
        b = _find(root, i)
        for j in preds[i]:
            a = _find(root, j)
            if a == b:
                return [] if strict else _levels(n, preds, list(range(n)))
            if b not in after[a]:
                after[a].add(b)
                waiting[b] += 1
    level = dict.fromkeys(roots, 0)
    ready = [r for r in roots if not waiting[r]]
    done = 0
    while ready:
        a = heapq.heappop(ready)
        done += 1
        for b in after[a]:
            level[b] = max(level[b], level[a] + 1)
            waiting[b] -= 1
            if not waiting[b]:
                heapq.heappush(ready, b)
    if done < len(roots):
        return [] if strict else _levels(n, preds, list(range(n)))
    return [level[_find(root, i)] for i in range(n)]


def _list_schedule(moves: Sequence[Move], batch: list[int], seconds: list[float], group_of: dict[int, str],
                   policy: Policy, clock: float, starts: list[float], ends: list[float]) -> list[int]:
    """Start the batch's moves as the migrator's slots free up, the longest first (a group as one, by its
    longest; once a group has begun, its other moves first); returns them in the order they start.

    A move out of a node queues after the batch's earlier moves (in the sequence) into that node: the
    planner makes a move wait for the moves out of its target queued before it, and within a batch
    none may wait (an earlier departure would have put the arrival in a later batch)."""
    limits = policy.migrator
    members = set(batch)
    # within the batch: an arrival into a node before a later departure from it (see the docstring)
    arrivals: dict[str, list[int]] = defaultdict(list)
    before: dict[int, int] = Counter()
    unblocks: dict[int, list[int]] = defaultdict(list)
    for i in sorted(batch):
        for a in arrivals[moves[i].source]:
            before[i] += 1
            unblocks[a].append(i)
        arrivals[moves[i].target].append(i)
    longest: dict[str, float] = defaultdict(float)
    for i in batch:
        if i in group_of:
            longest[group_of[i]] = max(longest[group_of[i]], seconds[i])

    def static(i: int) -> tuple[float, str, float, int]:
        name = group_of.get(i, "")
        return (longest[name] if name else seconds[i], name, seconds[i], -i)

    rank = {i: r for r, i in enumerate(sorted(batch, key=static, reverse=True))}  # 0: the first to start
    waiting: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)  # ready, by source and target
    in_group: dict[str, set[int]] = defaultdict(set)  # ready moves of each group
    begun: set[str] = set()  # groups with a move started: their other moves come first

    def ready(i: int) -> None:
        heapq.heappush(waiting[(moves[i].source, moves[i].target)], (rank[i], i))
        if i in group_of:
            in_group[group_of[i]].add(i)

    def room(i: int) -> bool:
        return (per_source[moves[i].source] < limits.max_parallel_per_source
                and per_target[moves[i].target] < limits.max_parallel_per_target)

    def pick() -> int | None:
        if len(running) >= limits.max_parallel_cluster:
            return None
        grouped = [i for name in sorted(begun) for i in in_group[name] if room(i)]
        if grouped:
            return min(grouped, key=rank.__getitem__)
        heads = [heap[0] for (source, target), heap in waiting.items() if heap
                 and per_source[source] < limits.max_parallel_per_source
                 and per_target[target] < limits.max_parallel_per_target]
        return min(heads)[1] if heads else None

    running: list[tuple[float, int]] = []
    per_source: Counter[str] = Counter()
    per_target: Counter[str] = Counter()
    order: list[int] = []
    for i in sorted(batch):
        if not before[i]:
            ready(i)
    while len(order) < len(members):
        chosen = pick()
        if chosen is None:
            clock, ended = heapq.heappop(running)
            per_source[moves[ended].source] -= 1
            per_target[moves[ended].target] -= 1
            continue
        i = chosen
        heap = waiting[(moves[i].source, moves[i].target)]
        if heap[0][1] == i:
            heapq.heappop(heap)
        else:
            heap.remove((rank[i], i))
            heapq.heapify(heap)
        order.append(i)
        starts[i], ends[i] = clock, clock + seconds[i]
        heapq.heappush(running, (ends[i], i))
        per_source[moves[i].source] += 1
        per_target[moves[i].target] += 1
        if i in group_of:
            begun.add(group_of[i])
            in_group[group_of[i]].discard(i)
        for j in unblocks[i]:
            before[j] -= 1
            if not before[j]:
                ready(j)
    return order


def _splits(moves: Sequence[Move], snapshot: ClusterSnapshot, c: Constraints, level: list[int],
            ends: list[float]) -> list[GroupSplit]:
    """For each together-group with moves: how long its guests are on different nodes, at most."""
    index = {m.guest.vmid: i for i, m in enumerate(moves)}
    where = {g.vmid: g.node for g in snapshot.guests}
    out = []
    for family in sorted(c.together):
        for group in c.together[family]:
            moving = sorted(v for v in group.vmids if v in index)
            if not moving:
                continue
            place = {v: where[v] for v in group.vmids}
            split_s, last = 0.0, 0.0
            for end, v in sorted((ends[index[v]], v) for v in moving):
                if len(set(place.values())) > 1:
                    split_s += end - last
                place[v], last = moves[index[v]].target, end
            batches = {level[index[v]] for v in moving}
            out.append(GroupSplit(group=group.name, vmids=moving, batch=batches.pop() if len(batches) == 1 else None,
                                  split_s=round(split_s, 1)))
    return sorted(out, key=lambda s: s.group)


def _split_note(split: GroupSplit, members: list[int], policy: Policy) -> str:
    m = policy.migrator
    limits = f"{m.max_parallel_cluster} at once, {m.max_parallel_per_source} per source, " \
             f"{m.max_parallel_per_target} per target"
    where = f"in batch {split.batch}" if split.batch is not None else \
        "in several batches (one frees the room another needs)"
    return (f"{split.group}: {plural(len(members), 'move')} {where}, largest first; split for at most "
            f"{_duration(split.split_s)} at the migrator's limits ({limits}) and expected durations")


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes} min {s} s" if minutes else f"{s} s"
