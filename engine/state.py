"""The cluster as a plan is being built: where each guest is, each node's load, the moves so far.

Every move goes through `move`, after `allows` and `fits` said yes at that very step, so the
sequence of moves is a safe order by construction: no node passes its memory limit at any point.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from pvebalance.shared.models import ClusterSnapshot, GuestState, MigrationReason

from . import fit
from .load import NodeLoad, guest_load, initial_loads, spread, with_cluster_scale
from .policy import Policy
from .rules import Constraints


@dataclass
class Move:
    guest: GuestState
    load: float
    source: str
    target: str
    reason: MigrationReason
    detail: str


class PlanState:
    def __init__(self, snapshot: ClusterSnapshot, policy: Policy, constraints: Constraints) -> None:
        policy = with_cluster_scale(policy, snapshot) if not policy.scale else policy
        self.policy = policy
        self.c = constraints
        self.loads: dict[str, NodeLoad] = initial_loads(snapshot, policy)
        self.guests = {g.vmid: g for g in snapshot.guests}
        self.where = {g.vmid: g.node for g in snapshot.guests}
        # An unusable node (impossible figures) is as good as offline: no target, and its guests stay.
        online = {n.name for n in snapshot.nodes if n.online and n.usable and n.name not in policy.ignore_nodes}
        self.draining = constraints.draining
        self.online = online
        self.targets = sorted(n for n in online if n not in self.draining and self.loads[n].capacity > 0)
        self.moves: list[Move] = []
        self.moved: set[int] = set()
        self.inflow: Counter[str] = Counter()

    # --- questions -----------------------------------------------------------------------------

    def spread(self) -> float:
        return spread(self.loads, self.targets)

    def load_of(self, vmids: Iterable[int]) -> float:
        return sum(guest_load(self.guests[v], self.policy) for v in vmids)

    def budget_left(self, count: int = 1) -> bool:
        cap = self.policy.max_migrations
        return cap is None or len(self.moves) + count <= cap

    def movable(self, vmids: Iterable[int]) -> bool:
        return all(v not in self.c.fixed and v not in self.moved and self.where[v] in self.online for v in vmids)

    def fits(self, vmids: Iterable[int], target: str) -> bool:
        """Room on the target, at this step, for the guests that would arrive (see `fit.fits`)."""
        arriving = fit.GuestFigures.of(self.guests[v] for v in vmids if self.where[v] != target)
        return fit.fits(arriving, self.loads[target].figures, self.policy) is None

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
        arriving = fit.GuestFigures.of(self.guests[v] for v in vmids if self.where[v] != target)
        return fit.fits(arriving, self.loads[target].figures, self.policy)

    def best_target(self, vmids: frozenset[int], exclude: str | None = None) -> str | None:
        """The allowed node with room that ends least loaded (in percent) after taking the guests."""
        load = self.load_of(v for v in vmids)
        best: tuple[float, str] | None = None
        for t in self.targets:
            if t == exclude or not self.allows(vmids, t) or not self.fits(vmids, t):
                continue
            n = self.loads[t]
            key = ((n.load + load) / n.capacity, t)
            if best is None or key < best:
                best = key
        return best[1] if best else None

    # --- the one way to change it --------------------------------------------------------------

    def move(self, vmids: Iterable[int], target: str, reason: MigrationReason, detail: str) -> int:
        count = 0
        for v in sorted(vmids):
            source = self.where[v]
            if source == target:
                continue
            g = self.guests[v]
            load = guest_load(g, self.policy)
            self.loads[source].load -= load
            self.loads[target].load += load
            figures = fit.GuestFigures.of([g])
            self.loads[source].figures = self.loads[source].figures.leave(figures)
            self.loads[target].figures = self.loads[target].figures.arrive(figures)
            self.where[v] = target
            self.moved.add(v)
            self.inflow[target] += 1
            self.moves.append(Move(g, load, source, target, reason, detail))
            count += 1
        return count
