"""Check a plan by replaying it: the `violations` of a plan, empty when it keeps every rule.

A rule broken at the end of the plan (as each family checks it) is a violation unless the plan
reports it in `unmet` (a rule the plan could not meet, with the reason). Room on the target is
checked at every step, not only at the end, by the very function the engine plans with (`fit.fits`).
"""

from __future__ import annotations

from pvebalance.shared.models import ClusterSnapshot, Plan

from .fit import GuestFigures, fits, snapshot_figures
from .policy import Policy
from .rules import Constraints


def find_violations(snapshot: ClusterSnapshot, plan: Plan, policy: Policy, c: Constraints) -> list[str]:
    guests = {g.vmid: g for g in snapshot.guests}
    where = {g.vmid: g.node for g in snapshot.guests}
    figures = snapshot_figures(snapshot)  # as the engine counts them: the same limit, the same baseline
    receivers = {n.name for n in snapshot.nodes if n.online and n.usable} - c.draining - set(policy.ignore_nodes)
    out: list[str] = []
    for step, m in enumerate(plan.migrations, 1):
        if where.get(m.vmid) != m.source:
            out.append(f"step {step}: guest {m.vmid} is not on {m.source}")
        if m.vmid in c.fixed:
            out.append(f"step {step}: guest {m.vmid} must not move ({c.fixed[m.vmid]})")
        if m.target not in receivers:
            out.append(f"step {step}: {m.target} may not receive guests")
        arriving = GuestFigures.of([guests[m.vmid]])
        if m.target in figures:  # a node not in the snapshot was reported above
            why = fits(arriving, figures[m.target], policy)
            if why:
                out.append(f"step {step}: {why}")
            figures[m.target] = figures[m.target].arrive(arriving)
        if m.source in figures:
            figures[m.source] = figures[m.source].leave(arriving)
        where[m.vmid] = m.target

    # A rule the plan reports as unmet (same rule, a guest in common) is not also a violation.
    unmet = {(u.rule, v) for u in plan.unmet for v in u.vmids}
    for family in c.families:
        for breach in family.check(c, where, guests):
            if breach.required and not any((breach.rule, v) in unmet for v in breach.vmids):
                out.append(breach.violation)
    return out
