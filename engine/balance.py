"""Plan migrations: first repair what breaks a rule, then bring the spread within `balanciness`.

Pure: a snapshot and a policy in, a Plan out; no I/O. Each registered rule family repairs what it
finds broken, in the registry's order of urgency (maintenance, pins and HA node rules, affinity,
anti-affinity; see rules/registry.py), then the balance phase runs, all on one PlanState, so every
move is checked against every family's rules and the room on its target at the step it runs. A rule
that cannot be met is reported in `unmet`, with the guests and the reason.
"""

from __future__ import annotations

from dataclasses import replace

from pvebalance.shared.models import (
    ClusterSnapshot,
    GuestState,
    GuestType,
    Migration,
    Plan,
    Unmet,
)

from .load import guest_load, initial_loads, spread, summarize, with_cluster_scale
from .outcome import outcome_of
from .policy import Policy
from .repair import repair
from .rules import Constraints, build_constraints, fixed_reason
from .search import balance_moves, units_by_node
from .state import Move, PlanState
from .verify import find_violations


def is_movable(guest: GuestState, policy: Policy) -> bool:
    """Whether a balance move may take this guest (maintenance drains may move stopped ones too)."""
    return fixed_reason(guest, policy) is None and guest.running


def plan_balance(snapshot: ClusterSnapshot, policy: Policy) -> Plan:
    policy = with_cluster_scale(policy, snapshot)
    constraints = build_constraints(snapshot, policy)
    state = PlanState(snapshot, policy, constraints)
    before = summarize(state.loads, state.targets)
    unmet: list[Unmet] = []
    notes: list[str] = []

    for family in constraints.families:  # in the registry's order: the most urgent rules first
        repair(state, family.fixes(state), unmet)
    hottest = max((state.loads[n].percent for n in state.targets), default=0.0)
    if policy.threshold is not None and hottest < policy.threshold:
        notes.append(f"no node above the {policy.method} threshold of {policy.threshold}%: not balancing")
    elif state.spread() > policy.balanciness:
        balance_moves(state, units_by_node(state, _units(state)), notes)
    if policy.max_migrations is not None and len(state.moves) >= policy.max_migrations \
            and state.spread() > policy.balanciness:
        notes.append(f"stopped at the cap of {policy.max_migrations} migrations per plan")
    elif not unmet and state.moves and _exact_applies(snapshot, policy):
        state = _exact_if_fewer(snapshot, policy, constraints, state, notes)

    migrations = _to_migrations(state.moves, snapshot, policy, state.targets)
    plan = Plan(
        snapshot_id=snapshot.snapshot_id,
        method=policy.method,
        mode=policy.mode,
        balanciness=policy.balanciness,
        before=before,
        after=summarize(state.loads, state.targets),
        migrations=migrations,
        unmet=unmet,
        notes=notes,
    )
    plan.violations = find_violations(snapshot, plan, policy, constraints)
    plan.outcome, plan.outcome_reason = outcome_of(
        plan, below_threshold=policy.threshold is not None and hottest < policy.threshold)
    plan.held_out = held_out_nodes(snapshot, state)
    if policy.method == "weighted":
        for dim in (d for d, w in sorted(policy.weights.items()) if w > 0):
            one = replace(policy, method=dim, scale={})  # type: ignore[arg-type]
            before_dim, after_dim = _spread_by(snapshot, one, state.targets, state.moves)
            plan.notes.append(f"{dim}: spread {before_dim:.1f} -> {after_dim:.1f} pp")
    return plan


def held_out_nodes(snapshot: ClusterSnapshot, state: PlanState) -> dict[str, str]:
    """The nodes with a usage figure that the spread leaves out and nothing moves onto, and why."""
    online = {n.name: n.online for n in snapshot.nodes}
    return {
        name: "offline" if not online.get(name, False) else "maintenance" if name in state.draining
        else "ignored" if name in state.policy.ignore_nodes else "no capacity"
        for name in sorted(state.loads) if name not in state.targets
    }


EXACT_MAX_GUESTS = 500


def _exact_applies(snapshot: ClusterSnapshot, policy: Policy) -> bool:
    """The exact model knows the rules and the memory limit, not the per-plan caps or vCPU limit."""
    return (policy.exact_seconds > 0 and len(snapshot.guests) <= EXACT_MAX_GUESTS
            and policy.max_migrations is None and policy.max_migrations_per_target is None
            and policy.cpu_overcommit is None and policy.threshold is None)


def _exact_if_fewer(snapshot: ClusterSnapshot, policy: Policy, constraints: Constraints, greedy: PlanState,
                    notes: list[str]) -> PlanState:
    from .exact import EXACT_NODE_LIMIT, minimum_migrations, order_placement  # scipy: loaded only when used

    result = minimum_migrations(snapshot, policy, node_limit=EXACT_NODE_LIMIT, time_limit=policy.exact_seconds,
                                fewer_than=len(greedy.moves))
    if result.stopped_by == "time limit":
        # the only way load can change a plan: say so, so that two differing plans are explained
        notes.append(f"the exact solver stopped at its safety limit of {policy.exact_seconds:g} s "
                     f"(balancing.exact_seconds) before its work limit of {EXACT_NODE_LIMIT} nodes: "
                     "under another load this plan may differ")
    if result.migrations is None or result.migrations >= len(greedy.moves):
        return greedy
    ordered = order_placement(snapshot, policy, constraints, result.placement)
    if ordered is None or ordered.spread() > policy.balanciness:
        notes.append(f"the exact solver found {result.migrations} migrations, but no safe order for them")
        return greedy
    notes.append(f"exact solver: {len(ordered.moves)} migrations instead of {len(greedy.moves)}")
    return ordered


def _spread_by(snapshot: ClusterSnapshot, policy: Policy, targets: list[str], moves: list[Move]) -> tuple[float, float]:
    """One dimension's spread before and after the moves (explains a weighted plan)."""
    loads = initial_loads(snapshot, policy)
    before = spread(loads, targets)
    for move in moves:
        load = guest_load(move.guest, policy)
        loads[move.source].load -= load
        loads[move.target].load += load
    return before, spread(loads, targets)


def _units(state: PlanState) -> list[frozenset[int]]:
    """What the balance phase may move: whole together-groups, or single guests; running only."""
    seen: set[int] = set()
    units = []
    for vmid in sorted(state.guests):
        if vmid in seen:
            continue
        unit = state.c.unit(vmid)
        seen |= unit
        nodes = {state.where[v] for v in unit}
        if len(nodes) != 1 or not state.movable(unit) or nodes.pop() not in state.targets:
            continue
        if not all(state.guests[v].running for v in unit):
            continue  # stopped guests move only when their node is drained
        units.append(unit)
    return units


def _to_migrations(moves: list[Move], snapshot: ClusterSnapshot, policy: Policy, targets: list[str]) -> list[Migration]:
    """Replay the moves to record each one's effect, and group them into parallel batches.

    A move into a node comes in a later batch than every earlier move out of that node (which
    frees its room); moves of one batch may then finish in any order without overloading a node.
    """
    loads = initial_loads(snapshot, policy)
    left_in_batch: dict[str, int] = {}  # node -> latest batch of a move out of it
    result = []
    for move in moves:
        before = spread(loads, targets)
        loads[move.source].load -= move.load
        loads[move.target].load += move.load
        batch = 1 + left_in_batch.get(move.target, -1)
        left_in_batch[move.source] = max(left_in_batch.get(move.source, -1), batch)
        g = move.guest
        result.append(
            Migration(
                vmid=g.vmid, name=g.name, type=g.type, source=move.source, target=move.target,
                reason=move.reason, detail=move.detail,
                online=g.type is GuestType.QEMU and g.running and policy.live,
                mem_bytes=g.mem, local_disk_bytes=g.local_disk,
                spread_before_pp=round(before, 3), spread_after_pp=round(spread(loads, targets), 3),
                batch=batch,
            )
        )
    return result


__all__ = ["Constraints", "is_movable", "plan_balance"]
