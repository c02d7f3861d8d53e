"""The cluster as a plan is being built: where each guest is, each node's load, the moves so far.

Every move goes through `move`, after `allows` and `fits` said yes at that very step, so the
sequence of moves is a safe order by construction: no node passes its memory limit at any point.

Loads are vectors, one entry per balanced dimension (load.py); "balanced" means every dimension's
spread is within its own band (`Policy.band`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace

from pvebalance.shared.models import ClusterSnapshot, GuestState, MigrationReason

from . import fit
from .load import NodeLoad, Vector, guest_load, initial_loads, spread_in
from .policy import Policy
from .rules import Constraints

BAND_TOLERANCE = 1e-6  # pp


def band_width(band: float) -> float:
    """A band as the unit that excess above it is measured in: at least 1 pp, since `balanciness: 0`
    is a band too (a spread of exactly 0) and would divide by zero."""
    return max(band, 1.0)


@dataclass
class Move:
    guest: GuestState
    load: Vector
    source: str
    target: str
    reason: MigrationReason
    detail: str


class PlanState:
    def __init__(self, snapshot: ClusterSnapshot, policy: Policy, constraints: Constraints) -> None:
        self.policy = policy
        self.c = constraints
        self.dims = policy.dimensions
        self.bands: Vector = tuple(policy.band(d) for d in self.dims)
        self.guests = {g.vmid: g for g in snapshot.guests}
        self._guest_loads = {v: guest_load(g, policy) for v, g in self.guests.items()}  # never change
        self.loads: dict[str, NodeLoad] = initial_loads(snapshot, policy, self._guest_loads)
        self.where = {g.vmid: g.node for g in snapshot.guests}
        # An unusable node (impossible figures) is as good as offline: no target, and its guests stay.
        online = {n.name for n in snapshot.nodes if n.online and n.usable and n.name not in policy.ignore_nodes}
        self.draining = constraints.draining
        self.online = online
        # a node offering nothing in a balanced dimension has no percentage in it: no target
        self.targets = sorted(n for n in online if n not in self.draining and min(self.loads[n].capacity) > 0)
        self.moves: list[Move] = []
        self.moved: set[int] = set()
        self.inflow: Counter[str] = Counter()
        # what a unit brings to a node none of it is on: asked of many targets by the searches
        self._arriving: dict[frozenset[int], fit.GuestFigures] = {}

    # --- questions -----------------------------------------------------------------------------

    def spread(self) -> float:
        """The first dimension's spread (pp)."""
        return spread_in(self.loads, self.targets, 0)

    def spreads(self) -> Vector:
        """Each balanced dimension's spread (pp), in the policy's order."""
        return tuple(spread_in(self.loads, self.targets, i) for i in range(len(self.dims)))

    def excess(self) -> Vector:
        """How far each dimension's spread is above its band (pp; 0 within it)."""
        return tuple(max(s - b, 0.0) for s, b in zip(self.spreads(), self.bands, strict=True))

    def balanced(self) -> bool:
        """Every balanced dimension within its band (to a billionth of a pp: the exact model meets a
        band to HiGHS's tolerance, and float sums over a cluster's guests differ in the last bits)."""
        return all(s <= b + BAND_TOLERANCE for s, b in zip(self.spreads(), self.bands, strict=True))

    def spread_text(self, before: Vector) -> str:
        """A move's effect in words: "spread 30.1 -> 25.2 pp", or per dimension when there are several."""
        after = self.spreads()
        if len(after) == 1:
            return f"spread {before[0]:.1f} -> {after[0]:.1f} pp"
        return "spread " + ", ".join(f"{d} {b:.1f} -> {a:.1f}" for d, b, a in zip(self.dims, before, after,
                                                                                   strict=True)) + " pp"

    def relax(self, dimensions: Iterable[str], to: float = math.inf) -> None:
        """Stop holding these dimensions to their band (a threshold no node passes): an infinite band,
        or the wider band `to`, in the policy too, so that every state made from it (the exact
        model's) agrees."""
        free = set(dimensions)
        self.policy = replace(self.policy, bands={**self.policy.bands, **dict.fromkeys(free, to)})
        self.bands = tuple(self.policy.band(d) for d in self.dims)

    def guest_load(self, vmid: int) -> Vector:
        return self._guest_loads[vmid]

    def load_of(self, vmids: Iterable[int]) -> Vector:
        total = [0.0] * len(self.dims)
        for v in vmids:
            for i, value in enumerate(self._guest_loads[v]):
                total[i] += value
        return tuple(total)

    def budget_left(self, count: int = 1) -> bool:
        cap = self.policy.max_migrations
        return cap is None or len(self.moves) + count <= cap

    def movable(self, vmids: Iterable[int]) -> bool:
        return all(v not in self.c.fixed and v not in self.moved and self.where[v] in self.online for v in vmids)

    def fits(self, vmids: Iterable[int], target: str) -> bool:
        """Room on the target, at this step, for the guests that would arrive (see `fit.fits`)."""
        return fit.fits(self.arriving(vmids, target), self.loads[target].figures, self.policy) is None

    def arriving(self, vmids: Iterable[int], target: str) -> fit.GuestFigures:
        """What these guests bring to the target: those not on it already, as one."""
        vmids = frozenset(vmids)
        if any(self.where[v] == target for v in vmids):
            return fit.GuestFigures.of(self.guests[v] for v in vmids if self.where[v] != target)
        known = self._arriving.get(vmids)
        if known is None:
            known = self._arriving[vmids] = fit.GuestFigures.of(self.guests[v] for v in vmids)
        return known

    def allows(self, vmids: frozenset[int], target: str) -> bool:
        """Every rule holds with these guests on the target (room is `fits`'s to say)."""
        if target not in self.targets:
            return False
        cap = self.policy.max_migrations_per_target
        if cap is not None and self.inflow[target] + sum(1 for v in vmids if self.where[v] != target) > cap:
            return False
        return all(family.allows(self, vmids, target) for family in self.c.families)

    def refusal(self, vmids: frozenset[int], target: str) -> str | None:
        """Why the target may not receive these guests at this step, in words; None when `allows` and
        `fits` both say yes. The first reason found: the node, the per-plan cap, each family's rules
        in the registry's order, then room."""
        if target not in self.loads:
            return f"{target} is not a node of the cluster, or its figures are impossible"
        if target not in self.targets:
            if target in self.policy.ignore_nodes:
                return f"{target} is ignored (proxmox_cluster.ignore_nodes)"
            if target in self.draining:
                return f"{target} is being drained (maintenance)"
            if target not in self.online:
                return f"{target} is offline"
            return f"{target} has no capacity in {self.policy.method}"
        cap = self.policy.max_migrations_per_target
        if cap is not None and self.inflow[target] + sum(1 for v in vmids if self.where[v] != target) > cap:
            return (f"{target} already receives {self.inflow[target]} guests in this plan "
                    f"(max_migrations_per_target {cap})")
        for family in self.c.families:
            if (why := family.refusal(self, vmids, target)) is not None:
                return why
        return fit.fits(self.arriving(vmids, target), self.loads[target].figures, self.policy)

    def best_target(self, vmids: frozenset[int], exclude: str | None = None) -> str | None:
        """The allowed node with room that ends least loaded after taking the guests (`ending`)."""
        load = self.load_of(v for v in vmids)
        means = self.means()
        best: tuple[float, str] | None = None
        for t in self.targets:
            if t == exclude or not self.allows(vmids, t) or not self.fits(vmids, t):
                continue
            key = (self.ending(t, load, means), t)
            if best is None or key < best:
                best = key
        return best[1] if best else None

    def ending(self, target: str, load: Vector, means: Vector) -> float:
        """How loaded the target ends with `load` on top, as one number to rank nodes by: its share
        for one dimension; for several, how far above the mean it ends in its worst dimension, in bands."""
        n = self.loads[target]
        if len(load) == 1:
            return (n.load[0] + load[0]) / n.capacity[0]
        return max((100.0 * (n.load[i] + load[i]) / n.capacity[i] - means[i]) / max(self.bands[i], 1e-9)
                   for i in range(len(load)))

    def means(self) -> Vector:
        """Each dimension's mean over the targets, weighted by capacity (percent)."""
        out = []
        for i in range(len(self.dims)):
            cap = sum(self.loads[n].capacity[i] for n in self.targets)
            out.append(100.0 * sum(self.loads[n].load[i] for n in self.targets) / cap if cap > 0 else 0.0)
        return tuple(out)

    # --- the one way to change it --------------------------------------------------------------

    def move(self, vmids: Iterable[int], target: str, reason: MigrationReason, detail: str) -> int:
        count = 0
        for v in sorted(vmids):
            source = self.where[v]
            if source == target:
                continue
            g = self.guests[v]
            load = self._guest_loads[v]
            self.loads[source].add(load, -1.0)
            self.loads[target].add(load)
            figures = fit.GuestFigures.of([g])
            self.loads[source].figures = self.loads[source].figures.leave(figures)
            self.loads[target].figures = self.loads[target].figures.arrive(figures)
            self.where[v] = target
            self.moved.add(v)
            self.inflow[target] += 1
            self.moves.append(Move(g, load, source, target, reason, detail))
            count += 1
        return count
