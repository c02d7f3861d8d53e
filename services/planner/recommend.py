"""Manual and dry-run modes: the plan that waits for an operator's approval, and when a newer snapshot
makes it stale."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pvebalance.engine import Policy
from pvebalance.engine.rules import build_constraints
from pvebalance.engine.verify import find_violations
from pvebalance.shared.logging import get_logger
from pvebalance.shared.models import ClusterSnapshot, Plan
from pvebalance.shared.plans import PlanState

if TYPE_CHECKING:
    from .planner import Planner

log = get_logger("pvebalance.planner")


def recommend(planner: Planner, plan: Plan, request_id: str | None = None,
              snapshot: ClusterSnapshot | None = None, policy: Policy | None = None) -> Plan:
    """Store a plan for an operator to approve. A plan already waiting stays waiting (its approval
    stays valid) while the newer snapshot leaves it safe and needed: usage noise changes every
    plan a little, and an operator needs more than one collector interval to read one. It is
    superseded when the new snapshot makes it stale (see `stale_reason`), or by a rebalance request."""
    waiting = planner.plans.in_state(PlanState.RECOMMENDED)
    stale: dict[str, str] = {}
    for status in waiting:
        old = planner.plans.plan(status.plan_id)
        why = "it is gone from Redis" if old is None else \
            "a rebalance was asked for" if request_id is not None or snapshot is None or policy is None else \
            stale_reason(planner, old, plan, snapshot, policy)
        if planner.settings.balancing.mode_of_operation == "dry-run" and old is not None and why is None \
                and _moves(old) != _moves(plan):
            why = "it gives other moves"  # dry-run shows what would be done now; nobody approves it
        if why is None:
            return old or plan
        stale[status.plan_id] = why
    for plan_id, why in stale.items():
        planner.plans.set_state(plan_id, PlanState.SUPERSEDED,
                                f"superseded by plan {plan.plan_id}, made on a newer snapshot: {why}")
    planner.save(plan, PlanState.RECOMMENDED, request_id)
    log.info("plan recommended", plan_id=plan.plan_id, outcome=plan.outcome, migrations=len(plan.migrations),
             disk_moves=len(plan.disk_moves))
    return plan


def stale_reason(planner: Planner, old: Plan, new: Plan, snapshot: ClusterSnapshot, policy: Policy) -> str | None:
    """Why a waiting plan no longer fits the cluster, or None while it is still safe and needed."""
    if old.created_at.timestamp() < time.time() - planner.settings.planner.recommendation_ttl:
        return f"older than planner.recommendation_ttl ({planner.settings.planner.recommendation_ttl:g} s)"
    if _moves(old) == _moves(new):
        return None
    present = {g.vmid for g in snapshot.guests}
    gone = sorted({m.vmid for m in old.actions} - present)
    if gone:
        return f"guest {gone[0]} no longer exists" if len(gone) == 1 else \
            f"guests {', '.join(map(str, gone))} no longer exist"
    if old.actions and not new.actions:
        return f"nothing to do now ({new.outcome_reason})"
    if new.outcome != old.outcome:
        return f"its outcome changed from {old.outcome} to {new.outcome}"
    violations = find_violations(snapshot, old, policy, build_constraints(snapshot, policy))
    if violations:
        return f"it would no longer be safe: {violations[0]}"
    return None


def _moves(plan: Plan | None) -> list[str]:
    return sorted(a.model_dump_json(include={"kind", "vmid", "disk", "source", "target"}) for a in plan.actions) \
        if plan else []
