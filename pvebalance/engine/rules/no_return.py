"""No return: a guest never goes back to a node it left within the last 24 h (A->B->A, and
A->B->C->A), the ping-pong an adaptive cooldown alone does not stop; and within the cooldown, load
does not flow back: after guests moved from A to B, no other guest leaves B or goes to A while the
gap is within the figures' noise (see `_flows_back`). The history is the planner's
(`Policy.history`, from the job store). A guest on a node being drained may go anywhere: leaving
comes first.

Only where a guest may go is restricted: the node it runs on now always stays allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from pvebalance.shared.models import ClusterSnapshot, MigrationReason

from ..load import initial_loads
from ..policy import Policy
from .family import Restriction
from .kinds import NodeRule

if TYPE_CHECKING:
    from ..state import PlanState
    from .book import Constraints


class NoReturn(NodeRule):
    name = "no-return"
    reason = MigrationReason.BALANCE  # never a move's reason: the rule only refuses targets

    def read(self, snapshot: ClusterSnapshot, policy: Policy, book: Constraints) -> bool:
        super().read(snapshot, policy, book)
        on = {g.vmid: g.node for g in snapshot.guests}
        # book.draining: read by the maintenance family, earlier in the registry
        table = {v: r for v, r in book.restrictions[self.name].items() if on[v] not in book.draining}
        nodes = frozenset(n.name for n in snapshot.nodes)
        for vmid, back in _flows_back(snapshot, policy, book).items():
            if (current := table.get(vmid)) is not None:
                table[vmid] = Restriction(current.nodes - back, current.rule)
            else:
                table[vmid] = Restriction(nodes - back, "load against the cooldown's flows")
        book.restrictions[self.name] = table
        return bool(table)

    def restrictions(self, snapshot: ClusterSnapshot, policy: Policy) -> Iterator[tuple[int, Iterable[str], str]]:
        if not policy.history:
            return
        nodes = {n.name for n in snapshot.nodes}
        for g in snapshot.guests:
            left = {m.source for m in policy.recent_moves(g.vmid)} - {g.node}
            if left:
                yield g.vmid, nodes - left, f"left {','.join(sorted(left))} within 24 h"

    def refused(self, state: PlanState, vmid: int, target: str, r: Restriction) -> str:
        if target in {m.source for m in state.policy.recent_moves(vmid)}:
            return f"guest {vmid} left {target} within 24 h: it does not go back (no return)"
        home = state.guests[vmid].node
        return (f"guest {vmid} would move load from {home} to {target} against the moves of the last "
                f"{state.policy.cooldown_minutes:g} min while {home} is not fuller by more than twice balanciness: "
                "within the figures' noise (no return)")


def _flows_back(snapshot: ClusterSnapshot, policy: Policy, book: Constraints) -> dict[int, frozenset[str]]:
    """For each guest that breaks no rule, the nodes it may not go to because the move would send load
    against the flows of the cooldown (`cooldown_minutes`): out of a node that received guests in it,
    or into a node that gave guests in it, while its node is not fuller than the target by more than
    twice `balanciness`.

    Why: the plan that moved guests from A to B left A and B within balanciness of each other (that is
    what it planned for) on figures that had settled. Within the cooldown, a later plan that wants load
    back from B to A, or on from B to a third node, sees a gap that opened since: by the figures' noise
    (the hosts' own memory: page cache, ZFS ARC, KSM, ballooning; the guests' use around its average)
    or by a real change. The operator's balanciness is, by its meaning, above that noise (a tolerance
    below it would have every plan chase noise), so noise alone leaves B at most twice balanciness
    above any other node: a move against the flow while the gap is within that gains nothing the next
    snapshot could tell from noise, and undoes a restart with another. A wider gap is a real change,
    and load may flow back. Moves along the flows (from a node that gave to one that took, or between
    nodes the cooldown's moves left alone) stay open.

    A guest that breaks a rule now (outside its pin or HA nodes, apart from its affinity group, beside
    an anti-affinity partner) is not held: it moves to repair the rule, which is never noise (the 24 h
    no-return above holds it as before)."""
    window = policy.cooldown_minutes * 60
    recent = [m for moves in policy.history.values() for m in moves
              if 0 <= policy.now - m.at < window and m.source != m.target]
    if not recent:
        return {}
    gave, took = {m.source for m in recent}, {m.target for m in recent}
    percent = {name: load.percent for name, load in initial_loads(snapshot, policy).items()}
    repairing = _breaking_a_rule(snapshot, book)
    noise = 2 * policy.balanciness
    back: dict[int, frozenset[str]] = {}
    for g in snapshot.guests:
        if g.vmid in repairing or g.node in book.draining or g.node not in percent:
            continue
        home = g.node
        against = frozenset(n for n, p in percent.items() if n != home and (home in took or n in gave)
                            and percent[home] - p <= noise)
        if against:
            back[g.vmid] = against
    return back


def _breaking_a_rule(snapshot: ClusterSnapshot, book: Constraints) -> set[int]:
    """The guests of every rule the other families read that the snapshot's placement breaks."""
    on = {g.vmid: g.node for g in snapshot.guests}
    breaking = {v for name, table in book.restrictions.items() if name != NoReturn.name
                for v, r in table.items() if on[v] not in r.nodes}
    for groups in book.together.values():
        breaking |= {v for group in groups if len({on[m] for m in group.vmids}) > 1 for v in group.vmids}
    for groups in book.apart.values():
        breaking |= {v for group in groups if len({on[m] for m in group.vmids}) < len(group.vmids)
                     for v in group.vmids}
    return breaking
