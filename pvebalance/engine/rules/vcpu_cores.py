"""A VM never goes to a node with fewer cores than its vCPUs: PVE refuses to start it there
("MAX n vcpus allowed per VM on this node"; ProxLB #340).

Only where a guest may go is restricted: the node it runs on now always stays allowed, so the rule
never moves a guest by itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from pvebalance.shared.models import ClusterSnapshot, GuestState, GuestType, MigrationReason

from ..policy import Policy
from .family import Restriction
from .kinds import NodeRule

if TYPE_CHECKING:
    from ..state import PlanState


def vcpus_of(guest: GuestState) -> int:
    """A VM's vCPUs: sockets x cores of its config, or, without a config, what /cluster/resources says."""
    return guest.vcpus if guest.vcpus is not None else guest.maxcpu


class VcpuCores(NodeRule):
    name = "vcpu-cores"
    reason = MigrationReason.BALANCE  # never a move's reason: the rule only refuses targets

    def restrictions(self, snapshot: ClusterSnapshot, policy: Policy) -> Iterator[tuple[int, Iterable[str], str]]:
        smallest = min((n.maxcpu for n in snapshot.nodes), default=0)
        for g in snapshot.guests:
            vcpus = vcpus_of(g)
            if g.type is GuestType.QEMU and vcpus > smallest:
                yield g.vmid, {n.name for n in snapshot.nodes if n.maxcpu >= vcpus} | {g.node}, f"{vcpus} vCPUs"

    def refused(self, state: PlanState, vmid: int, target: str, r: Restriction) -> str:
        cores = state.loads[target].figures.maxcpu if target in state.loads else 0
        return f"{target} has {cores} cores, fewer than the {vcpus_of(state.guests[vmid])} vCPUs of guest {vmid}"
