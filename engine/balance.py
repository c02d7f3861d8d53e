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

from .band import apply_in_order, band_plan, clone
from .load import guest_load, initial_loads, spread, summarize, with_cluster_scale
from .outcome import outcome_of
from .policy import Policy
from .repair import repair
from .rules import Constraints, build_constraints, fixed_reason
from .schedule import prefer, schedule
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
        state = _balance(state, notes)
    if policy.max_migrations is not None and len(state.moves) >= policy.max_migrations \
            and state.spread() > policy.balanciness:
        notes.append(f"stopped at the cap of {policy.max_migrations} migrations per plan")
    elif not unmet and state.moves and _exact_applies(snapshot, policy):
        state = _exact_if_fewer(snapshot, policy, constraints, state, notes)

    timetable = schedule(state.moves, snapshot, policy, constraints)  # batches and queue order (schedule.py)
    notes += timetable.notes
    migrations = _to_migrations(timetable.moves, snapshot, policy, state.targets, timetable.batches)
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
    plan.splits = timetable.splits
    plan.expected_seconds = round(timetable.expected_seconds, 1)
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


def _balance(state: PlanState, notes: list[str]) -> PlanState:
    """The balance phase: the band plan (band.py, built for few moves) and the greedy one
    (search.py, variance step by step), the one with fewer migrations (then the greedy one). On
    clusters too large for the exact model the greedy plan is only the fallback, to keep planning
    time down: the band plan needed fewer moves on every bundled cluster of that size."""
    units = _units(state)
    banded: PlanState | None = None
    # min_gain asks every balance move to lower the variance by itself: only the greedy plan's do
    band = band_plan(state, units) if state.policy.min_gain <= 0 else None
    if band is not None and state.budget_left(sum(len(u) for u, _ in band.moves)):
        banded = clone(state)
        if not apply_in_order(banded, band.moves) or banded.spread() > state.policy.balanciness:
            banded = None
    if banded is not None and len(state.guests) > EXACT_MAX_GUESTS:
        return banded
    greedy_notes: list[str] = []
    balance_moves(state, units_by_node(state, units), greedy_notes)
    if banded is not None and prefer(banded.moves, state.moves, state.policy, state.c):  # balancing.objective
        return banded
    notes.extend(greedy_notes)
    return state


def _exact_applies(snapshot: ClusterSnapshot, policy: Policy) -> bool:
    """The exact model knows the rules and the memory limit, not the per-plan caps or vCPU limit.
    `exact_seconds` > 0 turns it on; its search is bounded by work (exact.EXACT_NODE_LIMIT), never
    by time, so that no load on the machine changes a plan."""
    return (policy.exact_seconds > 0 and len(snapshot.guests) <= EXACT_MAX_GUESTS
            and policy.max_migrations is None and policy.max_migrations_per_target is None
            and policy.cpu_overcommit is None and policy.threshold is None)


def _exact_if_fewer(snapshot: ClusterSnapshot, policy: Policy, constraints: Constraints, greedy: PlanState,
                    notes: list[str]) -> PlanState:
    from .exact import EXACT_NODE_LIMIT, minimum_migrations, order_placement  # scipy: loaded only when used

    # bounded by work only (no wall-clock limit): the same snapshot gives the same plan under any load
    stuck: list[dict[int, str]] = []
    for _ in range(EXACT_RETRIES):
        result = minimum_migrations(snapshot, policy, node_limit=EXACT_NODE_LIMIT, time_limit=None,
                                    fewer_than=len(greedy.moves), exclude=stuck)
        if result.migrations is None or result.migrations >= len(greedy.moves):
            break
        ordered = order_placement(snapshot, policy, constraints, result.placement)
        if ordered is not None and ordered.spread() <= policy.balanciness:
            if not prefer(ordered.moves, greedy.moves, policy, constraints):  # balancing.objective: time
                notes.append(f"exact solver: {len(ordered.moves)} migrations instead of {len(greedy.moves)}, "
                             "expected to finish later: kept the greedy plan")
                return greedy
            notes.append(f"exact solver: {len(ordered.moves)} migrations instead of {len(greedy.moves)}")
            return ordered
        # its moves are stuck in a cycle (two full nodes swapping guests): look for another placement
        stuck.append(result.placement)
    if stuck:
        notes.append(f"the exact solver found {len(stuck)} placement(s) with fewer migrations, but no safe "
                     "order for any")
    return greedy


EXACT_RETRIES = 3  # placements tried when the best has no safe order; each a work-bounded solve


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


def _to_migrations(moves: list[Move], snapshot: ClusterSnapshot, policy: Policy, targets: list[str],
                   batches: list[int]) -> list[Migration]:
    """Replay the moves (in queue order) to record each one's effect; `batches` from schedule.py."""
    loads = initial_loads(snapshot, policy)
    result = []
    for move, batch in zip(moves, batches, strict=True):
        before = spread(loads, targets)
        loads[move.source].load -= move.load
        loads[move.target].load += move.load
        g = move.guest
        result.append(
            Migration(
                vmid=g.vmid, name=g.name, type=g.type, source=move.source, target=move.target,
                reason=move.reason, detail=move.detail,
                online=g.type is GuestType.QEMU and g.running and policy.live,
                mem_bytes=g.mem, local_disk_bytes=g.local_disk, local_disks=g.local_storage_bytes(),
                spread_before_pp=round(before, 3), spread_after_pp=round(spread(loads, targets), 3),
                batch=batch,
            )
        )
    return result


__all__ = ["Constraints", "is_movable", "plan_balance"]
