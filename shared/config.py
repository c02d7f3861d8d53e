"""The one settings model: a YAML file, overridden by PVEBALANCE_* environment variables.

Key names follow ProxLB's where the concept is the same (proxmox_api.hosts, balancing.balanciness,
...), so an operator can carry a ProxLB config over. Unknown keys are refused: a typo in a balancer's
config must not silently fall back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from .errors import OperatorError

ENV_PREFIX = "PVEBALANCE_"
GuestKind = Literal["vm", "ct"]


class ConfigError(OperatorError):
    """A configuration problem, worded for the operator: names the key and what is wrong."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        # One entry per bad key ("key.path: what is wrong"), for `pvebalance config check`.
        self.problems = problems if problems is not None else [message]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ProxmoxApiSettings(Section):
    hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1:8006"], min_length=1)
    user: str = "root@pam"
    password: SecretStr | None = Field(None, alias="pass")
    token_id: str | None = None
    token_secret: SecretStr | None = None
    ssl_verification: bool = True
    ca_file: Path | None = None
    timeout: float = Field(10.0, gt=0)

    @field_validator("ca_file")
    @classmethod
    def _ca_file_readable(cls, value: Path | None) -> Path | None:
        # Checked here, not when the first request fails: requests would report a missing bundle as
        # an OSError deep in its TLS setup, after the operator has waited for a connection.
        if value is None:
            return None
        if not value.exists():
            raise ValueError(f"{value} does not exist")
        if not value.is_file():
            raise ValueError(f"{value} is not a file")
        try:
            with value.open("rb"):
                pass
        except OSError as exc:
            raise ValueError(f"{value} cannot be read: {exc.strerror or exc}") from None
        return value

    @model_validator(mode="after")
    def _one_auth_method(self) -> ProxmoxApiSettings:
        if self.token_id and "!" in self.token_id:
            raise ValueError("token_id is the token's name only (without 'user@realm!')")
        if bool(self.token_id) != bool(self.token_secret):
            raise ValueError("token_id and token_secret must be given together")
        if "@" not in self.user:
            raise ValueError(f"user must be USER@REALM, got {self.user!r}")
        return self


class MaintenanceWindow(Section):
    """A weekly window in which a node is drained: from `drain_ahead_minutes` before `start` until `end`."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(min_length=1)
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM")
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM; before start: the next day")
    timezone: str = Field("UTC", description="an IANA name such as Europe/Berlin")
    drain_ahead_minutes: float = Field(30.0, ge=0)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class ProxmoxClusterSettings(Section):
    maintenance_nodes: list[str] = Field(default_factory=list)
    ignore_nodes: list[str] = Field(default_factory=list)
    maintenance_windows: dict[str, list[MaintenanceWindow]] = Field(
        default_factory=dict, description="node -> weekly windows in which it is drained")


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
    threshold: dict[str, float] = Field(
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


class RedisSettings(Section):
    """One Redis (url), or a master found through Sentinel (sentinels, master_name). shared/redisconn.py
    builds every service's client from these, rq's workers included; docs/operations.md, Redis."""

    url: str = Field("redis://127.0.0.1:6379/0", description="redis:// or rediss:// (TLS); with sentinels "
                     "only its scheme, user, password and database apply")
    sentinels: list[str] = Field(default_factory=list, description="host:port of each Sentinel; the master "
                                 "is asked of them (and again after a failover)")
    master_name: str = Field("mymaster", min_length=1, description="the master's name in the sentinels' config")
    username: str | None = Field(None, description="ACL user (Redis 6+); or in url")
    password: SecretStr | None = Field(None, description="or in url, or PVEBALANCE_REDIS__PASSWORD")
    sentinel_password: SecretStr | None = Field(None, description="when the sentinels require one of their own")
    tls_ca_file: Path | None = Field(None, description="CA bundle for rediss:// (default: the system's)")
    # Replication is asynchronous: a master that fails right after acknowledging a write may lose it.
    # The leaders' locks and the jobs' leases count as held only once this many replicas have them
    # (Redis WAIT); null: 1 with sentinels, 0 without (nothing to wait for).
    wait_replicas: int | None = Field(None, ge=0, le=16)

    @field_validator("sentinels")
    @classmethod
    def _host_ports(cls, value: list[str]) -> list[str]:
        for entry in value:
            host, _, port = entry.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"each sentinel is host:port (got {entry!r})")
        return value

    @field_validator("tls_ca_file")
    @classmethod
    def _ca_file_readable(cls, value: Path | None) -> Path | None:
        return ProxmoxApiSettings._ca_file_readable(value)  # the same check, the same words

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value.partition("://")[0] not in ("redis", "rediss", "unix"):
            raise ValueError(f"url must start with redis://, rediss:// (TLS) or unix:// (got {value.split('@')[-1]!r})")
        return value

    @model_validator(mode="after")
    def _password_once(self) -> RedisSettings:
        given = urlsplit(self.url)
        if self.password is not None and given.password is not None:
            raise ValueError("give the Redis password once: in url or in password, not both")
        if self.username is not None and given.username:
            raise ValueError("give the Redis user once: in url or in username, not both")
        if self.sentinels and self.url.startswith("unix://"):
            raise ValueError("sentinels name TCP hosts: url may not be unix:// with them")
        return self

    @property
    def replicas_to_wait(self) -> int:
        return self.wait_replicas if self.wait_replicas is not None else (1 if self.sentinels else 0)


class RetentionSettings(Section):
    """How long what pvebalance writes stays in Redis (shared/retention.py applies every figure)."""

    jobs_days: float = Field(30.0, gt=0, description="a migration job's record (and rq's) after the job ended")
    plans_days: float = Field(7.0, gt=0, description="a plan and its state after it was made")
    requests_days: float = Field(30.0, gt=0, description="an operator request's status after its last change")
    events: int = Field(10_000, ge=100, description="job status events kept (the newest), for `jobs` and the API")
    snapshots: int = Field(10, ge=1, le=100, description="snapshots kept in the stream besides the latest")


class CollectorSettings(Section):
    interval: float = Field(30.0, gt=0)
    rrd_interval: float = Field(300.0, ge=0, description="seconds between reads of each node's RRD (0: never)")
    smoothing: float = Field(0.2, gt=0, le=1, description="weight of the newest sample in guests' moving average")
    # Reads made at once (guest configs, node RRDs): a real API takes 10-50 ms per request, and each
    # node's pveproxy serves a few at a time (3 workers by default).
    config_reads: int = Field(32, ge=1, le=64, description="API reads at once, in all")
    config_reads_per_node: int = Field(3, ge=1, le=64, description="API reads at once for one node")


class PlannerSettings(Section):
    max_snapshot_age: float = Field(120.0, gt=0, description="seconds; older snapshots are not planned on")
    retry_after_failure: float = Field(
        60.0, ge=0, description="seconds to wait before planning again after a plan whose moves failed")
    recommendation_ttl: float = Field(
        3600.0, gt=0, description="seconds a recommended plan (manual mode) waits for approval while it stays safe")
    # PVE's pvestatd publishes node figures every 10 s (a busy node's cycle runs longer), while a guest's
    # node changes at once: a snapshot read sooner after a migration shows the guest gone from its source
    # but its memory still in the source's figures, and a plan on it moves a second guest off that node.
    settle_seconds: float = Field(
        15.0, ge=0, description="seconds after the last migration ended before a snapshot is planned on "
        "(node figures lag the guests: pvestatd's 10 s cycle plus a margin)")
    reject_hold: float = Field(
        3600.0, ge=0, description="seconds the moves of a rejected plan are not planned again (each guest stays "
        "off the target the plan gave it; drains are not held)")
    interval: float = Field(
        0.0, ge=0, description="seconds between balancing rounds: a balancing plan at most this often (0: on "
        "every settled snapshot); drains and operator requests are never held back (ProxLB's schedule)")


class MigratorSettings(Section):
    max_parallel_cluster: int = Field(2, ge=1)
    max_parallel_per_source: int = Field(1, ge=1)
    max_parallel_per_target: int = Field(1, ge=1)
    slot_ttl: float = Field(120.0, gt=0, description="seconds a held slot lives without renewal")
    slot_wait_timeout: float = Field(3600.0, gt=0)
    poll_interval: float = Field(1.0, gt=0)
    task_timeout_base: float = Field(300.0, gt=0)
    task_timeout_per_gib: float = Field(60.0, ge=0)
    # What the planner expects a plan's migrations to take (engine/timing.py): PVE sends a migration's memory and
    # local disks out of the source's migration link and into the target's, shared with the migrations using them.
    link_gbit: float = Field(10.0, gt=0, description="each node's migration network, Gbit/s (a plan's expected time)")
    link_gbit_nodes: dict[str, PositiveFloat] = Field(
        default_factory=dict, description="nodes whose migration network differs from link_gbit, Gbit/s")
    setup_seconds: float = Field(
        2.0, ge=0, description="a migration's time beside its copy: PVE's tunnel, the target's QEMU, the config move")
    backup_guard_minutes: float = Field(
        10.0, ge=0, description="a migration waits while a backup job of its guest starts within this many "
        "minutes or runs on its node (docs/operations.md, Backups); 0: never waits for backups")

    def expected_seconds(self, moved_bytes: int) -> float:
        """How long a migration that copies this much (memory and local disks) is expected to take at
        most: what a run waits before it warns, and what the engine schedules a plan's moves with."""
        return self.task_timeout_base + self.task_timeout_per_gib * moved_bytes / 2**30


class LeaderSettings(Section):
    lock_ttl: float = Field(
        15.0, ge=1, description="seconds a collector's or planner's leader lock outlives its holder; "
        "a waiting instance takes over within this after the leader dies")


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"


# --- HTTP API and notifications (services/api) ---------------------------------------------------

class ApiToken(Section):
    name: str = Field(min_length=1, description="who asked: goes into each operator request's 'who'")
    token: SecretStr = Field(description="the bearer token; compared in constant time, never logged")
    read_only: bool = Field(False, description="may read, may not change anything (403 on writes)")

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("an API token must be at least 16 characters")
        return value


class ApiSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    tokens: list[ApiToken] = Field(default_factory=list)
    read_requires_token: bool = Field(True, description="false: reads (GET, /metrics) need no token")

    @model_validator(mode="after")
    def _unique_names(self) -> ApiSettings:
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            raise ValueError("api.tokens: each token needs a name of its own")
        return self


WebhookEvent = Literal["plan_made", "migration_failed", "drain_done", "request_refused"]


class Webhook(Section):
    url: str = Field(pattern=r"^https?://", description="POSTed a JSON body per event")
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list[WebhookEvent](["plan_made", "migration_failed", "drain_done",
                                                    "request_refused"]))
    timeout: float = Field(5.0, gt=0, description="seconds per attempt")
    attempts: int = Field(5, ge=1, le=20, description="tries with exponential backoff before giving up")


class NotificationSettings(Section):
    webhooks: list[Webhook] = Field(default_factory=list)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", populate_by_name=True
    )

    proxmox_api: ProxmoxApiSettings = Field(default_factory=ProxmoxApiSettings)
    proxmox_cluster: ProxmoxClusterSettings = Field(default_factory=ProxmoxClusterSettings)
    balancing: BalancingSettings = Field(default_factory=BalancingSettings)
    storage_balancing: StorageBalancingSettings = Field(default_factory=StorageBalancingSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    collector: CollectorSettings = Field(default_factory=CollectorSettings)
    planner: PlannerSettings = Field(default_factory=PlannerSettings)
    migrator: MigratorSettings = Field(default_factory=MigratorSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    leader: LeaderSettings = Field(default_factory=LeaderSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            _RedisUrlEnvSource(settings_cls),
        ]
        yaml_file = settings_cls.model_config.get("yaml_file")
        if yaml_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)


class _RedisUrlEnvSource(PydanticBaseSettingsSource):
    """REDIS_URL, the variable every Redis tool knows; PVEBALANCE_REDIS__URL wins over it."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        url = os.environ.get("REDIS_URL")
        return {"redis": {"url": url}} if url else {}


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Load and validate the settings, or raise ConfigError naming every bad key."""
    path = Path(config_file) if config_file else None
    if path is not None:
        try:
            exists, is_file = path.exists(), path.is_file()
        except (OSError, ValueError):  # a name no file system accepts (a NUL byte, too long)
            exists = is_file = False
        if not is_file:
            raise ConfigError(f"config file {path} " + ("is not a file" if exists else "does not exist"))

    class _FileSettings(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "yaml_file": path})

    try:
        loaded = _FileSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path), describe_problems(exc)) from None
    except Exception as exc:  # a YAML syntax error, an unreadable file, a variable that is not JSON
        what = f"config file {path}" if path else f"the {ENV_PREFIX}* variables"
        raise ConfigError(f"cannot read {what}: {_clip(str(exc), 300)}") from None
    return loaded


def _describe(exc: ValidationError, path: Path | None) -> str:
    """Every bad key on one line (the promise: one line on stderr), each with what is wrong."""
    where = f"in {path}" if path else "in the environment"
    problems = describe_problems(exc)
    return f"invalid configuration ({where}, or {ENV_PREFIX}* variables): " + "; ".join(problems)


def describe_problems(exc: ValidationError) -> list[str]:
    """One "key.path: what is wrong" per bad key; a secret's value is never shown."""
    problems = []
    for err in exc.errors(include_url=False):
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = str(err["msg"])
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        shown = err.get("input")
        value = "" if isinstance(shown, dict | list) or shown is None else f" (got {_clip(repr(shown))})"
        if err["type"] == "value_error":
            # our own validators word the whole problem, value included
            msg, value = msg.removeprefix("Value error, "), ""
        if "secret" in key or "pass" in key:
            value = ""
        if key.startswith("api.tokens"):  # an API token pasted with a typo is still a token
            value = ""
        problems.append(f"{_clip(key, 100)}: {_clip(msg, 200)}{value}")
    return problems


def _clip(text: str, limit: int = 60) -> str:
    """One line, short: a value pasted into a config may hold anything."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
