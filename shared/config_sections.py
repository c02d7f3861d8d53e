"""The sections of the settings model (each a key at the top of the YAML), all but balancing's.

shared/config.py assembles them into Settings and is where callers import them from; the two balancing
sections, which need the engine's dimension names, are in config_balancing.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, SecretStr, field_validator, model_validator


class Section(BaseModel):
    """What every section shares: an unknown key is refused (a typo must not fall back to a default), and a
    key is read by its alias (ProxLB's `pass`) or its name."""

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
    # A plan is bounded by work, not by the clock: seconds on most clusters, but a minute or more for several
    # dimensions on 7-8 nodes (held-out clusters of 8 nodes and 64-160 guests, memory and CPU: up to ~70 s of
    # CPU here), more on a slower machine. The heartbeat (30 s) is kept alive through such a step.
    max_step_seconds: float = Field(
        900.0, gt=0, description="seconds one step of the planner (a plan and its enqueueing) may run and still "
        "count as alive; past that it is taken as hung: its heartbeat lapses, `pvebalance health planner` fails "
        "and the orchestrator restarts it")


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
