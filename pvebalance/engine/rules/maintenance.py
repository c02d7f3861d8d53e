"""Maintenance: nodes in HA maintenance or listed in `proxmox_cluster.maintenance_nodes` are emptied.

Running guests must leave; stopped ones leave too when they may (a plan says nothing of those that
cannot). A node being drained takes no guest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from pvebalance.shared.models import ClusterSnapshot, GuestState, MigrationReason

from ..policy import Policy
from .family import Breach, ExactModel, Family, Fix
from .kinds import said

if TYPE_CHECKING:
    from ..state import PlanState
    from .book import Constraints


class Maintenance(Family):
    name = "maintenance"

    def read(self, snapshot: ClusterSnapshot, policy: Policy, book: Constraints) -> bool:
        book.draining = frozenset(n.name for n in snapshot.nodes if n.maintenance or n.name in policy.maintenance_nodes)
        return bool(book.draining)

    def allows(self, state: PlanState, vmids: frozenset[int], target: str) -> bool:
        return target not in state.c.draining

    def fixes(self, state: PlanState) -> Iterator[Fix]:
        leaving = sorted((g for g in state.guests.values() if state.where[g.vmid] in state.c.draining),
                         key=lambda g: (-g.mem, g.vmid))  # the largest first, while the others have most room
        for guest in leaving:
            if guest.vmid in state.moved:  # left with its affinity group
                continue
            node = state.where[guest.vmid]
            unit = state.c.unit(guest.vmid)
            yield Fix(rule=f"maintenance {node}", unit=unit, named=tuple(sorted(unit)),
                      reason=MigrationReason.MAINTENANCE, detail=said(f"leaves {node} (maintenance)"),
                      stuck=state.c.fixed.get(guest.vmid),
                      cannot_move="its affinity group cannot move", required=guest.running)

    def exact(self, book: Constraints, model: ExactModel) -> None:
        """Nothing to add: the model has no column for a draining node, so its guests must leave."""

    def check(self, book: Constraints, where: Mapping[int, str], guests: Mapping[int, GuestState]) -> Iterator[Breach]:
        for vmid, node in sorted(where.items()):
            if node in book.draining:
                yield Breach(f"maintenance {node}", frozenset({vmid}), MigrationReason.MAINTENANCE,
                             f"leaves {node} (maintenance)", f"guest {vmid} still runs on maintenance node {node}",
                             required=guests[vmid].running)
