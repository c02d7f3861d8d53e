"""What the operator asks of a plan: the dimension to balance, the tolerance, the limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pvebalance.shared.config import BalancingSettings, PoolRule, ProxmoxClusterSettings, ResourceReserve
from pvebalance.shared.models import GuestType

Method = Literal["memory", "cpu", "disk", "weighted"]
Mode = Literal["used", "assigned"]

_TYPES = {"vm": GuestType.QEMU, "ct": GuestType.LXC}


@dataclass(frozen=True)
class Policy:
    method: Method = "memory"
    mode: Mode = "used"
    balanciness: float = 5.0
    max_node_usage: float = 95.0
    balance_types: frozenset[GuestType] = frozenset({GuestType.QEMU, GuestType.LXC})
    max_migrations: int | None = None
    live: bool = True
    with_local_disks: bool = True
    max_migrations_per_target: int | None = None
    min_gain: float = 0.0
    maintenance_nodes: frozenset[str] = field(default_factory=frozenset)
    ignore_nodes: frozenset[str] = field(default_factory=frozenset)
    ignore_guests: frozenset[int] = field(default_factory=frozenset)
    ignore_guests_by_name: frozenset[str] = field(default_factory=frozenset)
    pools: dict[str, PoolRule] = field(default_factory=dict)
    cooldown: frozenset[int] = field(default_factory=frozenset)  # guests moved too recently
    threshold: float | None = None  # the balanced dimension's trigger, in percent
    leave_ha_to_crs: bool = True  # with PVE's HA auto-rebalance on, HA guests are its to move
    weights: dict[str, float] = field(default_factory=lambda: {"memory": 1.0, "cpu": 1.0})
    scale: dict[str, float] = field(default_factory=dict)  # set per snapshot for weighted balancing
    exact_seconds: float = 0.0  # > 0: also solve small clusters exactly, and keep the plan with fewer moves
    cpu_overcommit: float | None = None
    reserve: dict[str, ResourceReserve] = field(default_factory=dict)  # 'defaults' and per node

    def reserved(self, node: str) -> ResourceReserve:
        return self.reserve.get(node) or self.reserve.get("defaults") or ResourceReserve()

    @classmethod
    def from_settings(
        cls,
        balancing: BalancingSettings,
        cluster: ProxmoxClusterSettings | None = None,
        cooldown: frozenset[int] = frozenset(),
    ) -> Policy:
        cluster = cluster or ProxmoxClusterSettings()
        return cls(
            method=balancing.method,
            mode=balancing.mode,
            balanciness=balancing.balanciness,
            max_node_usage=balancing.max_node_usage,
            balance_types=frozenset(_TYPES[t] for t in balancing.balance_types),
            max_migrations=balancing.max_migrations,
            live=balancing.live,
            with_local_disks=balancing.with_local_disks,
            max_migrations_per_target=balancing.max_migrations_per_target,
            min_gain=balancing.min_gain,
            maintenance_nodes=frozenset(cluster.maintenance_nodes),
            ignore_nodes=frozenset(cluster.ignore_nodes),
            ignore_guests=frozenset(int(g) for g in balancing.ignore_guests if isinstance(g, int) or g.isdigit()),
            ignore_guests_by_name=frozenset(g for g in balancing.ignore_guests if isinstance(g, str)),
            pools=dict(balancing.pools),
            cooldown=cooldown,
            threshold={"memory": balancing.memory_threshold, "cpu": balancing.cpu_threshold,
                       "disk": balancing.disk_threshold}.get(balancing.method),
            weights={str(dim): w for dim, w in balancing.weights.items()},
            exact_seconds=balancing.exact_seconds,
            cpu_overcommit=balancing.cpu_overcommit,
            reserve=dict(balancing.node_resource_reserve),
            leave_ha_to_crs=balancing.leave_ha_to_crs,
        )
