"""Check a plan by replaying it: the `violations` of a plan, empty when it keeps every rule.

A rule broken at the end of the plan is a violation unless the plan reports it in `unmet` (a rule
the plan could not meet, with the reason). Capacity is checked at every step, not only at the end.
"""

from __future__ import annotations

from pvebalance.shared.models import ClusterSnapshot, Plan

from .policy import Policy
from .rules import Constraints


def find_violations(snapshot: ClusterSnapshot, plan: Plan, policy: Policy, c: Constraints) -> list[str]:
    guests = {g.vmid: g for g in snapshot.guests}
    where = {g.vmid: g.node for g in snapshot.guests}
    nodes = {n.name: n for n in snapshot.nodes}
    used = {n.name: float(max(n.mem, 0)) for n in snapshot.nodes}
    draining = {n.name for n in snapshot.nodes if n.maintenance or n.name in policy.maintenance_nodes}
    receivers = {n.name for n in snapshot.nodes if n.online and n.usable} - draining - set(policy.ignore_nodes)
    out: list[str] = []
    for step, m in enumerate(plan.migrations, 1):
        if where.get(m.vmid) != m.source:
            out.append(f"step {step}: guest {m.vmid} is not on {m.source}")
        if m.vmid in c.fixed:
            out.append(f"step {step}: guest {m.vmid} must not move ({c.fixed[m.vmid]})")
        if m.target not in receivers:
            out.append(f"step {step}: {m.target} may not receive guests")
        g = guests[m.vmid]
        if g.running:
            used[m.source] -= g.mem
            used[m.target] += g.mem
        usable = nodes[m.target].maxmem - policy.reserved(m.target).memory * 2**30
        limit = usable * policy.max_node_usage / 100
        if used[m.target] > limit:
            out.append(f"step {step}: {m.target} goes over {policy.max_node_usage}% memory")
        where[m.vmid] = m.target

    unmet_rules = {u.rule for u in plan.unmet}
    unmet_vmids = {v for u in plan.unmet for v in u.vmids}
    for vmid, allowed in sorted(c.allowed.items()):
        if where[vmid] not in allowed and vmid not in unmet_vmids:
            out.append(f"guest {vmid} ends on {where[vmid]}, outside {sorted(allowed)} ({c.allowed_rule[vmid]})")
    for group in c.together:
        spots = {where[v] for v in group.vmids}
        if len(spots) > 1 and group.name not in unmet_rules:
            out.append(f"{group.name}: members end on {sorted(spots)}")
    for group in c.apart:
        seen: dict[str, int] = {}
        for v in sorted(group.vmids):
            if where[v] in seen and group.name not in unmet_rules:
                out.append(f"{group.name}: {seen[where[v]]} and {v} end on {where[v]}")
            seen.setdefault(where[v], v)
    for vmid, node in sorted(where.items()):
        if node in draining and guests[vmid].running and vmid not in unmet_vmids:
            out.append(f"guest {vmid} still runs on maintenance node {node}")
    return out
