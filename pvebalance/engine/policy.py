"""What the operator asks of a plan: the dimensions to balance, the tolerance, the limits.

A Policy is the validated settings (`balancing`, `proxmox_cluster`) in the engine's terms. Its
defaults are not declared here but read from the settings models, so `Policy()` plans exactly as
the service does with an empty config; `Policy(x=...)` is the settings' defaults with x changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pvebalance.shared.config import (
    BalancingSettings,
    MigratorSettings,
    PoolRule,
    ProxmoxClusterSettings,
    ResourceReserve,
)
from pvebalance.shared.jobs import JobState, JobStatusEvent
from pvebalance.shared.models import GuestType

Mode = Literal["used", "assigned"]

_TYPES = {"vm": GuestType.QEMU, "ct": GuestType.LXC}


def _from_settings(balancing: BalancingSettings, cluster: ProxmoxClusterSettings) -> dict[str, Any]:
    """The one mapping from settings to Policy fields: used by `from_settings` and for the defaults."""
    return {
        "method": balancing.method if isinstance(balancing.method, str) else ",".join(balancing.method),
        "mode": balancing.mode,
        # a number: every dimension's band; a mapping: each named dimension's, the default for the others
        "balanciness": (balancing.balanciness if not isinstance(balancing.balanciness, dict)
                        else BalancingSettings.model_fields["balanciness"].default),
        "bands": dict(balancing.balanciness) if isinstance(balancing.balanciness, dict) else {},
        "max_node_usage": balancing.max_node_usage,
        "max_storage_usage": balancing.max_storage_usage,
        "balance_types": frozenset(_TYPES[t] for t in balancing.balance_types),
        "max_migrations": balancing.max_migrations,
        "objective": balancing.objective,
        "live": balancing.live,
        "with_local_disks": balancing.with_local_disks,
        "max_migrations_per_target": balancing.max_migrations_per_target,
        "min_gain": balancing.min_gain,
        "maintenance_nodes": frozenset(cluster.maintenance_nodes),
        "ignore_nodes": frozenset(cluster.ignore_nodes),
        "ignore_guests": frozenset(int(g) for g in balancing.ignore_guests if isinstance(g, int) or g.isdigit()),
        "ignore_guests_by_name": frozenset(g for g in balancing.ignore_guests if isinstance(g, str)),
        "pools": dict(balancing.pools),
        "thresholds": dict(balancing.threshold),
        "leave_ha_to_crs": balancing.leave_ha_to_crs,
        "weights": {str(dim): w for dim, w in balancing.weights.items()},
        "exact_seconds": balancing.exact_seconds,
        "cpu_overcommit": balancing.cpu_overcommit,
        "reserve": dict(balancing.node_resource_reserve),
        "cooldown_minutes": balancing.cooldown_minutes,
        "cooldown_cap_minutes": balancing.cooldown_cap_minutes,
    }


_DEFAULTS = _from_settings(BalancingSettings(), ProxmoxClusterSettings())


def _fresh(name: str) -> Callable[[], Any]:
    """A factory for a dict default: each Policy gets its own copy, which a caller might change."""
    return lambda: dict(_DEFAULTS[name])


_NO_RESERVE = ResourceReserve()  # one, read only: `reserved` is asked for every move a search tries


@dataclass(frozen=True)
class Policy:
    # "memory", "cpu", "disk", several joined by commas ("memory,cpu"), or "weighted" (the dimensions
    # with a weight above 0, each held within its band divided by its weight): see `dimensions`
    method: str = field(default=_DEFAULTS["method"])
    mode: Mode = field(default=_DEFAULTS["mode"])
    balanciness: float = field(default=_DEFAULTS["balanciness"])  # pp: the band of every dimension not in `bands`
    bands: dict[str, float] = field(default_factory=_fresh("bands"))  # pp: a dimension's own band
    max_node_usage: float = field(default=_DEFAULTS["max_node_usage"])
    max_storage_usage: float = field(default=_DEFAULTS["max_storage_usage"])
    balance_types: frozenset[GuestType] = field(default=_DEFAULTS["balance_types"])
    max_migrations: int | None = field(default=_DEFAULTS["max_migrations"])
    objective: Literal["migrations", "time"] = field(default=_DEFAULTS["objective"])  # schedule.prefer
    live: bool = field(default=_DEFAULTS["live"])
    with_local_disks: bool = field(default=_DEFAULTS["with_local_disks"])
    max_migrations_per_target: int | None = field(default=_DEFAULTS["max_migrations_per_target"])
    min_gain: float = field(default=_DEFAULTS["min_gain"])
    maintenance_nodes: frozenset[str] = field(default=_DEFAULTS["maintenance_nodes"])
    ignore_nodes: frozenset[str] = field(default=_DEFAULTS["ignore_nodes"])
    ignore_guests: frozenset[int] = field(default=_DEFAULTS["ignore_guests"])
    ignore_guests_by_name: frozenset[str] = field(default=_DEFAULTS["ignore_guests_by_name"])
    pools: dict[str, PoolRule] = field(default_factory=_fresh("pools"))
    # Balance a dimension only once some node passes its threshold (percent): `thresholds` per
    # dimension; `threshold` for every dimension without one of its own (None: no threshold).
    threshold: float | None = None
    thresholds: dict[str, float] = field(default_factory=_fresh("thresholds"))
    leave_ha_to_crs: bool = field(default=_DEFAULTS["leave_ha_to_crs"])  # with PVE's HA auto-rebalance on
    weights: dict[str, float] = field(default_factory=_fresh("weights"))
    # > 0: also solve small clusters exactly (bounded by work, see exact.EXACT_NODE_LIMIT); this many
    # seconds are only a safety net, and a plan that hit it says so in its notes
    exact_seconds: float = field(default=_DEFAULTS["exact_seconds"])
    cpu_overcommit: float | None = field(default=_DEFAULTS["cpu_overcommit"])
    reserve: dict[str, ResourceReserve] = field(default_factory=_fresh("reserve"))  # 'defaults' and per node
    cooldown_minutes: float = field(default=_DEFAULTS["cooldown_minutes"])
    cooldown_cap_minutes: float = field(default=_DEFAULTS["cooldown_cap_minutes"])
    # Not settings: the planner's state, and a figure derived per snapshot.
    cooldown: frozenset[int] = field(default_factory=frozenset)  # guests moved too recently
    # Moves an operator rejected, held back for planner.reject_hold: vmid -> target -> who and until when
    # (rules/rejected.py keeps the guest off that target; a drain is not held)
    held: dict[int, dict[str, str]] = field(default_factory=dict)
    # A drain's plan: only the moves the rules ask for (the drained nodes, pins, affinity), no balancing
    repair_only: bool = False
    # The guests' migrations of the last HISTORY_WINDOW seconds, oldest first, and the time the plan
    # is made (epoch seconds): the adaptive cooldown and the no-return rule read them. The clock is
    # the planner's, passed in, so that a plan depends on its inputs only.
    history: dict[int, tuple[PastMove, ...]] = field(default_factory=dict)
    now: float = 0.0
    # The migrator's limits and expected durations, which a plan's moves are scheduled by (schedule.py)
    migrator: MigratorSettings = field(default_factory=MigratorSettings)
    # Derived from `method` (and `weights`): the dimensions balanced, in order; the first is the one a
    # plan's single figures (`spread_pp`) stand for.
    dimensions: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dimensions", dimensions_of(self.method, self.weights))

    def band(self, dimension: str) -> float:
        """The spread (pp) a dimension may keep: its own band, else `balanciness`; with `weighted`,
        divided by the dimension's weight (a heavier weight holds it tighter)."""
        band = self.bands.get(dimension, self.balanciness)
        return band / self.weights[dimension] if self.method == "weighted" else band

    def threshold_of(self, dimension: str) -> float | None:
        return self.thresholds.get(dimension, self.threshold)

    def reserved(self, node: str) -> ResourceReserve:
        return self.reserve.get(node) or self.reserve.get("defaults") or _NO_RESERVE

    def recent_moves(self, vmid: int) -> tuple[PastMove, ...]:
        """The guest's migrations within HISTORY_WINDOW of `now`, oldest first."""
        return tuple(m for m in self.history.get(vmid, ()) if self.now - m.at < HISTORY_WINDOW)

    @classmethod
    def from_settings(
        cls,
        balancing: BalancingSettings,
        cluster: ProxmoxClusterSettings | None = None,
        cooldown: frozenset[int] = frozenset(),
        recent_moves: Iterable[JobStatusEvent] = (),
        now: float = 0.0,
    ) -> Policy:
        return cls(**_from_settings(balancing, cluster or ProxmoxClusterSettings()), cooldown=cooldown,
                   history=history_of(recent_moves), now=now)


def dimensions_of(method: str, weights: dict[str, float]) -> tuple[str, ...]:
    """The dimensions a method balances: "memory,cpu" -> ("memory", "cpu"); "weighted" -> those with
    a weight above 0, in DIMENSIONS' order. ValueError for a name DIMENSIONS lacks."""
    from .load import DIMENSIONS  # load.py builds on this module: the table is read when a Policy is made

    if method == "weighted":
        names = tuple(d for d in DIMENSIONS if weights.get(d, 0) > 0)
        if not names:
            raise ValueError("method weighted with no weight above 0")
        return names
    names = tuple(d.strip() for d in method.split(","))
    unknown = [d for d in names if d not in DIMENSIONS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"method {method!r}: a dimension ({', '.join(DIMENSIONS)}) or several, each once")
    return names


HISTORY_WINDOW = 24 * 3600.0  # seconds of migrations the adaptive cooldown and the no-return rule look at


@dataclass(frozen=True)
class PastMove:
    """One finished migration of a guest."""

    source: str
    target: str
    at: float  # when it ended, epoch seconds
    duration_s: float


def history_of(events: Iterable[JobStatusEvent]) -> dict[int, tuple[PastMove, ...]]:
    """Each guest's finished migrations, oldest first, from the job store's status events."""
    moves: dict[int, list[PastMove]] = {}
    for e in events:
        if e.state is JobState.SUCCEEDED:
            moves.setdefault(e.vmid, []).append(PastMove(e.source, e.target, e.at.timestamp(), e.duration_s or 0.0))
    return {vmid: tuple(sorted(m, key=lambda p: p.at)) for vmid, m in sorted(moves.items())}
