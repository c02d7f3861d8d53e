"""Plan migrations that bring the spread between nodes within `balanciness`.

Pure: a snapshot and a policy in, a Plan out; no I/O. Every move is simulated on the running
state before the next is chosen, and a move is only taken if its target stays under the memory
safety limit at that point, so the plan's order is a safe order by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

from pvebalance.shared.models import ClusterSnapshot, GuestState, GuestType, Migration, MigrationReason, Plan

from .load import NodeLoad, guest_load, initial_loads, spread, summarize
from .policy import Policy

IGNORE_TAG_PREFIX = "plb_ignore"
# Only the most and least loaded nodes are tried each step: the best move almost always lies
# between them, and it keeps a 10,000-guest plan fast.
_SOURCES_TRIED = 3
_TARGETS_TRIED = 4


@dataclass
class _Move:
    guest: GuestState
    load: float
    source: str
    target: str
    reason: MigrationReason


def is_movable(guest: GuestState, policy: Policy) -> bool:
    """Whether the balancer may move this guest at all (rules of issue #3 extend this)."""
    return (
        guest.type in policy.balance_types
        and not guest.template
        and not guest.lock
        and not any(t.startswith(IGNORE_TAG_PREFIX) for t in guest.tags)
        and guest.node not in policy.ignore_nodes
        and guest.running
        and not (guest.type is GuestType.QEMU and guest.local_resources)
    )


def plan_balance(snapshot: ClusterSnapshot, policy: Policy) -> Plan:
    loads = initial_loads(snapshot, policy)
    online = {n.name for n in snapshot.nodes if n.online and n.name not in policy.ignore_nodes}
    draining = {n.name for n in snapshot.nodes if n.maintenance or n.name in policy.maintenance_nodes}
    targets = sorted(n for n in online if n not in draining and loads[n].capacity > 0)
    before = summarize(loads, targets)
    notes: list[str] = []
    placed: dict[int, str] = {}
    moves: list[_Move] = []
    movable = [g for g in snapshot.guests if g.node in online and is_movable(g, policy)]

    def budget_left() -> bool:
        return policy.max_migrations is None or len(moves) < policy.max_migrations

    for guest in sorted((g for g in movable if g.node in draining), key=lambda g: -g.mem):
        if not budget_left():
            break
        target = _best_target(guest, guest_load(guest, policy), loads, targets)
        if target is None:
            notes.append(f"guest {guest.vmid} cannot leave maintenance node {guest.node}: no node has room")
            continue
        moves.append(_apply(guest, guest.node, target, guest_load(guest, policy), loads, placed,
                            MigrationReason.MAINTENANCE))

    by_node: dict[str, list[GuestState]] = {n: [] for n in targets}
    for g in movable:
        if g.node in by_node and g.vmid not in placed:
            by_node[g.node].append(g)

    while budget_left() and spread(loads, targets) > policy.balanciness:
        best = _best_balance_move(by_node, loads, targets, policy)
        if best is None:
            notes.append(
                f"spread {spread(loads, targets):.1f} pp stays above balanciness {policy.balanciness}: "
                "no further move of a movable guest reduces it safely"
            )
            break
        by_node[best.source].remove(best.guest)
        moves.append(_apply(best.guest, best.source, best.target, best.load, loads, placed, best.reason))
    if not budget_left() and spread(loads, targets) > policy.balanciness:
        notes.append(f"stopped at the cap of {policy.max_migrations} migrations per plan")

    return Plan(
        snapshot_id=snapshot.snapshot_id,
        method=policy.method,
        mode=policy.mode,
        balanciness=policy.balanciness,
        before=before,
        after=summarize(loads, targets),
        migrations=_to_migrations(moves, snapshot, policy, targets),
        notes=notes,
    )


def _fits(guest: GuestState, target: NodeLoad) -> bool:
    return target.mem_used + guest.mem <= target.mem_limit


def _best_target(guest: GuestState, load: float, loads: dict[str, NodeLoad], targets: list[str]) -> str | None:
    fitting = [t for t in targets if _fits(guest, loads[t]) and loads[t].capacity > 0]
    if not fitting:
        return None
    return min(fitting, key=lambda t: (loads[t].load + load) / loads[t].capacity)


def _best_balance_move(
    by_node: dict[str, list[GuestState]], loads: dict[str, NodeLoad], targets: list[str], policy: Policy
) -> _Move | None:
    """The move that lowers the variance of node usage (in percent) the most; ties: less data moved.

    Variance, not the plain sum of squares: with unequal nodes a move changes the mean percentage
    too, and only the variance then says whether nodes came closer together.
    """
    ranked = sorted(targets, key=lambda n: loads[n].percent)
    sources = ranked[::-1][:_SOURCES_TRIED]
    receivers = ranked[:_TARGETS_TRIED]
    count = len(targets)
    total = sum(loads[n].percent for n in targets)
    total_sq = sum(loads[n].percent ** 2 for n in targets)
    variance = total_sq / count - (total / count) ** 2
    best: tuple[float, float] | None = None
    choice: _Move | None = None
    for s in sources:
        src = loads[s]
        p_s = src.percent
        for guest in by_node[s]:
            load = guest_load(guest, policy)
            if load <= 0:
                continue
            new_s = p_s - 100.0 * load / src.capacity
            for t in receivers:
                dst = loads[t]
                p_t = dst.percent
                if t == s or p_t >= p_s or not _fits(guest, dst):
                    continue
                new_t = p_t + 100.0 * load / dst.capacity
                new_total = total - p_s - p_t + new_s + new_t
                new_sq = total_sq - p_s**2 - p_t**2 + new_s**2 + new_t**2
                delta = new_sq / count - (new_total / count) ** 2 - variance
                key = (delta, guest.mem + guest.local_disk)
                if delta < -1e-9 and (best is None or key < best):
                    best, choice = key, _Move(guest, load, s, t, MigrationReason.BALANCE)
    return choice


def _apply(
    guest: GuestState,
    source: str,
    target: str,
    load: float,
    loads: dict[str, NodeLoad],
    placed: dict[int, str],
    reason: MigrationReason,
) -> _Move:
    loads[source].load -= load
    loads[target].load += load
    loads[source].mem_used -= guest.mem
    loads[target].mem_used += guest.mem
    placed[guest.vmid] = target
    return _Move(guest, load, source, target, reason)


def _to_migrations(
    moves: list[_Move], snapshot: ClusterSnapshot, policy: Policy, targets: list[str]
) -> list[Migration]:
    """Replay the moves to record each one's effect, and group them into parallel batches.

    A move waits for every earlier move that touches one of its nodes, so a batch never depends
    on another move of the same batch having finished first.
    """
    loads = initial_loads(snapshot, policy)
    last_batch: dict[str, int] = {}
    result = []
    for move in moves:
        before = spread(loads, targets)
        loads[move.source].load -= move.load
        loads[move.target].load += move.load
        batch = 1 + max(last_batch.get(move.source, -1), last_batch.get(move.target, -1))
        last_batch[move.source] = last_batch[move.target] = batch
        g = move.guest
        result.append(
            Migration(
                vmid=g.vmid,
                name=g.name,
                type=g.type,
                source=move.source,
                target=move.target,
                reason=move.reason,
                online=g.type is GuestType.QEMU and g.running and policy.live,
                mem_bytes=g.mem,
                local_disk_bytes=g.local_disk,
                spread_before_pp=round(before, 3),
                spread_after_pp=round(spread(loads, targets), 3),
                batch=batch,
            )
        )
    return result
