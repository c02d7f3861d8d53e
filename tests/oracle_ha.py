"""An independent judge of a plan against PVE 9.2's HA node-affinity rules.

It reads the raw API answers of a pve-api-dump/1 file (/cluster/ha/rules, /cluster/ha/resources,
/cluster/resources) with nothing of pvebalance's (no parser, no model, no engine code), and applies
the rules as pve-ha-manager does (Rules/NodeAffinity.pm, Manager.pm select_service_node):

- rules PVE rejects are dropped: a resource in two node-affinity rules (both), a negative rule
  naming every cluster node, a negative rule with a priority; disabled rules do not count;
- a negative rule is the positive rule of the other cluster nodes, priority 0;
- a non-strict rule lets the resource run on the nodes it does not name, at priority -1;
- a resource belongs on the highest-priority group of its nodes that are online and not in HA
  maintenance; a resource whose HA state is `ignored` is no rule's.

A plan's step breaks a rule when it moves a guest onto a node outside that group: PVE refuses a
strict rule's forbidden nodes, and with failback (the default) moves the guest back from any node
outside the group; a "should not" node (non-strict) is taken only when no other node is usable.
A plan ends breaking a rule when a running guest stays outside that group while PVE would move it
(failback on), or on a node a strict rule forbids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Step = tuple[int, str, str]  # (vmid, source, target), in the plan's order


def _flag(value: Any, default: bool) -> bool:
    """PVE's 0/1 (a number or a string); missing: the default."""
    if value is None:
        return default
    return str(value).strip() not in ("0", "", "false")


def _split(text: Any) -> list[str]:
    return [part.strip() for part in str(text or "").split(",") if part.strip()]


@dataclass(frozen=True)
class _Rule:
    name: str
    strict: bool
    negative: bool
    named: dict[str, int]  # node -> priority, as written
    sids: list[str]


@dataclass(frozen=True)
class Bound:
    """One guest's rule, compiled: every node it may run on, with its priority."""

    rule: str
    strict: bool
    negative: bool
    named: frozenset[str]
    priority: dict[str, int]
    failback: bool

    def best(self, usable: Iterable[str]) -> set[str]:
        ranked = {n: self.priority[n] for n in usable if n in self.priority}
        top = max(ranked.values(), default=None)
        return {n for n, p in ranked.items() if p == top}


def _rules(raw: Any) -> list[_Rule]:
    out = []
    for entry in raw or []:
        if entry.get("type") != "node-affinity" or _flag(entry.get("disable"), False):
            continue
        named: dict[str, int] = {}
        for item in _split(entry.get("nodes")):
            node, _, prio = item.partition(":")
            named[node] = int(prio) if prio else 0
        out.append(_Rule(str(entry["rule"]), _flag(entry.get("strict"), False),
                         entry.get("affinity", "positive") == "negative", named, _split(entry.get("resources"))))
    return out


def bound_guests(api: Mapping[str, Any]) -> dict[int, Bound]:
    """vmid -> its node-affinity rule as PVE applies it, for every guest a valid rule binds."""
    resources = api["/cluster/resources"]
    cluster = sorted({str(e["node"]) for e in resources if e.get("type") == "node"})
    config = {str(e["sid"]): e for e in api.get("/cluster/ha/resources") or []}
    rules = _rules(api.get("/cluster/ha/rules"))
    count: dict[str, int] = {}
    for r in rules:
        for sid in set(r.sids):
            count[sid] = count.get(sid, 0) + 1
    guests = {f"{'vm' if e['type'] == 'qemu' else 'ct'}:{int(e['vmid'])}": int(e["vmid"])
              for e in resources if e.get("type") in ("qemu", "lxc")}
    out: dict[int, Bound] = {}
    for r in rules:
        if any(count[sid] > 1 for sid in r.sids):
            continue  # "resource ... is already used in another node affinity rule": both rules go
        if r.negative and (len(r.named) >= len(cluster) or any(r.named.values())):
            continue  # negative rules may neither name every node nor give priorities
        priority = {n: 0 for n in cluster if n not in r.named} if r.negative else dict(r.named)
        if not r.strict:
            for n in cluster:
                priority.setdefault(n, -1)
        for sid in r.sids:
            if sid not in guests or config.get(sid, {}).get("state") == "ignored":
                continue
            failback = _flag(config.get(sid, {}).get("failback"), True)
            out[guests[sid]] = Bound(r.name, r.strict, r.negative, frozenset(r.named), priority, failback)
    return out


def usable_nodes(api: Mapping[str, Any]) -> set[str]:
    """Nodes the HA manager places resources on: online, not in HA maintenance."""
    return {str(e["node"]) for e in api["/cluster/resources"]
            if e.get("type") == "node" and e.get("status") == "online" and e.get("hastate") != "maintenance"}


def step_breaches(api: Mapping[str, Any], migrations: Sequence[Step]) -> list[str]:
    """Every step of the plan that puts a guest where its node-affinity rule does not let it go."""
    bound = bound_guests(api)
    usable = usable_nodes(api)
    where = {int(e["vmid"]): str(e["node"]) for e in api["/cluster/resources"] if e.get("type") in ("qemu", "lxc")}
    out = []
    for i, (vmid, source, target) in enumerate(migrations):
        if where.get(vmid) != source:
            out.append(f"step {i}: guest {vmid} is on {where.get(vmid)}, not {source}")
        where[vmid] = target
        rule = bound.get(vmid)
        if rule is None or target in rule.best(usable):
            continue
        best = sorted(rule.best(usable))
        if target not in rule.priority:
            why = f"a strict {'negative rule keeps it off' if rule.negative else 'rule does not list'} {target}"
        elif rule.negative and target in rule.named:
            why = f"a non-strict negative rule keeps it off {target} while {best} are usable"
        else:
            why = f"{target} is outside its highest-priority usable nodes {best}"
        out.append(f"step {i}: guest {vmid} {source}->{target}: HA rule {rule.rule}: {why}")
    return out


def end_breaches(api: Mapping[str, Any], migrations: Sequence[Step]) -> dict[int, str]:
    """Running guests a plan leaves where PVE would move them: outside their rule's highest-priority
    usable nodes with failback on, or on a node a strict rule forbids."""
    bound = bound_guests(api)
    usable = usable_nodes(api)
    running = {int(e["vmid"]) for e in api["/cluster/resources"]
               if e.get("type") in ("qemu", "lxc") and e.get("status") == "running"}
    where = {int(e["vmid"]): str(e["node"]) for e in api["/cluster/resources"] if e.get("type") in ("qemu", "lxc")}
    for vmid, _source, target in migrations:
        where[vmid] = target
    out = {}
    for vmid, rule in sorted(bound.items()):
        best = rule.best(usable)
        if vmid not in running or not best:
            continue
        if rule.failback and where[vmid] not in best:
            out[vmid] = f"guest {vmid} ends on {where[vmid]}, outside {sorted(best)} (HA rule {rule.rule}, failback)"
        elif where[vmid] not in rule.priority:
            out[vmid] = f"guest {vmid} ends on {where[vmid]}, which HA rule {rule.rule} forbids"
    return out
