"""Which of the four outcomes a plan has, in one field, so "nothing to do" is never read as a failure."""

from __future__ import annotations

from collections.abc import Collection

from pvebalance.shared.models import Plan, PlanOutcome
from pvebalance.shared.words import plural


def outcome_of(plan: Plan, below_threshold: bool = False, quiet: Collection[str] = ()) -> tuple[PlanOutcome, str]:
    """balanced: nothing to do; planned: moves that reach the target with every rule kept; partial:
    some rules cannot be met, or moves that leave a dimension above its band (listed in `unmet`);
    infeasible: out of balance, and no safe move helps. `quiet`: dimensions no node passes the
    threshold of, which the plan does not balance (all of them: `below_threshold`)."""
    rules = [u for u in plan.unmet if not u.rule.startswith("balance ")]
    if rules or (plan.unmet and plan.migrations):  # a rule, or a dimension the moves leave out of its band
        shown = "; ".join(f"{u.rule} ({', '.join(map(str, u.vmids))}): {u.reason}" for u in plan.unmet[:3])
        more = f" and {len(plan.unmet) - 3} more" if len(plan.unmet) > 3 else ""
        return "partial", f"{plural(len(plan.unmet), 'rule')} cannot be met: {shown}{more}"
    if plan.migrations:
        return "planned", f"{plural(len(plan.migrations), 'migration')}: {_spreads(plan)}"
    if below_threshold:
        return "balanced", next((n for n in plan.notes if "threshold" in n),
                                plan.notes[0] if plan.notes else "no node above its threshold")
    over = _over(plan, quiet)
    if not over:
        if len(plan.bands) <= 1:
            return "balanced", (f"spread {plan.before.spread_pp:.1f} pp is within the balanciness of "
                                f"{plan.balanciness:g} pp: nothing to do")
        return "balanced", "every dimension within its band (" + ", ".join(
            f"{d} {plan.before.dimensions[d].spread_pp:.1f} <= {b:g} pp" for d, b in plan.bands.items()) + \
            "): nothing to do"
    why = "; ".join(plan.notes) or "every move that would lower the spread breaks a rule or a limit"
    if len(plan.bands) <= 1:
        return "infeasible", (f"spread {plan.before.spread_pp:.1f} pp above {plan.balanciness:g} pp, "
                              f"and no safe move helps: {why}")
    return "infeasible", f"{', '.join(over)}, and no safe move helps: {why}"


def _over(plan: Plan, quiet: Collection[str]) -> list[str]:
    """Each dimension above its band before the plan, in words ("cpu 12.0 pp above 5 pp")."""
    if not plan.bands or not plan.before.dimensions:  # a plan from before several dimensions
        return [] if plan.before.spread_pp <= plan.balanciness else [f"spread {plan.before.spread_pp:.1f} pp"]
    return [f"{d} {plan.before.dimensions[d].spread_pp:.1f} pp above {b:g} pp" for d, b in plan.bands.items()
            if d in plan.before.dimensions and plan.before.dimensions[d].spread_pp > b and d not in quiet]


def _spreads(plan: Plan) -> str:
    """The spread before and after, with the band: per dimension when there are several."""
    if len(plan.bands) <= 1 or not plan.after.dimensions:
        return (f"spread {plan.before.spread_pp:.1f} -> {plan.after.spread_pp:.1f} pp "
                f"(balanciness {plan.balanciness:g} pp)")
    return "spread " + ", ".join(
        f"{d} {plan.before.dimensions[d].spread_pp:.1f} -> {plan.after.dimensions[d].spread_pp:.1f} pp (band {b:g})"
        for d, b in plan.bands.items())
