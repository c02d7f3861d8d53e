"""Rejected moves: an operator rejected a plan (`pvebalance reject`), and for planner.reject_hold
the planner does not plan the same moves again: each guest of the rejected plan stays off the target
that plan gave it (`Policy.held`, read by the planner from Redis). Like no-return, the rule only says
where a guest may not go, never moves one, and holds no guest on a node being drained: leaving comes
first. The node a guest runs on always stays allowed.
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


class RejectedMoves(NodeRule):
    name = "rejected"
    reason = MigrationReason.BALANCE  # never a move's reason: the rule only refuses targets

    def read(self, snapshot: ClusterSnapshot, policy: Policy, book: Constraints) -> bool:
        super().read(snapshot, policy, book)
        on = {g.vmid: g.node for g in snapshot.guests}
        # book.draining: read by the maintenance family, earlier in the registry
        table = {v: r for v, r in book.restrictions[self.name].items() if on[v] not in book.draining}
        book.restrictions[self.name] = table
        return bool(table)

    def restrictions(self, snapshot: ClusterSnapshot, policy: Policy) -> Iterator[tuple[int, Iterable[str], str]]:
        if not policy.held:
            return
        nodes = {n.name for n in snapshot.nodes}
        for g in snapshot.guests:
            targets = set(policy.held.get(g.vmid, {})) - {g.node}
            if targets:
                yield g.vmid, nodes - targets, f"rejected move to {','.join(sorted(targets))}"

    def refused(self, state: PlanState, vmid: int, target: str, r: Restriction) -> str:
        why = state.policy.held.get(vmid, {}).get(target, "rejected by an operator")
        return f"guest {vmid} to {target}: that move was {why} (planner.reject_hold)"
