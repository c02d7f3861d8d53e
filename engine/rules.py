"""The rules a plan must never break, gathered from tags, pools, the config and PVE 9 HA rules.

- fixed guests never move: `plb_ignore_*` tags, guests excluded in the config, templates, locked
  guests, guests on ignored nodes, guests in cooldown, running VMs with local devices (hostpci...);
- `allowed` nodes: `plb_pin_NODE` tags (several = a set), pinned pools, HA node-affinity rules;
- `together` groups end on one node: `plb_affinity_NAME`, affinity pools, positive HA
  resource-affinity (groups sharing a guest are merged: a guest cannot be in two places);
- `apart` groups end on different nodes: `plb_anti_affinity_NAME`, anti-affinity pools, negative
  HA resource-affinity.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from pvebalance.shared.models import ClusterSnapshot, GuestState, GuestType, MigrationReason

from .policy import Policy

IGNORE_PREFIX = "plb_ignore"
AFFINITY_PREFIX = "plb_affinity_"
ANTI_AFFINITY_PREFIX = "plb_anti_affinity_"
PIN_PREFIX = "plb_pin_"
# HA service states in which the HA manager is moving, recovering or holding the guest itself
_HA_BUSY = {"migrate", "relocate", "fence", "recovery", "error", "freeze", "request_stop"}


@dataclass(frozen=True)
class Group:
    name: str
    vmids: frozenset[int]
    reason: MigrationReason


@dataclass
class Constraints:
    fixed: dict[int, str] = field(default_factory=dict)
    allowed: dict[int, frozenset[str]] = field(default_factory=dict)
    allowed_reason: dict[int, MigrationReason] = field(default_factory=dict)
    allowed_rule: dict[int, str] = field(default_factory=dict)
    together: list[Group] = field(default_factory=list)
    apart: list[Group] = field(default_factory=list)
    apart_of: dict[int, list[Group]] = field(default_factory=dict)

    def may_be_on(self, vmid: int, node: str) -> bool:
        nodes = self.allowed.get(vmid)
        return nodes is None or node in nodes


def fixed_reason(guest: GuestState, policy: Policy, draining: frozenset[str] = frozenset()) -> str | None:
    """Why the balancer must leave this guest where it is, or None if it may move.

    Cooldown never holds a guest on a node being drained: a guest moved onto a node shortly before the
    node went into maintenance must leave with the others."""
    if guest.template:
        return "template"
    if guest.lock:
        return f"locked ({guest.lock})"
    if any(t.startswith(IGNORE_PREFIX) for t in guest.tags):
        return "plb_ignore tag"
    if guest.vmid in policy.ignore_guests or guest.name in policy.ignore_guests_by_name:
        return "excluded in the config"
    if guest.node in policy.ignore_nodes:
        return f"its node {guest.node} is ignored"
    if guest.type not in policy.balance_types:
        return f"{guest.type.value} not in balance_types"
    if guest.vmid in policy.cooldown and guest.node not in draining:
        return "moved recently (cooldown)"
    if guest.hastate in _HA_BUSY:
        return f"HA state {guest.hastate}"
    if guest.running and guest.type is GuestType.QEMU and guest.local_resources:
        return f"uses local devices ({', '.join(guest.local_resources)})"
    return None


def _sid_vmid(sid: str) -> int | None:
    kind, _, num = sid.partition(":")
    return int(num) if kind in ("vm", "ct") and num.isdigit() else None


def build_constraints(snapshot: ClusterSnapshot, policy: Policy) -> Constraints:
    c = Constraints()
    nodes = {n.name for n in snapshot.nodes}
    known = {g.vmid for g in snapshot.guests}
    draining = frozenset(n.name for n in snapshot.nodes if n.maintenance or n.name in policy.maintenance_nodes)
    for g in snapshot.guests:
        reason = fixed_reason(g, policy, draining)
        if reason is None and g.hastate and snapshot.ha_auto_rebalance and policy.leave_ha_to_crs:
            reason = "Proxmox HA auto-rebalance manages it"
        if reason:
            c.fixed[g.vmid] = reason

    def restrict(vmid: int, allowed: set[str], why: MigrationReason, rule: str) -> None:
        current = c.allowed.get(vmid)
        c.allowed[vmid] = frozenset(allowed if current is None else current & allowed)
        c.allowed_reason.setdefault(vmid, why)
        c.allowed_rule.setdefault(vmid, rule)

    together: dict[str, set[int]] = defaultdict(set)
    apart: dict[str, set[int]] = defaultdict(set)
    for g in snapshot.guests:
        pins = {t[len(PIN_PREFIX):] for t in g.tags if t.startswith(PIN_PREFIX)}
        if pins:
            restrict(g.vmid, pins & nodes, MigrationReason.PIN, "plb_pin tags")
        for t in g.tags:
            if t.startswith(AFFINITY_PREFIX):
                together[f"tag:{t}"].add(g.vmid)
            elif t.startswith(ANTI_AFFINITY_PREFIX):
                apart[f"tag:{t}"].add(g.vmid)
    for pool, rule in policy.pools.items():
        members = set(snapshot.pools.get(pool, [])) & known
        if rule.type == "affinity":
            together[f"pool:{pool}"] |= members
        elif rule.type == "anti-affinity":
            apart[f"pool:{pool}"] |= members
        if rule.pin:
            for vmid in members:
                restrict(vmid, set(rule.pin) & nodes, MigrationReason.PIN, f"pool {pool} pin")
    for r in snapshot.ha_rules:
        if r.disabled:
            continue
        vmids = {v for v in (_sid_vmid(s) for s in r.resources) if v is not None and v in known}
        if r.type == "node-affinity":
            for vmid in vmids:
                restrict(vmid, set(r.nodes) & nodes, MigrationReason.HA_RULE, f"HA rule {r.rule}")
        elif r.affinity == "positive":
            together[f"ha:{r.rule}"] |= vmids
        elif r.affinity == "negative":
            apart[f"ha:{r.rule}"] |= vmids

    c.together = _merge(together)
    c.apart = [Group(name, frozenset(v), _reason(name, MigrationReason.ANTI_AFFINITY))
               for name, v in sorted(apart.items()) if len(v) > 1]
    for group in c.apart:
        for vmid in group.vmids:
            c.apart_of.setdefault(vmid, []).append(group)
    return c


def _reason(name: str, default: MigrationReason) -> MigrationReason:
    return MigrationReason.HA_RULE if name.startswith("ha:") else default


def _merge(groups: dict[str, set[int]]) -> list[Group]:
    """Union groups that share a guest: together-rules are transitive."""
    merged: list[tuple[set[str], set[int]]] = []
    for name, vmids in sorted(groups.items()):
        if len(vmids) < 2:
            continue
        names, members = {name}, set(vmids)
        rest = []
        for other_names, other in merged:
            if other & members:
                names |= other_names
                members |= other
            else:
                rest.append((other_names, other))
        merged = [*rest, (names, members)]
    return [
        Group("+".join(sorted(names)), frozenset(members),
              _reason(min(names), MigrationReason.AFFINITY) if all(n.startswith("ha:") for n in names)
              else MigrationReason.AFFINITY)
        for names, members in merged
    ]
