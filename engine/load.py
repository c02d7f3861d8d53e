"""How much of the balanced dimension each node and guest uses, in one unit per dimension.

Units: memory in bytes, CPU in cores, disk in bytes of local storage. A guest's `cpu` is a fraction
of its own vCPUs while a node's is a fraction of all its cores, so both are turned into cores
before they are compared (ProxLB mixes the two).
"""

from __future__ import annotations

from dataclasses import dataclass

from pvebalance.shared.models import ClusterSnapshot, GuestState, NodeState, NodeUsage, UsageSummary

from .policy import Policy


def guest_load(guest: GuestState, policy: Policy, smoothed: bool = True) -> float:
    """The guest's share of the balanced dimension; stopped guests count only in assigned mode.

    In used mode the collector's moving average is used when there is one, so that one spike does
    not trigger migrations; it follows the guest when the guest moves.
    """
    if policy.mode == "used" and not guest.running:
        return 0.0
    if policy.method == "memory":
        if policy.mode == "used":
            return float(guest.mem_avg if smoothed and guest.mem_avg is not None else guest.mem)
        return float(guest.maxmem)
    if policy.method == "cpu":
        if policy.mode == "used":
            return (guest.cpu_avg if smoothed and guest.cpu_avg is not None else guest.cpu) * guest.maxcpu
        return float(guest.maxcpu)
    return float(guest.local_disk)


def node_capacity(node: NodeState, policy: Policy) -> float:
    """What the node offers guests: its size less what the operator reserves for the host."""
    reserve = policy.reserved(node.name)
    if policy.method == "memory":
        return max(float(node.maxmem) - reserve.memory * 2**30, 0.0)
    if policy.method == "cpu":
        return max(float(node.maxcpu) - reserve.cpu, 0.0)
    return max(float(node.local_maxdisk) - reserve.disk * 2**30, 0.0)


def node_measured(node: NodeState, policy: Policy) -> float:
    """What the node itself reports for the dimension (host overhead included), used mode only."""
    if policy.method == "memory":
        return float(node.mem)
    if policy.method == "cpu":
        return node.cpu * node.maxcpu
    return float(node.local_disk)


@dataclass
class NodeLoad:
    """A node's load during planning: a fixed base (host, unmoved guests) plus moved guests."""

    name: str
    capacity: float
    load: float
    mem_used: float  # real memory in use: what the safety limit is checked against
    mem_limit: float
    vcpus: int = 0  # vCPUs assigned to running guests, for the overcommit limit
    vcpu_limit: float = float("inf")

    @property
    def percent(self) -> float:
        return 100.0 * self.load / self.capacity if self.capacity > 0 else 0.0


def initial_loads(snapshot: ClusterSnapshot, policy: Policy) -> dict[str, NodeLoad]:
    by_node: dict[str, list[GuestState]] = {n.name: [] for n in snapshot.nodes}
    for g in snapshot.guests:
        by_node.setdefault(g.node, []).append(g)
    loads = {}
    for node in snapshot.nodes:
        guests_sum = sum(guest_load(g, policy) for g in by_node[node.name])
        if policy.mode == "used":
            # The host's own share: what the node reports beyond its guests' current use.
            current = sum(guest_load(g, policy, smoothed=False) for g in by_node[node.name])
            load = max(node_measured(node, policy) - current, 0.0) + guests_sum
        else:
            load = guests_sum
        running_mem = sum(g.mem for g in by_node[node.name] if g.running)
        usable_mem = max(node.maxmem - policy.reserved(node.name).memory * 2**30, 0.0)
        loads[node.name] = NodeLoad(
            name=node.name,
            capacity=node_capacity(node, policy),
            load=load,
            mem_used=float(max(node.mem, running_mem)),
            mem_limit=usable_mem * policy.max_node_usage / 100.0,
            vcpus=sum(g.maxcpu for g in by_node[node.name] if g.running),
            vcpu_limit=node.maxcpu * policy.cpu_overcommit if policy.cpu_overcommit else float("inf"),
        )
    return loads


def spread(loads: dict[str, NodeLoad], names: list[str]) -> float:
    values = [loads[n].percent for n in names if loads[n].capacity > 0]
    return max(values) - min(values) if len(values) > 1 else 0.0


def summarize(loads: dict[str, NodeLoad], names: list[str]) -> UsageSummary:
    return UsageSummary(
        spread_pp=round(spread(loads, names), 3),
        nodes={
            n.name: NodeUsage(used=n.load, total=n.capacity, percent=round(n.percent, 3))
            for n in loads.values()
        },
    )
