"""How much of the balanced dimension each node and guest uses, in one unit per dimension.

Units: memory in bytes, CPU in cores, disk in bytes of local storage. A guest's `cpu` is a fraction
of its own vCPUs while a node's is a fraction of all its cores, so both are turned into cores
before they are compared (ProxLB mixes the two). With `method: weighted`, each dimension is taken
as a share of the cluster's total capacity in it, and the shares are added with their weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from pvebalance.shared.config import ResourceReserve
from pvebalance.shared.models import ClusterSnapshot, GuestState, NodeState, NodeUsage, UsageSummary

from .fit import GIB, NodeFigures, snapshot_figures
from .policy import Policy


@dataclass(frozen=True)
class Dimension:
    """How one dimension is read from a guest and a node; a new dimension is one more row below."""

    used: Callable[[GuestState, bool], float]  # a running guest's use now (smoothed: its moving average)
    assigned: Callable[[GuestState], float]  # what the guest is given (maxmem, vCPUs, disk sizes)
    capacity: Callable[[NodeState, ResourceReserve], float]  # the node's size less the host's reserve
    measured: Callable[[NodeState], float]  # what the node itself reports in use, host overhead included


def _avg(value: float, average: float | None, smoothed: bool) -> float:
    return average if smoothed and average is not None else value


DIMENSIONS: dict[str, Dimension] = {
    "memory": Dimension(
        used=lambda g, smoothed: float(_avg(g.mem, g.mem_avg, smoothed)),
        assigned=lambda g: float(g.maxmem),
        capacity=lambda n, reserve: max(float(n.maxmem) - reserve.memory * GIB, 0.0),
        measured=lambda n: float(n.mem),
    ),
    "cpu": Dimension(  # a guest's cpu is a fraction of its own vCPUs, a node's of all its cores: both to cores
        used=lambda g, smoothed: _avg(g.cpu, g.cpu_avg, smoothed) * g.maxcpu,
        assigned=lambda g: float(g.maxcpu),
        capacity=lambda n, reserve: max(float(n.maxcpu) - reserve.cpu, 0.0),
        measured=lambda n: n.cpu * n.maxcpu,
    ),
    "disk": Dimension(  # local disks take the same room whether the guest runs or not
        used=lambda g, smoothed: float(g.local_disk),
        assigned=lambda g: float(g.local_disk),
        capacity=lambda n, reserve: max(float(n.local_maxdisk) - reserve.disk * GIB, 0.0),
        measured=lambda n: float(n.local_disk),
    ),
}


def _guest_raw(guest: GuestState, policy: Policy, dim: str, smoothed: bool) -> float:
    d = DIMENSIONS[dim]
    return d.used(guest, smoothed) if policy.mode == "used" else d.assigned(guest)


def _capacity_raw(node: NodeState, policy: Policy, dim: str) -> float:
    return DIMENSIONS[dim].capacity(node, policy.reserved(node.name))


def _measured_raw(node: NodeState, dim: str) -> float:
    return DIMENSIONS[dim].measured(node)


def _blend(policy: Policy, raw: Callable[[str], float]) -> float:
    """One dimension as is; several as the weighted sum of their shares of the whole cluster."""
    if policy.method != "weighted":
        return raw(policy.method)
    # sorted: the same weights given in another order must add up to the very same float
    return sum(w * raw(dim) / policy.scale[dim] for dim, w in sorted(policy.weights.items())
               if w > 0 and policy.scale.get(dim))


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
    figures: NodeFigures  # real memory and vCPUs in use: what `fit.fits` checks a move against

    @property
    def percent(self) -> float:
        return 100.0 * self.load / self.capacity if self.capacity > 0 else 0.0


def initial_loads(snapshot: ClusterSnapshot, policy: Policy) -> dict[str, NodeLoad]:
    if policy.method == "weighted" and not policy.scale:
        policy = with_cluster_scale(policy, snapshot)
    by_node: dict[str, list[GuestState]] = {n.name: [] for n in snapshot.nodes}
    for g in snapshot.guests:
        by_node.setdefault(g.node, []).append(g)
    figures = snapshot_figures(snapshot)
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
        loads[node.name] = NodeLoad(node.name, node_capacity(node, policy), load, figures[node.name])
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
