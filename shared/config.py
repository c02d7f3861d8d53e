"""The one settings model: a YAML file, overridden by PVEBALANCE_* environment variables.

Key names follow ProxLB's where the concept is the same (proxmox_api.hosts, balancing.balanciness,
...), so an operator can carry a ProxLB config over. Unknown keys are refused: a typo in a balancer's
config must not silently fall back to a default.

The sections live in config_sections.py and (balancing, storage_balancing) config_balancing.py; this
module assembles them into Settings, loads it, and re-exports every section's names, so callers import
all of the settings from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from .config_balancing import BalancingSettings as BalancingSettings
from .config_balancing import GuestKind as GuestKind
from .config_balancing import PoolRule as PoolRule
from .config_balancing import ResourceReserve as ResourceReserve
from .config_balancing import StorageBalancingSettings as StorageBalancingSettings
from .config_balancing import dimension_names as dimension_names
from .config_sections import ApiSettings as ApiSettings
from .config_sections import ApiToken as ApiToken
from .config_sections import CollectorSettings as CollectorSettings
from .config_sections import LeaderSettings as LeaderSettings
from .config_sections import LoggingSettings as LoggingSettings
from .config_sections import MaintenanceWindow as MaintenanceWindow
from .config_sections import MigratorSettings as MigratorSettings
from .config_sections import NotificationSettings as NotificationSettings
from .config_sections import PlannerSettings as PlannerSettings
from .config_sections import ProxmoxApiSettings as ProxmoxApiSettings
from .config_sections import ProxmoxClusterSettings as ProxmoxClusterSettings
from .config_sections import RedisSettings as RedisSettings
from .config_sections import RetentionSettings as RetentionSettings
from .config_sections import Section as Section
from .config_sections import Webhook as Webhook
from .config_sections import WebhookEvent as WebhookEvent
from .errors import OperatorError

ENV_PREFIX = "PVEBALANCE_"


class ConfigError(OperatorError):
    """A configuration problem, worded for the operator: names the key and what is wrong."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        # One entry per bad key ("key.path: what is wrong"), for `pvebalance config check`.
        self.problems = problems if problems is not None else [message]


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
