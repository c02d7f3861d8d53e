"""How much of the balanced dimension each node and guest uses, in one unit per dimension.

Units: memory in bytes, CPU in cores, disk in bytes of local storage. A guest's `cpu` is a fraction
of its own vCPUs while a node's is a fraction of all its cores, so both are turned into cores
before they are compared (ProxLB mixes the two). With `method: weighted`, each dimension is taken
as a share of the cluster's total capacity in it, and the shares are added with their weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from pvebalance.shared.models import ClusterSnapshot, GuestState, NodeState, NodeUsage, UsageSummary

from .policy import Policy


def _guest_raw(guest: GuestState, policy: Policy, dim: str, smoothed: bool) -> float:
    if dim == "memory":
        if policy.mode == "used":
            return float(guest.mem_avg if smoothed and guest.mem_avg is not None else guest.mem)
        return float(guest.maxmem)
    if dim == "cpu":
        if policy.mode == "used":
            return (guest.cpu_avg if smoothed and guest.cpu_avg is not None else guest.cpu) * guest.maxcpu
        return float(guest.maxcpu)
    return float(guest.local_disk)


def _capacity_raw(node: NodeState, policy: Policy, dim: str) -> float:
    reserve = policy.reserved(node.name)
    if dim == "memory":
        return max(float(node.maxmem) - reserve.memory * 2**30, 0.0)
    if dim == "cpu":
        return max(float(node.maxcpu) - reserve.cpu, 0.0)
    return max(float(node.local_maxdisk) - reserve.disk * 2**30, 0.0)


def _measured_raw(node: NodeState, dim: str) -> float:
    if dim == "memory":
        return float(node.mem)
    if dim == "cpu":
        return node.cpu * node.maxcpu
    return float(node.local_disk)


def _blend(policy: Policy, raw: Callable[[str], float]) -> float:
    """One dimension as is; several as the weighted sum of their shares of the whole cluster."""
    if policy.method != "weighted":
        return raw(policy.method)
    return sum(w * raw(dim) / policy.scale[dim] for dim, w in policy.weights.items() if w > 0 and policy.scale.get(dim))


def with_cluster_scale(policy: Policy, snapshot: ClusterSnapshot) -> Policy:
    """For weighted balancing: each dimension's cluster-wide capacity, so shares can be added up."""
    if policy.method != "weighted":
        return policy
    scale = {dim: sum(_capacity_raw(n, policy, dim) for n in snapshot.nodes if n.online and n.usable) / 100.0
             for dim in policy.weights}
    return replace(policy, scale=scale)


def guest_load(guest: GuestState, policy: Policy, smoothed: bool = True) -> float:
    """The guest's share of the balanced dimension(s); stopped guests count only in assigned mode.

    In used mode the collector's moving average is used when there is one, so that one spike does
    not trigger migrations; it follows the guest when the guest moves.
    """
    if policy.mode == "used" and not guest.running:
        return 0.0
    return _blend(policy, lambda dim: _guest_raw(guest, policy, dim, smoothed))


def node_capacity(node: NodeState, policy: Policy) -> float:
    """What the node offers guests: its size less what the operator reserves for the host."""
    return _blend(policy, lambda dim: _capacity_raw(node, policy, dim))


def node_measured(node: NodeState, policy: Policy) -> float:
    """What the node itself reports (host overhead included), used mode only."""
    return _blend(policy, lambda dim: _measured_raw(node, dim))


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
    if policy.method == "weighted" and not policy.scale:
        policy = with_cluster_scale(policy, snapshot)
    by_node: dict[str, list[GuestState]] = {n.name: [] for n in snapshot.nodes}
    for g in snapshot.guests:
        by_node.setdefault(g.node, []).append(g)
    loads = {}
    for node in snapshot.nodes:
        if not node.usable:
            continue  # its figures mean nothing: no load, no percentage, not in any summary
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
