"""PVE 9.2 HA node-affinity rules compiled as pve-ha-manager compiles them, and the node groups
its CRM places a resource on (src/PVE/HA/Rules/NodeAffinity.pm, Manager.pm select_service_node,
Helpers.pm get_resource_motion_info).

- A rule PVE's checks reject is dropped, as `PVE::HA::Rules->transform` drops it: a resource in
  two node-affinity rules (both go), a negative rule naming every cluster node, a negative rule
  with a node priority.
- A negative rule ("keep off these nodes") becomes the positive rule of the other cluster nodes,
  all at priority 0 (`invert_negative_node_affinity_rules`).
- A non-strict rule adds every node it does not name at priority -1: the resource may run there,
  but only when none of the named nodes is usable (`plugin_compile`).
- The CRM places a resource on the highest-priority group of its nodes that are online and not
  in maintenance (`get_node_affinity`). With `failback` on (the default, per resource in
  /cluster/ha/resources) it moves a resource back to that group whenever it runs elsewhere, and
  refuses a migration to any node outside it; with failback off it leaves a resource on any node
  the rule allows and refuses only the nodes the rule forbids.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pvebalance.shared.models import GuestState, GuestType, HaRule


@dataclass(frozen=True)
class NodeAffinity:
    """One resource's node affinity as the CRM applies it."""

    rule: str
    strict: bool
    negative: bool
    named: frozenset[str]  # the nodes the rule names (for a negative rule: the nodes kept off)
    priority: Mapping[str, int]  # every node the resource may run on -> its priority


def sid_of(guest: GuestState) -> str:
    """The HA resource id of a guest ("vm:100", "ct:101")."""
    return f"{'vm' if guest.type is GuestType.QEMU else 'ct'}:{guest.vmid}"


def dropped_rules(rules: Iterable[HaRule], cluster_nodes: Iterable[str]) -> dict[str, str]:
    """The node-affinity rules PVE's checks reject, with the first error PVE gives each."""
    total = len(set(cluster_nodes))
    active = [r for r in rules if r.type == "node-affinity" and not r.disabled]
    uses = Counter(sid for r in active for sid in set(r.resources))
    why: dict[str, str] = {}
    for r in active:
        shared = sorted(sid for sid in set(r.resources) if uses[sid] > 1)
        if shared:
            why[r.rule] = f"resource '{shared[0]}' is already used in another node affinity rule"
        elif r.affinity == "negative" and len(r.nodes) >= total:
            why[r.rule] = "negative node affinity rule must not specify all cluster nodes"
        elif r.affinity == "negative" and any(r.nodes.values()):
            why[r.rule] = "negative node affinity rule must not specify node priorities"
    return why


def compile_rules(rules: Iterable[HaRule], cluster_nodes: Iterable[str]) -> dict[str, NodeAffinity]:
    """Each HA resource id a kept node-affinity rule names -> its node affinity."""
    rules = list(rules)
    cluster = sorted(set(cluster_nodes))
    dropped = dropped_rules(rules, cluster)
    out: dict[str, NodeAffinity] = {}
    for r in rules:
        if r.type != "node-affinity" or r.disabled or r.rule in dropped:
            continue
        negative = r.affinity == "negative"
        priority = {n: 0 for n in cluster if n not in r.nodes} if negative else dict(r.nodes)
        if not r.strict:
            priority.update({n: -1 for n in cluster if n not in priority})
        affinity = NodeAffinity(r.rule, r.strict, negative, frozenset(r.nodes), priority)
        for sid in r.resources:
            out[sid] = affinity
    return out


def top_group(affinity: NodeAffinity, usable: Iterable[str]) -> tuple[frozenset[str], int | None]:
    """The highest-priority group of the usable nodes the resource may run on, and its priority
    (empty, None: none of them is usable)."""
    ranked = {n: affinity.priority[n] for n in usable if n in affinity.priority}
    if not ranked:
        return frozenset(), None
    best = max(ranked.values())
    return frozenset(n for n, p in ranked.items() if p == best), best


def allowed(affinity: NodeAffinity, usable: Iterable[str]) -> frozenset[str]:
    """The usable nodes the resource may run on at all."""
    return frozenset(n for n in usable if n in affinity.priority)
