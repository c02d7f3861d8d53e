"""The HA stack as far as migrations meet it (pve-ha-manager, PVE 9): resource affinity and status.

`ha-manager migrate SID NODE` (what a `hamigrate` task runs) asks the HA config for the resource's
motion info (PVE::HA::Config get_resource_motion_info): HA resources in negative affinity with it
that sit on (or are headed for) NODE block the request, and the command dies listing them (the
task ends `command 'ha-manager migrate vm:100 pve2' failed: exit code 255`); resources in positive
affinity are migrated along to NODE by the CRM ("comigrated"). Positive partners of a resource
inherit its negative partners, as the PVE docs describe. Disabled rules and `ignored` resources
do not count. Node-affinity rules are not enforced here.

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
    together, apart = affinity(c, sid_of(g))
    dependent = sorted(s for s in together if s in managed and guest_by_sid(c, s) is not None)
    blocking: Blocking = {}
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
    """What `ha-manager migrate` prints before it dies (PVE::CLI::ha_manager)."""
    lines = [f"cannot migrate resource '{sid}' to node '{target}':", ""]
    lines += [f"- resource '{b['sid']}' on target node '{target}' in negative affinity with resource '{sid}'"
              for b in blocking]
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
