"""Plan migrations: first repair what breaks a rule, then bring the spread within `balanciness`.

Pure: a snapshot and a policy in, a Plan out; no I/O. The phases run in order of urgency
(maintenance, pins and HA node rules, affinity, anti-affinity, then balance), all on one
PlanState, so every move is checked against the rules and the memory limit at the step it runs.
A rule that cannot be met is reported in `unmet`, with the guests and the reason.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from pvebalance.shared.models import (
    ClusterSnapshot,
    GuestState,
    GuestType,
    Migration,
    MigrationReason,
    Plan,
    Unmet,
)

from .load import guest_load, initial_loads, spread, summarize, with_cluster_scale
from .policy import Policy
from .rules import Constraints, Group, build_constraints, fixed_reason
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

    _drain(state, unmet)
    _enforce_pins(state, unmet)
    _enforce_together(state, unmet)
    _enforce_apart(state, unmet)
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
    if policy.method == "weighted":
        for dim in (d for d, w in policy.weights.items() if w > 0):
            one = replace(policy, method=dim, scale={})  # type: ignore[arg-type]
            before_dim, after_dim = _spread_by(snapshot, one, state.targets, state.moves)
            plan.notes.append(f"{dim}: spread {before_dim:.1f} -> {after_dim:.1f} pp")
    return plan


EXACT_MAX_GUESTS = 500


def _exact_applies(snapshot: ClusterSnapshot, policy: Policy) -> bool:
    """The exact model knows the rules and the memory limit, not the per-plan caps or vCPU limit."""
    return (policy.exact_seconds > 0 and len(snapshot.guests) <= EXACT_MAX_GUESTS
            and policy.max_migrations is None and policy.max_migrations_per_target is None
            and policy.cpu_overcommit is None and policy.threshold is None)


def _exact_if_fewer(snapshot: ClusterSnapshot, policy: Policy, constraints: Constraints, greedy: PlanState,
                    notes: list[str]) -> PlanState:
    from .exact import minimum_migrations, order_placement  # scipy is loaded only when it is used

    result = minimum_migrations(snapshot, policy, policy.exact_seconds)
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


def _group_of(state: PlanState) -> dict[int, Group]:
    return {v: g for g in state.c.together for v in g.vmids}


def _unit(state: PlanState, vmid: int, groups: dict[int, Group]) -> frozenset[int]:
    group = groups.get(vmid)
    return group.vmids if group else frozenset({vmid})


def _drain(state: PlanState, unmet: list[Unmet]) -> None:
    """Empty maintenance nodes: running guests must leave; stopped ones leave too when they may."""
    groups = _group_of(state)
    leaving = sorted((g for g in state.guests.values() if state.where[g.vmid] in state.draining),
                     key=lambda g: (-g.mem, g.vmid))
    for guest in leaving:
        if guest.vmid in state.moved:
            continue
        unit = _unit(state, guest.vmid, groups)
        why = state.c.fixed.get(guest.vmid)
        if why or not state.movable(unit):
            if guest.running:
                reason = why or "its affinity group cannot move"
                unmet.append(Unmet(rule=f"maintenance {state.where[guest.vmid]}", vmids=[guest.vmid], reason=reason))
            continue
        target = state.best_target(unit) if state.budget_left(len(unit)) else None
        if target is None:
            if guest.running:
                unmet.append(Unmet(rule=f"maintenance {state.where[guest.vmid]}", vmids=sorted(unit),
                                   reason="no node may take it with room to spare" if state.budget_left()
                                   else "migration cap reached"))
            continue
        state.move(unit, target, MigrationReason.MAINTENANCE, f"leaves {state.where[guest.vmid]} (maintenance)")


def _enforce_pins(state: PlanState, unmet: list[Unmet]) -> None:
    groups = _group_of(state)
    for vmid in sorted(state.c.allowed):
        node = state.where[vmid]
        if state.c.may_be_on(vmid, node) or vmid in state.moved:
            continue
        rule = state.c.allowed_rule[vmid]
        allowed = ",".join(sorted(state.c.allowed[vmid])) or "no node in the cluster"
        unit = _unit(state, vmid, groups)
        if not state.movable(unit):
            unmet.append(Unmet(rule=rule, vmids=[vmid],
                               reason=f"must run on {allowed} but cannot move: {state.c.fixed.get(vmid, 'group')}"))
            continue
        target = state.best_target(unit)
        if target is None or not state.budget_left(len(unit)):
            unmet.append(Unmet(rule=rule, vmids=[vmid], reason=f"must run on {allowed}: none may take it now"))
            continue
        state.move(unit, target, state.c.allowed_reason[vmid], f"{rule}: may run only on {allowed}")


def _enforce_together(state: PlanState, unmet: list[Unmet]) -> None:
    for group in state.c.together:
        nodes = {state.where[v] for v in group.vmids}
        if len(nodes) == 1:
            continue
        anchors = {state.where[v] for v in group.vmids if v in state.c.fixed or v in state.moved}
        if len(anchors) > 1:
            unmet.append(Unmet(rule=group.name, vmids=sorted(group.vmids),
                               reason=f"members that cannot move sit on {', '.join(sorted(anchors))}"))
            continue
        share: dict[str, int] = defaultdict(int)
        for v in group.vmids:
            share[state.where[v]] += state.guests[v].mem + 1
        candidates = sorted(anchors) if anchors else sorted(share, key=lambda n: (-share[n], n))
        if not anchors:
            candidates += [t for t in state.targets if t not in candidates]
        for node in candidates:
            moving = frozenset(v for v in group.vmids if state.where[v] != node)
            if state.movable(moving) and state.allows(group.vmids, node) and state.fits(moving, node) \
                    and state.budget_left(len(moving)):
                state.move(moving, node, group.reason, f"{group.name}: joins the group on {node}")
                break
        else:
            unmet.append(Unmet(rule=group.name, vmids=sorted(group.vmids),
                               reason="no node may hold the whole group with room to spare"))


def _enforce_apart(state: PlanState, unmet: list[Unmet]) -> None:
    groups = _group_of(state)
    for group in state.c.apart:
        by_node: dict[str, list[int]] = defaultdict(list)
        for v in sorted(group.vmids):
            by_node[state.where[v]].append(v)
        for node, members in sorted(by_node.items()):
            if len(members) < 2:
                continue
            # keep the member that cannot move (or the largest); move the others away
            members.sort(key=lambda v: (v not in state.c.fixed, -state.guests[v].mem, v))
            for v in members[1:]:
                unit = _unit(state, v, groups)
                target = state.best_target(unit) if state.movable(unit) and state.budget_left(len(unit)) else None
                if target is None:
                    why = state.c.fixed.get(v) or (
                        f"{len(group.vmids)} members but no other node may take it"
                    )
                    unmet.append(Unmet(rule=group.name, vmids=[members[0], v], reason=f"share {node}: {why}"))
                    continue
                state.move(unit, target, group.reason, f"{group.name}: must not share {node} with {members[0]}")


def _units(state: PlanState) -> list[frozenset[int]]:
    """What the balance phase may move: whole together-groups, or single guests; running only."""
    groups = _group_of(state)
    seen: set[int] = set()
    units = []
    for vmid in sorted(state.guests):
        if vmid in seen:
            continue
        unit = _unit(state, vmid, groups)
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
