"""How much of each balanced dimension each node and guest uses, in one unit per dimension.

`DIMENSIONS` is the one list of what can be balanced: the settings (`balancing.method`,
`balanciness`, `threshold`), the policy, the API's usage view, the page, the plan table, /metrics
and the tests read the names from it. A new dimension is one more row here.

Units: memory in bytes, CPU in cores, disk in bytes of local storage. A guest's `cpu` is a fraction
of its own vCPUs while a node's is a fraction of all its cores, so both are turned into cores
before they are compared (ProxLB mixes the two).

A plan may balance several dimensions at once (`Policy.dimensions`): loads are then vectors, one
entry per balanced dimension in the policy's order; the first is the one a single figure stands for
(a plan's `spread_pp`, a move's `spread_after_pp`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pvebalance.shared.config import ResourceReserve
from pvebalance.shared.models import (
    ClusterSnapshot,
    DimensionUsage,
    GuestState,
    NodeState,
    NodeUsage,
    UsageSummary,
)

from .fit import GIB, NodeFigures, snapshot_figures
from .policy import Policy

Vector = tuple[float, ...]  # one figure per balanced dimension, in the policy's order


@dataclass(frozen=True)
class Dimension:
    """How one dimension is read from a guest and a node; a new dimension is one more row below."""

    used: Callable[[GuestState, bool], float]  # a running guest's use now (smoothed: its moving average)
    assigned: Callable[[GuestState], float]  # what the guest is given (maxmem, vCPUs, disk sizes)
    capacity: Callable[[NodeState, ResourceReserve], float]  # the node's size less the host's reserve
    measured: Callable[[NodeState], float]  # what the node itself reports in use, host overhead included
    meaning: dict[str, str]  # mode -> what a node's percentage says (the plan table's title)
    offered: str  # why a cluster may offer none of it, in words (planned_dimensions.offered's note)


def _avg(value: float, average: float | None, smoothed: bool) -> float:
    return average if smoothed and average is not None else value


DIMENSIONS: dict[str, Dimension] = {
    "memory": Dimension(
        used=lambda g, smoothed: float(_avg(g.mem, g.mem_avg, smoothed)),
        assigned=lambda g: float(g.maxmem),
        capacity=lambda n, reserve: max(float(n.maxmem) - reserve.memory * GIB, 0.0),
        measured=lambda n: float(n.mem),
        meaning={"used": "% of each node's memory in use",
                 "assigned": "% of each node's memory given to guests; over 100 % = overcommitted"},
        offered="no node reports its memory",
    ),
    "cpu": Dimension(  # a guest's cpu is a fraction of its own vCPUs, a node's of all its cores: both to cores
        used=lambda g, smoothed: _avg(g.cpu, g.cpu_avg, smoothed) * g.maxcpu,
        assigned=lambda g: float(g.maxcpu),
        capacity=lambda n, reserve: max(float(n.maxcpu) - reserve.cpu, 0.0),
        measured=lambda n: n.cpu * n.maxcpu,
        meaning={"used": "% of each node's cores in use; over 100 % = overcommitted",
                 "assigned": "vCPUs given to guests per node core, in %; over 100 % = overcommitted"},
        offered="no node reports its cores",
    ),
    "disk": Dimension(  # local disks take the same room whether the guest runs or not
        used=lambda g, smoothed: float(g.local_disk),
        assigned=lambda g: float(g.local_disk),
        capacity=lambda n, reserve: max(float(n.local_maxdisk) - reserve.disk * GIB, 0.0),
        measured=lambda n: float(n.local_disk),
        # a guest's disks count at their full size (or what the storage reports, if more): thin
        # volumes can promise a storage more than it holds
        meaning=dict.fromkeys(("used", "assigned"),
                              "% of each node's local storage in guest disks; over 100 % = thin-provisioned"),
        offered="no node has a local storage for guest disks: they are all on shared storage",
    ),
}


def guest_load(guest: GuestState, policy: Policy, smoothed: bool = True) -> Vector:
    """The guest's use of each balanced dimension; stopped guests count only in assigned mode.

    In used mode the collector's moving average is used when there is one, so that one spike does
    not trigger migrations; it follows the guest when the guest moves.
    """
    if policy.mode == "used":
        if not guest.running:
            return (0.0,) * len(policy.dimensions)
        return tuple(DIMENSIONS[d].used(guest, smoothed) for d in policy.dimensions)
    return tuple(DIMENSIONS[d].assigned(guest) for d in policy.dimensions)


def node_capacity(node: NodeState, policy: Policy) -> Vector:
    """What the node offers guests in each dimension: its size less what the operator reserves for the host."""
    reserve = policy.reserved(node.name)
    return tuple(DIMENSIONS[d].capacity(node, reserve) for d in policy.dimensions)


def node_measured(node: NodeState, policy: Policy) -> Vector:
    """What the node itself reports in each dimension (host overhead included), used mode only."""
    return tuple(DIMENSIONS[d].measured(node) for d in policy.dimensions)


@dataclass
class NodeLoad:
    """A node's load during planning, per balanced dimension: a fixed base (host, unmoved guests)
    plus moved guests."""

    name: str
    capacity: Vector
    load: list[float]
    figures: NodeFigures  # real memory and vCPUs in use: what `fit.fits` checks a move against

    def percent_in(self, i: int) -> float:
        """Percent of what the node offers in the policy's i-th dimension."""
        return 100.0 * self.load[i] / self.capacity[i] if self.capacity[i] > 0 else 0.0

    @property
    def percent(self) -> float:
        """The first dimension's percent: the figure a plan's `spread_pp` is made of."""
        return self.percent_in(0)

    @property
    def percents(self) -> Vector:
        return tuple(self.percent_in(i) for i in range(len(self.capacity)))

    def add(self, amount: Iterable[float], sign: float = 1.0) -> None:
        for i, value in enumerate(amount):
            self.load[i] += sign * value


def initial_loads(snapshot: ClusterSnapshot, policy: Policy,
                  guest_loads: Mapping[int, Vector] | None = None) -> dict[str, NodeLoad]:
    """Each usable node's load and capacity. `guest_loads`: each guest's `guest_load`, where the
    caller has them already (PlanState: 10,000 guests are a few hundredths of a second each time)."""
    by_node: dict[str, list[GuestState]] = {n.name: [] for n in snapshot.nodes}
    for g in snapshot.guests:
        by_node.setdefault(g.node, []).append(g)
    figures = snapshot_figures(snapshot)
    count = len(policy.dimensions)
    loads = {}
    for node in snapshot.nodes:
        if not node.usable:
            continue  # its figures mean nothing: no load, no percentage, not in any summary
        guests_sum = [0.0] * count
        current = [0.0] * count
        for g in by_node[node.name]:
            for i, value in enumerate(guest_load(g, policy) if guest_loads is None else guest_loads[g.vmid]):
                guests_sum[i] += value
            if policy.mode == "used":
                for i, value in enumerate(guest_load(g, policy, smoothed=False)):
                    current[i] += value
        if policy.mode == "used":
            # The host's own share: what the node reports beyond its guests' current use.
            measured = node_measured(node, policy)
            load = [max(measured[i] - current[i], 0.0) + guests_sum[i] for i in range(count)]
        else:
            load = guests_sum
        loads[node.name] = NodeLoad(node.name, node_capacity(node, policy), load, figures[node.name])
    return loads


def spread_in(loads: dict[str, NodeLoad], names: Iterable[str], i: int) -> float:
    """The spread (highest less lowest percentage) of the i-th dimension over the named nodes."""
    values = [loads[n].percent_in(i) for n in names if loads[n].capacity[i] > 0]
    return max(values) - min(values) if len(values) > 1 else 0.0


def spread(loads: dict[str, NodeLoad], names: list[str]) -> float:
    """The first dimension's spread."""
    return spread_in(loads, names, 0)


def spreads(loads: dict[str, NodeLoad], names: list[str], count: int) -> Vector:
    return tuple(spread_in(loads, names, i) for i in range(count))


def summarize(loads: dict[str, NodeLoad], names: list[str], dimensions: tuple[str, ...] = ("memory",)) -> UsageSummary:
    """Each node's usage and the spread, per dimension (`dimensions`: the names of the loads'
    entries, in order); `spread_pp` and `nodes` are the first dimension's."""
    per = {
        dim: DimensionUsage(
            spread_pp=round(spread_in(loads, names, i), 3),
            nodes={n.name: NodeUsage(used=n.load[i], total=n.capacity[i], percent=round(n.percent_in(i), 3))
                   for n in loads.values()},
        )
        for i, dim in enumerate(dimensions)
    }
    first = per[dimensions[0]]
    return UsageSummary(spread_pp=first.spread_pp, nodes=first.nodes, dimensions=per)
