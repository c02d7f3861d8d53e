"""What the operator asks of a plan: the dimension to balance, the tolerance, the limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pvebalance.shared.config import BalancingSettings, ProxmoxClusterSettings
from pvebalance.shared.models import GuestType

Method = Literal["memory", "cpu", "disk"]
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
    maintenance_nodes: frozenset[str] = field(default_factory=frozenset)
    ignore_nodes: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_settings(
        cls, balancing: BalancingSettings, cluster: ProxmoxClusterSettings | None = None
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
            maintenance_nodes=frozenset(cluster.maintenance_nodes),
            ignore_nodes=frozenset(cluster.ignore_nodes),
        )
