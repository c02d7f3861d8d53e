"""The HA stack as far as migrations meet it (pve-ha-manager, PVE 9.2): affinity rules and status.

`ha-manager migrate SID NODE` (what a `hamigrate` task runs) asks the HA config for the resource's
motion info (PVE::HA::Helpers get_resource_motion_info): HA resources in negative affinity with it
that sit on (or are headed for) NODE block the request, and so does the resource itself when its
node-affinity rule keeps it off NODE (cause `node-affinity`: NODE is not among the nodes the rule
allows or, with failback on, outside the highest-priority group of them); the command dies listing
the blockers (the task ends `command 'ha-manager migrate vm:100 pve2' failed: exit code 255`).
Resources in positive affinity are migrated along to NODE by the CRM ("comigrated"). Positive
partners of a resource inherit its negative partners, as the PVE docs describe. Disabled rules and
`ignored` resources do not count.

Node-affinity rules are read as PVE compiles them (Rules/NodeAffinity.pm): rules its checks reject
are dropped (a resource in two rules, a negative rule naming every node or giving a priority), a
negative rule becomes the positive rule of the other nodes, and a non-strict rule adds the nodes
it does not name at priority -1. The CRM places a resource on the highest-priority group of its
nodes that are online and not in maintenance (`crm_target`, Manager.pm select_service_node): with
failback on (the default, per resource) it moves a resource back there from anywhere else; with it
off only from a node the rule does not allow.

manager_status is the CRM's own blob (/cluster/ha/status/manager_status), built from the cluster.
"""

from __future__ import annotations

import time
from typing import Any

from .cluster import Cluster, Guest


def sid_of(g: Guest) -> str:
    return f"{'vm' if g.type == 'qemu' else 'ct'}:{g.vmid}"


def _managed(c: Cluster) -> dict[str, dict[str, Any]]:
    return {str(r.get("sid")): r for r in c.ha_resources if r.get("state", "started") != "ignored"}


def _rule_members(rule: dict[str, Any]) -> set[str]:
    return {s.strip() for s in str(rule.get("resources", "")).split(",") if s.strip()}


def affinity(c: Cluster, sid: str) -> tuple[set[str], set[str]]:
    """(together, apart): the HA resources kept with `sid` and those kept away from it."""
    rules = [r for r in c.ha_rules if r.get("type") == "resource-affinity" and not int(r.get("disable") or 0)]
    together = {sid}
    grown = True
    while grown:  # positive rules chain: a partner's partner moves along too
        grown = False
        for r in rules:
            members = _rule_members(r)
            if r.get("affinity") == "positive" and members & together and not members <= together:
                together |= members
                grown = True
    apart: set[str] = set()
    for r in rules:
        members = _rule_members(r)
        if r.get("affinity") == "negative" and members & together:
            apart |= members - together
    together.discard(sid)
    return together, apart


def _flag(value: Any, default: bool) -> bool:
    """PVE's 0/1, as a number or a string."""
    return default if value is None else str(value).strip() not in ("0", "")


def ha_online(c: Cluster) -> list[str]:
    """The nodes the CRM places resources on: online and not in maintenance (NodeStatus 'online')."""
    return [name for name, n in c.nodes.items() if n.online and n.entry.get("hastate") != "maintenance"]


def node_rules(c: Cluster) -> dict[str, dict[str, int]]:
    """Each resource a kept node-affinity rule binds -> every node it may run on, with its priority."""
    cluster = list(c.nodes)
    rules = [r for r in c.ha_rules if r.get("type") == "node-affinity" and not _flag(r.get("disable"), False)]
    named: dict[str, dict[str, int]] = {}
    for r in rules:
        nodes: dict[str, int] = {}
        for item in str(r.get("nodes", "")).split(","):
            node, _, prio = item.strip().partition(":")
            if node:
                nodes[node] = int(prio) if prio.strip().lstrip("-").isdigit() else 0
        named[str(r.get("rule"))] = nodes
    uses: dict[str, int] = {}
    for r in rules:
        for sid in _rule_members(r):
            uses[sid] = uses.get(sid, 0) + 1
    out: dict[str, dict[str, int]] = {}
    for r in rules:
        nodes, negative = named[str(r.get("rule"))], r.get("affinity") == "negative"
        if any(uses[sid] > 1 for sid in _rule_members(r)):
            continue  # "resource '...' is already used in another node affinity rule": both go
        if negative and (len(nodes) >= len(cluster) or any(nodes.values())):
            continue  # a negative rule may neither name every node nor give a priority
        priority = {n: 0 for n in cluster if n not in nodes} if negative else dict(nodes)
        if not _flag(r.get("strict"), False):
            priority.update({n: -1 for n in cluster if n not in priority})
        for sid in _rule_members(r):
            out[sid] = priority
    return out


def node_groups(priority: dict[str, int], usable: list[str]) -> tuple[set[str], set[str]]:
    """(allowed, preferred): the usable nodes the resource may run on, and the highest-priority
    group of them (NodeAffinity.pm get_node_affinity)."""
    allowed = {n: priority[n] for n in usable if n in priority}
    best = max(allowed.values(), default=None)
    return set(allowed), {n for n, p in allowed.items() if p == best}


def failback_on(c: Cluster, sid: str) -> bool:
    entry = next((r for r in c.ha_resources if r.get("sid") == sid), {})
    return _flag(entry.get("failback"), True)


def crm_target(c: Cluster, g: Guest, migrating_to: dict[int, str]) -> tuple[str, str] | None:
    """(node, why) when the CRM moves a started resource that its node-affinity rule binds, as
    select_service_node does with no preference; None when it stays. The best node of the group
    is the one using the least of its memory (the static scheduler's main figure); nodes where a
    resource in negative affinity sits or is headed for are no candidates."""
    sid = sid_of(g)
    rule = node_rules(c).get(sid)
    if rule is None or _managed(c).get(sid, {}).get("state", "started") != "started":
        return None
    allowed, top = node_groups(rule, ha_online(c))
    if not top or g.node in top:
        return None
    failback = failback_on(c, sid)
    if not failback and g.node in allowed:
        return None
    _together, apart = affinity(c, sid)
    taken = {n for s in apart if (o := guest_by_sid(c, s)) is not None
             for n in (o.node, migrating_to.get(o.vmid)) if n}
    ratios = c.mem_ratios()
    candidates = sorted(top - taken, key=lambda n: (ratios.get(n, 0.0), n))
    if not candidates:
        return None
    return candidates[0], ("failback" if g.node in allowed else "node affinity")


def guest_by_sid(c: Cluster, sid: str) -> Guest | None:
    kind, _, vmid = sid.partition(":")
    g = c.guests.get(int(vmid)) if vmid.isdigit() else None
    if g is None or sid_of(g) != sid or kind not in ("vm", "ct"):
        return None
    return g


Blocking = dict[str, list[dict[str, str]]]  # node -> [{"sid": ..., "cause": "resource-affinity"}]


def motion_info(c: Cluster, g: Guest, migrating_to: dict[int, str]) -> tuple[list[str], Blocking]:
    """(dependent resources, blocking resources by node), as get_resource_motion_info returns them."""
    managed = _managed(c)
    sid = sid_of(g)
    together, apart = affinity(c, sid)
    dependent = sorted(s for s in together if s in managed and guest_by_sid(c, s) is not None)
    blocking: Blocking = {}
    rule = node_rules(c).get(sid)
    if rule is not None:
        usable = ha_online(c)
        allowed, top = node_groups(rule, usable)
        failback = failback_on(c, sid)
        for name in usable:
            if name not in allowed or (failback and name not in top):
                blocking.setdefault(name, []).append({"sid": sid, "cause": "node-affinity"})
    for name, node in c.nodes.items():
        if not node.online:
            continue
        for sid in sorted(apart):
            other = guest_by_sid(c, sid)
            if sid not in managed or other is None:
                continue
            if other.node == name or migrating_to.get(other.vmid) == name:
                blocking.setdefault(name, []).append({"sid": sid, "cause": "resource-affinity"})
    return dependent, blocking


def refusal_lines(sid: str, target: str, blocking: list[dict[str, str]]) -> list[str]:
    """What `ha-manager migrate` prints before it dies (PVE::CLI::ha_manager): a line per blocker,
    with the negative-affinity words for a resource-affinity cause only (a node-affinity blocker is
    the resource itself)."""
    lines = [f"cannot migrate resource '{sid}' to node '{target}':", ""]
    for b in blocking:
        words = f" in negative affinity with resource '{sid}'" if b["cause"] == "resource-affinity" else ""
        lines.append(f"- resource '{b['sid']}' on target node '{target}'{words}")
    return lines


def command_failed(sid: str, target: str) -> str:
    return f"command 'ha-manager migrate {sid} {target}' failed: exit code 255"


def manager_status(c: Cluster, migrating_to: dict[int, str]) -> dict[str, Any]:
    """The CRM's manager_status: node and service states as the HA manager keeps them."""
    now = int(time.time())
    first = next(iter(c.nodes), "")
    node_status: dict[str, str] = {}
    node_request: dict[str, Any] = {}
    lrm_status: dict[str, Any] = {}
    for name, n in c.nodes.items():
        state = "unknown" if not n.online else "maintenance" if n.entry.get("hastate") == "maintenance" else "online"
        node_status[name] = state
        if state == "maintenance":
            node_request[name] = {"maintenance": 1}
        mode = "maintenance" if state == "maintenance" else "active"
        lrm_status[name] = {"mode": mode, "state": "maintenance" if state == "maintenance" else "active",
                            "timestamp": now, "results": {}}
    service_status: dict[str, Any] = {}
    for sid in _managed(c):
        g = guest_by_sid(c, sid)
        if g is None:
            continue
        state = g.entry.get("hastate", "started")
        entry: dict[str, Any] = {"node": g.node, "state": state, "uid": f"{g.vmid:x}{g.type}",
                                 "running": int(g.running)}
        if g.vmid in migrating_to:
            entry["target"] = migrating_to[g.vmid]
        service_status[sid] = entry
    return {
        "manager_status": {"master_node": first, "timestamp": now, "node_status": node_status,
                           "node_request": node_request, "service_status": service_status},
        "quorum": {"node": first, "quorate": "1"},
        "lrm_status": lrm_status,
    }
