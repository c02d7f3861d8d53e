"""No return: a guest never goes back to a node it left within the last 24 h (A->B->A, and
A->B->C->A), the ping-pong an adaptive cooldown alone does not stop. The history is the planner's
(`Policy.history`, from the job store). A guest on a node being drained may go anywhere: leaving
comes first.

Only where a guest may go is restricted: the node it runs on now always stays allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from pvebalance.shared.models import ClusterSnapshot, MigrationReason

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
        return f"guest {vmid} left {target} within 24 h: it does not go back (no return)"
