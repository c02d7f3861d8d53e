"""The run-time re-check: the engine's own rule families asked, right before the POST, on fresh reads.

A plan is made on a snapshot; between it and the POST an operator may tag the guest (`plb_ignore...`,
`plb_pin_NODE`, `plb_anti_affinity_NAME`), put it in a pool the config gives a rule, or add an HA rule,
and another guest may arrive on the target. As the Kubernetes descheduler filters each eviction at the
last moment, the pre-flight builds the little of a snapshot the families need from fresh reads and
skips a move a rule now forbids, with that rule's reason. No rule is written twice: the guests the
engine never moves are `fixed_reason`'s, and each family says itself why it refuses a target.

What is read, and why that is enough (the cheapest correct reads):
- the guest's `status/current`, the node entries and the target's guest lists, which the pre-flight
  reads anyway. PVE copies a guest's tags from its config into each of them (vmstatus), so they are
  as fresh as the config.
- `/cluster/ha/rules`: one small file.
- `/pools/POOL` for each pool the config gives a pin or an anti-affinity rule (none unless the config
  has such pools): a guest's pool is in none of the reads above, and a pool's member list says both
  whether the guest is in it and which members run on the target.
A rule refuses a target for the guest's own tags, pool and HA rules, or for a member of one of its
groups that is on the target: where the other members are, elsewhere, never changes the answer. So
the cluster-wide guest list (/cluster/resources?type=vm, megabytes on 10,000 guests) is not read: the
target's lists say who is there. A guest migrating onto the target is listed there only once it has
landed, as it is in /cluster/resources; with `max_parallel_per_target` 1 (the default) this job holds
the target's only slot, so no migration of ours lands there meanwhile.
Together-rules (affinity) refuse no target: a plan moves a group member by member, so each move but
the last parts a member from the rest for a while (family.refusal says so for every family).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from pvebalance.engine import Policy
from pvebalance.engine.rules import build_constraints, fixed_reason
from pvebalance.engine.state import PlanState
from pvebalance.shared.apianswers import DumpError, read_pool_detail
from pvebalance.shared.apidump import parse_ha_rules, parse_tags
from pvebalance.shared.jobs import MigrationJob
from pvebalance.shared.models import ClusterSnapshot, GuestState, GuestType, NodeState
from pvebalance.shared.proxmox import MALFORMED, ProxmoxError

HA_RULES = "/cluster/ha/rules"
NOT_IMPLEMENTED = 501  # PVE before 9 has no HA rules


def pool_paths(policy: Policy) -> list[str]:
    """The pools whose membership can forbid a target: those the config pins or keeps apart."""
    return [f"/pools/{pool}" for pool, rule in sorted(policy.pools.items())
            if rule.pin or rule.type == "anti-affinity"]


def rule_refusal(job: MigrationJob, policy: Policy, guest: Mapping[str, Any], nodes: Iterable[Mapping[str, Any]],
                 target_guests: Iterable[Mapping[str, Any]], ha_rules: Any, pools: Mapping[str, Any]) -> str | None:
    """Why a rule now forbids this move, in the rule's words; None when every rule allows it.

    `guest` is the guest's entry on its source (preflight.as_entry), `nodes` the /cluster/resources node
    entries, `target_guests` the target's /nodes/T/qemu and /lxc entries, `ha_rules` the answer (or the
    ProxmoxError) of /cluster/ha/rules, `pools` each of `pool_paths`' answers (or ProxmoxError)."""
    members = _pools(pools)
    pool_of = {vmid: pool for pool, vmids in members.items() for vmid in vmids}
    moving = _guest(guest, job.vmid, job.guest_type, job.source, job.name, pool_of)
    there = [_guest(g, _vmid(g), _type(g), job.target, None, pool_of) for g in target_guests]
    others = [g for g in there if g.vmid != job.vmid]
    snapshot = ClusterSnapshot(nodes=[_node(n) for n in nodes], guests=[moving, *others],
                               ha_rules=_ha_rules(ha_rules), pools=members)
    book = build_constraints(snapshot, policy)
    # A lock is waited out by the pre-flight (a backup ends), not a reason to give the move up.
    if (why := fixed_reason(moving.model_copy(update={"lock": None}), policy, book.draining)) is not None:
        return f"guest {job.vmid} may not be moved now: {why}"
    state = PlanState(snapshot, policy, book)
    for family in book.families:
        if (why := family.refusal(state, frozenset({job.vmid}), job.target)) is not None:
            return why
    return None


def _malformed(what: str) -> ProxmoxError:
    return ProxmoxError(f"{what}: the answer is not what Proxmox sends", kind=MALFORMED)


def _ha_rules(answer: Any) -> list[Any]:
    if isinstance(answer, ProxmoxError):
        if answer.status == NOT_IMPLEMENTED:
            return []
        raise answer
    try:
        return parse_ha_rules(answer if answer is not None else [])
    except DumpError as exc:
        raise ProxmoxError(str(exc), kind=MALFORMED) from None


def _pools(answers: Mapping[str, Any]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for path, answer in sorted(answers.items()):
        if isinstance(answer, ProxmoxError):
            if answer.status == 500 and "does not exist" in answer.message:
                continue  # the pool is gone: nobody is in it
            raise answer
        try:
            detail = read_pool_detail(answer, path)
        except DumpError as exc:
            raise ProxmoxError(str(exc), kind=MALFORMED) from None
        out[path.removeprefix("/pools/")] = sorted(m.vmid for m in detail.members
                                                   if m.type in ("qemu", "lxc") and m.vmid is not None)
    return out


def _int(value: Any, what: str) -> int:
    try:
        return math.ceil(float(value or 0))
    except (TypeError, ValueError):
        raise _malformed(what) from None


def _vmid(entry: Mapping[str, Any]) -> int:
    vmid = entry.get("vmid")
    if not str(vmid).isdigit():
        raise _malformed(f"guest list entry {str(vmid)[:20]!r}")
    return int(str(vmid))


def _type(entry: Mapping[str, Any]) -> GuestType:
    # /nodes/N/lxc entries say `type: lxc`; /nodes/N/qemu entries say no type
    return GuestType.LXC if entry.get("type") == "lxc" else GuestType.QEMU


def _guest(entry: Mapping[str, Any], vmid: int, gtype: GuestType, node: str, name: str | None,
           pool_of: Mapping[int, str]) -> GuestState:
    what = f"guest {vmid} on {node}"
    return GuestState(vmid=vmid, name=str(entry.get("name") or name or vmid), type=gtype, node=node,
                      status=str(entry.get("status") or "unknown"), template=bool(entry.get("template")),
                      lock=entry.get("lock") or None, tags=parse_tags(entry.get("tags")), pool=pool_of.get(vmid),
                      hastate=entry.get("hastate") or None, maxcpu=max(_int(entry.get("maxcpu", entry.get("cpus")),
                                                                            what), 1),
                      mem=_int(entry.get("mem"), what), maxmem=_int(entry.get("maxmem"), what))


def _node(entry: Mapping[str, Any]) -> NodeState:
    name = entry.get("node")
    if not isinstance(name, str):
        raise _malformed("/cluster/resources: a node entry")
    what = f"/cluster/resources: node {name}"
    return NodeState(name=name, online=entry.get("status") == "online",
                     maintenance=entry.get("hastate") == "maintenance", maxcpu=max(_int(entry.get("maxcpu"), what), 1),
                     mem=_int(entry.get("mem"), what), maxmem=max(_int(entry.get("maxmem"), what), 1))
