"""Which of the four outcomes a plan has, in one field, so "nothing to do" is never read as a failure."""

from __future__ import annotations

from pvebalance.shared.models import Plan, PlanOutcome


def outcome_of(plan: Plan, below_threshold: bool = False) -> tuple[PlanOutcome, str]:
    """balanced: nothing to do; planned: moves that reach the target with every rule kept; partial:
    some rules cannot be met (listed in `unmet`); infeasible: out of balance, and no safe move helps."""
    if plan.unmet:
        shown = "; ".join(f"{u.rule} ({', '.join(map(str, u.vmids))}): {u.reason}" for u in plan.unmet[:3])
        more = f" and {len(plan.unmet) - 3} more" if len(plan.unmet) > 3 else ""
        return "partial", f"{len(plan.unmet)} rule(s) cannot be met: {shown}{more}"
    if plan.migrations:
        return "planned", (f"{len(plan.migrations)} migration(s): spread {plan.before.spread_pp:.1f} -> "
                           f"{plan.after.spread_pp:.1f} pp (balanciness {plan.balanciness:g} pp)")
    if below_threshold:
        return "balanced", next((n for n in plan.notes if "threshold" in n), "no node above its threshold")
    if plan.before.spread_pp <= plan.balanciness:
        return "balanced", (f"spread {plan.before.spread_pp:.1f} pp is within the balanciness of "
                            f"{plan.balanciness:g} pp: nothing to do")
    why = "; ".join(plan.notes) or "every move that would lower the spread breaks a rule or a limit"
    return "infeasible", (f"spread {plan.before.spread_pp:.1f} pp above {plan.balanciness:g} pp, "
                          f"and no safe move helps: {why}")
