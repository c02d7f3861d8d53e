"""A VM of CPU type `host` (config `cpu: host`) runs only on nodes of the CPU model of the node it
runs on (`/nodes/NODE/status` cpuinfo.model): it sees the host's own CPU, and a live migration to
another model can crash it. A node whose model is unknown takes no such VM, and such a VM on a node
whose model is unknown stays where it is.

Only where a guest may go is restricted: the node it runs on now always stays allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pvebalance.shared.models import ClusterSnapshot, GuestType, MigrationReason

from ..policy import Policy
from .kinds import NodeRule

HOST = "host"


class HostCpu(NodeRule):
    name = "host-cpu"
    reason = MigrationReason.BALANCE  # never a move's reason: the rule only refuses targets

    def restrictions(self, snapshot: ClusterSnapshot, policy: Policy) -> Iterator[tuple[int, Iterable[str], str]]:
        model = {n.name: n.cpu_model for n in snapshot.nodes}
        for g in snapshot.guests:
            if g.type is not GuestType.QEMU or (g.cputype or "").casefold() != HOST:
                continue
            mine = model.get(g.node)
            if mine is None:
                yield g.vmid, {g.node}, f"CPU type host, and the CPU model of {g.node} is unknown"
            else:
                yield g.vmid, {n for n, m in model.items() if m == mine} | {g.node}, f"CPU type host on {mine}"
