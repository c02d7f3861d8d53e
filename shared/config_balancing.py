"""The balancing sections of the settings model: which dimensions to balance and how far (balancing),
and moving guests' disks between storages (storage_balancing).

Apart from the other sections (config_sections.py) because they check their keys against the engine's
dimension names; shared/config.py re-exports every name here, and callers import from there.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import NoDecode

from .config_sections import Section

GuestKind = Literal["vm", "ct"]


class PoolRule(Section):
    type: Literal["affinity", "anti-affinity"] | None = None
    pin: list[str] = Field(default_factory=list)
    strict: bool = True


class ResourceReserve(Section):
    memory: float = Field(0.0, ge=0, description="GiB kept free for the host")
    cpu: float = Field(0.0, ge=0, description="cores kept free for the host")
    disk: float = Field(0.0, ge=0, description="GiB of local storage kept free")


def dimension_names() -> tuple[str, ...]:
    """What can be balanced: the names in pvebalance/engine/load.py's DIMENSIONS, the one list of them."""
    from pvebalance.engine.load import DIMENSIONS  # when a value is checked: the engine builds on this module

    return tuple(DIMENSIONS)


_BAND = TypeAdapter(float)


def _pairs(value: Any) -> Any:
    """'memory=5,cpu=10' (an environment variable, `plan --balanciness`) as {memory: '5', cpu: '10'},
    a JSON mapping as that mapping; anything else as it is."""
    if isinstance(value, str) and value.strip().startswith("{"):  # an environment variable in JSON
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{value.strip()!r} is not a JSON mapping") from None
    if not isinstance(value, str) or "=" not in value:
        return value
    out: dict[str, str] = {}
    for part in value.split(","):
        dim, sep, number = (s.strip() for s in part.partition("="))
        if not sep or not dim:
            raise ValueError(f"{part.strip()!r} is not dimension=percent (as in memory=5,cpu=10)")
        out[dim] = number
    return out


def _per_dimension(value: dict[Any, Any], key: str, *, zero: bool) -> dict[str, float]:
    """A mapping dimension -> percent (0-100; above 0 unless `zero`), or ValueError naming what is wrong."""
    names = dimension_names()
    out = {}
    for dim, number in value.items():
        if dim not in names:
            raise ValueError(f"unknown dimension {dim!r} (one of {', '.join(names)})")
        low = "from 0" if zero else "above 0,"
        try:
            figure = _BAND.validate_python(number)
        except ValidationError:
            figure = None
        if isinstance(number, bool) or figure is None or not (0 <= figure <= 100) or (figure == 0 and not zero):
            raise ValueError(f"{key} of {dim} must be a percentage {low} up to 100 (got {number!r})")
        out[str(dim)] = figure
    return out


class BalancingSettings(Section):
    enable: bool = True
    mode_of_operation: Literal["automatic", "manual", "dry-run"] = Field(
        "automatic", description="manual: plans wait for `pvebalance approve`; dry-run: plans are never run")
    # The names come from pvebalance/engine/load.py's DIMENSIONS (checked by _method, not spelled here).
    method: str | list[str] = Field(
        "memory", description="the dimension to balance (memory, cpu, disk), a list of them to balance at once, or "
        "weighted (deprecated: the dimensions with a weight above 0)")
    weights: dict[str, float] = Field(
        default_factory=lambda: {"memory": 1.0, "cpu": 1.0},
        description="for method: weighted: the dimensions with a weight above 0, each within balanciness / weight")
    mode: Literal["used", "assigned"] = "used"
    balanciness: float | dict[str, float] = Field(
        5.0, description="tolerated spread, percentage points: one for every dimension, or a mapping dimension -> "
        "spread (a dimension it leaves out: 5)")
    max_node_usage: float = Field(95.0, gt=0, le=100, description="percent a node may reach mid-plan")
    max_storage_usage: float = Field(
        90.0, gt=0, le=100, description="percent a local storage may reach mid-plan, counting the disks that "
        "migrations in flight copy onto it (a thin pool that fills stops every guest on it)")
    balance_types: list[GuestKind] = Field(default_factory=lambda: list[GuestKind](["vm", "ct"]))
    live: bool = True
    with_local_disks: bool = Field(True, description="false: guests with disks on local storage stay where they are")
    max_migrations: int | None = Field(None, ge=1, description="cap on migrations per plan")
    objective: Literal["migrations", "time"] = Field(
        "migrations", description="between plans that balance alike: migrations = the fewest migrations, then the "
        "one expected to finish first; time = the one expected to finish first, among about as many migrations")
    max_migrations_per_target: int | None = Field(None, ge=1, description="cap on moves into one node per plan")
    min_gain: float = Field(0.0, ge=0, description="a balance move must lower the spread variance this much (pp^2)")
    cooldown_minutes: float = Field(60.0, ge=0, description="a guest moved recently is left alone this long")
    ignore_guests: list[int | str] = Field(default_factory=list,
                                           description="vmids or names (shell wildcards: veeam-*) never moved")
    # NoDecode: PVEBALANCE_BALANCING__THRESHOLD reaches _threshold as typed (cpu=70, or JSON), where
    # pydantic-settings would refuse anything but JSON for a mapping before any validator runs
    threshold: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict, description="dimension -> percent: balance it only once a node passes this")
    cpu_overcommit: float | None = Field(None, gt=0, description="max assigned vCPUs per node core")
    exact_seconds: float = Field(
        30.0, ge=0, description="> 0: the exact solver runs on clusters of up to 500 guests, bounded by work "
        "(not time: the same snapshot gives the same plan); 0: greedy only")
    leave_ha_to_crs: bool = Field(True, description="with PVE's crs.ha-auto-rebalance on, never move HA guests")
    node_resource_reserve: dict[str, ResourceReserve] = Field(
        default_factory=dict, description="'defaults' and per-node reservations"
    )
    pools: dict[str, PoolRule] = Field(default_factory=dict)
    # Adaptive cooldown: a guest moved n times in 24 h waits max(cooldown_minutes, its last move's
    # duration) x 2^(n-1) after its last move, at most this long.
    cooldown_cap_minutes: float = Field(360.0, ge=0, description="the longest adaptive cooldown")

    @model_validator(mode="before")
    @classmethod
    def _thresholds_as_before(cls, data: Any) -> Any:
        """memory_threshold, cpu_threshold and disk_threshold (one key per dimension, before
        `threshold: {memory: 80}`) are still read, as entries of `threshold` (deprecated)."""
        if not isinstance(data, dict) or not any(str(k).endswith("_threshold") for k in data):
            return data
        data = dict(data)
        merged = dict(data.get("threshold") or {}) if isinstance(data.get("threshold") or {}, dict) else None
        for dim in dimension_names():
            value = data.pop(f"{dim}_threshold", None)
            if value is not None and merged is not None:
                merged.setdefault(dim, value)
        if merged is not None:
            data["threshold"] = merged
        return data

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> Any:
        names = dimension_names()
        if isinstance(value, str) and "," in value:  # PVEBALANCE_BALANCING__METHOD=memory,cpu, or --method
            value = [part.strip() for part in value.split(",")]
        listed = value if isinstance(value, list) else [value]
        choice = f"{', '.join(names)}, a list of them, or weighted"
        if isinstance(value, list) and not value:
            raise ValueError(f"an empty list: name at least one dimension ({choice})")
        for name in listed:
            if not isinstance(name, str) or (name not in names and (name != "weighted" or len(listed) > 1)):
                raise ValueError(f"unknown dimension {name!r} (one of {choice})")
        if len(set(listed)) != len(listed):
            raise ValueError(f"{value!r} names a dimension twice")
        return value

    @field_validator("balanciness", mode="before")
    @classmethod
    def _balanciness(cls, value: Any) -> Any:
        value = _pairs(value)
        if isinstance(value, dict):
            return _per_dimension(value, "balanciness", zero=True)
        try:  # one number: pydantic's own words for it
            return _BAND_PP.validate_python(value)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            raise PydanticCustomError(first["type"], first["msg"]) from None

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, value: Any) -> Any:
        value = _pairs(value)
        return _per_dimension(value, "threshold", zero=False) if isinstance(value, dict) else value

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, value: Any) -> Any:
        if isinstance(value, dict):
            names = dimension_names()
            for dim, weight in value.items():
                if dim not in names:
                    raise ValueError(f"unknown dimension {dim!r} (one of {', '.join(names)})")
                if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
                    raise ValueError(f"the weight of {dim} must be a number, 0 or more (got {weight!r})")
        return value


_BAND_PP = TypeAdapter(Annotated[float, Field(ge=0, le=100)])


class StorageBalancingSettings(Section):
    """Moving guests' disks between the storages of a group until the fullest and the emptiest are
    within `balanciness` (engine/storage_balance.py plans it)."""

    enable: bool = Field(False, description="true: plan disk moves between the storages of each group")
    balanciness: float = Field(10.0, ge=0, le=100, description="tolerated spread between a group's fullest and "
                               "emptiest storage, percentage points")
    max_usage: float = Field(90.0, gt=0, le=100, description="percent no storage goes above at any step, counting "
                             "the disks that moves in flight copy onto it")
    groups: list[list[str]] = Field(
        default_factory=list, description="lists of storage ids balanced against each other; empty: one group of "
        "the shared storages that hold guest disks")
    max_parallel_per_storage: int = Field(1, ge=1, description="disk moves at once from or to one storage")
    bwlimit: float | None = Field(None, gt=0, description="MiB/s per disk move, passed to PVE (none: PVE's own limit)")

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: list[list[str]]) -> list[list[str]]:
        seen: set[str] = set()
        for group in value:
            if len(group) < 2:
                raise ValueError(f"a group balances two storages or more (got {group!r})")
            for storage in group:
                if storage in seen:
                    raise ValueError(f"storage {storage!r} is in more than one group (or twice in one)")
                seen.add(storage)
        return value
