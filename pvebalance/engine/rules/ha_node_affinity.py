"""PVE 9.2 HA node-affinity rules, as the HA manager applies them (see ha_nodes.py).

Each guest a rule binds gets the nodes it may end on:
- the nodes it may move to: the highest-priority group of its rule's nodes among the usable ones
  (online, not in maintenance, not ignored, not drained). A strict rule never lets it go
  elsewhere; a non-strict one ("should not" for a negative rule) lets it go to the nodes the rule
  does not name only when none of the named ones is usable. With failback on, a group below
  PVE's own top group (online, not in HA maintenance: PVE knows nothing of the balancer's ignored
  or drained nodes) is no destination at all: PVE would move the guest back.
- the node it runs on, as long as PVE leaves it there: with failback on, only inside PVE's top
  group (outside, PVE moves it back: the plan moves it there itself, reason ha-rule); with
  failback off, on any node the rule allows. A stopped guest stays where it is (the CRM places a
  service when it starts), and so does one PVE has no node for.

A guest that must move (its node is drained, or PVE would move it back) but has no destination
with room is reported in the plan's `unmet`, with the rule: the plan never puts it on a node the
rule keeps it off, even a "should not" one, since PVE would undo the move.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pvebalance.shared.models import ClusterSnapshot, GuestState, MigrationReason

from ..policy import Policy
from .family import Breach, Fix, Restriction
from .ha_nodes import NodeAffinity, allowed, compile_rules, sid_of, top_group
from .kinds import NodeRule, said

if TYPE_CHECKING:
    from ..state import PlanState
    from .book import Constraints


def sid_vmid(sid: str) -> int | None:
    """The vmid of an HA resource id ("vm:100", "ct:101")."""
    kind, _, num = sid.partition(":")
    return int(num) if kind in ("vm", "ct") and num.isdigit() else None


def _names(nodes: Iterable[str]) -> str:
    return ",".join(sorted(nodes)) or "no node in the cluster"


@dataclass(frozen=True)
class HaRestriction(Restriction):
    """A guest's nodes under its HA rule, with what the plan says of them."""

    affinity: NodeAffinity | None = None
    destinations: frozenset[str] = frozenset()  # where it may move to
    failback: bool = True
    pve_top: frozenset[str] = frozenset()  # where PVE's CRM puts it


class HaNodeAffinity(NodeRule):
    name = "ha-node-affinity"
    reason = MigrationReason.HA_RULE

    def restrictions(self, snapshot: ClusterSnapshot, policy: Policy) -> Iterator[tuple[int, Iterable[str], str]]:
        """Unused: `read` builds the restrictions itself, from the rules compiled as PVE does."""
        return iter(())

    def read(self, snapshot: ClusterSnapshot, policy: Policy, book: Constraints) -> bool:
        compiled = compile_rules(snapshot.ha_rules, (n.name for n in snapshot.nodes))
        if not compiled:
            book.restrictions[self.name] = {}
            return False
        pve_usable = [n.name for n in snapshot.nodes if n.online and not n.maintenance]
        # book.draining: read by the maintenance family, earlier in the registry
        ours = [n.name for n in snapshot.nodes if n.online and n.usable and n.name not in book.draining
                and n.name not in policy.ignore_nodes]
        failback_off = frozenset(snapshot.ha_failback_off)
        table: dict[int, Restriction] = {}
        for g in snapshot.guests:
            affinity = compiled.get(sid_of(g))
            if affinity is None or g.hastate == "ignored":  # an ignored resource is not the CRM's
                continue
            failback = g.vmid not in failback_off
            pve_top, pve_best = top_group(affinity, pve_usable)
            our_top, our_best = top_group(affinity, ours)
            destinations = our_top if not failback or our_best == pve_best else frozenset()
            if not g.running or not pve_top:
                stays = True
            else:
                stays = g.node in (pve_top if failback else allowed(affinity, pve_usable))
            table[g.vmid] = HaRestriction(destinations | ({g.node} if stays else frozenset()),
                                          f"HA rule {affinity.rule}", affinity, destinations, failback, pve_top)
        book.restrictions[self.name] = table
        return bool(table)

    def refused(self, state: PlanState, vmid: int, target: str, r: Restriction) -> str:
        if not isinstance(r, HaRestriction) or r.affinity is None:
            return super().refused(state, vmid, target, r)
        a = r.affinity
        if a.negative and target in a.named:
            if a.strict:
                return f"guest {vmid} must not run on {target} ({r.rule}, strict)"
            return (f"guest {vmid} should not run on {target} ({r.rule}): "
                    f"{_names(r.destinations)} may take it")
        if not r.destinations:
            return f"guest {vmid} has no node to move to ({r.rule}): its highest-priority nodes are not usable"
        if target not in a.priority:  # a strict positive rule does not name it
            return f"guest {vmid} may run only on {_names(a.named)} ({r.rule})"
        if target in a.named:  # named, in a lower priority group
            back = "; PVE would move it back" if r.failback else ""
            lower = f"{target} has a lower priority{back}"
            return f"guest {vmid} may run only on {_names(r.destinations)} ({r.rule}: {lower})"
        return f"guest {vmid} may run only on {_names(r.destinations)} ({r.rule})"

    def fixes(self, state: PlanState) -> Iterator[Fix]:
        for vmid, r in sorted(state.c.restrictions[self.name].items()):
            if state.where[vmid] in r.nodes or vmid in state.moved or not isinstance(r, HaRestriction):
                continue
            where = _names(r.destinations)
            stuck = None
            if not r.destinations:  # its top group is PVE's but not the balancer's (ignored, drained)
                those = "that node" if len(r.pve_top) == 1 else "those nodes"
                stuck = f"PVE moves it to {_names(r.pve_top)} itself (failback): the balancer may not use {those}"
            yield Fix(rule=r.rule, unit=state.c.unit(vmid), named=(vmid,), reason=self.reason,
                      detail=said(_why(r, state.where[vmid])),
                      cannot_move=f"must move to {where} but cannot move: {state.c.fixed.get(vmid, 'group')}",
                      no_room=f"must move to {where}: none may take it now", stuck=stuck)

    def check(self, book: Constraints, where: Mapping[int, str], guests: Mapping[int, GuestState]) -> Iterator[Breach]:
        for vmid, r in sorted(book.restrictions[self.name].items()):
            if where[vmid] not in r.nodes:
                yield Breach(r.rule, frozenset({vmid}), self.reason, _why(r, guests[vmid].node),
                             f"guest {vmid} ends on {where[vmid]}, outside {sorted(r.nodes)} ({r.rule})")


def _why(r: Restriction, node: str) -> str:
    """Why a guest on `node` moves: the detail of the move that repairs its rule."""
    if not isinstance(r, HaRestriction) or r.affinity is None:
        return f"{r.rule}: may run only on {_names(r.nodes)}"
    a = r.affinity
    if a.negative and node in a.named:
        return f"{r.rule}: {'must' if a.strict else 'should'} not run on {_names(a.named)}"
    if node in a.priority and r.failback and node not in r.pve_top:
        return f"{r.rule}: back to its highest-priority nodes {_names(r.destinations)} (failback)"
    return f"{r.rule}: may run only on {_names(r.destinations)}"
