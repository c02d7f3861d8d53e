"""Carry a ProxLB config over to pvebalance: every key with a counterpart, and why the others have none.

ProxLB 1.0.x wrote an INI file (`proxlb.conf`: [proxmox], [vm_balancing], ...); 1.1 and the 2.x
releases write YAML whose key names pvebalance's settings follow where the concept is the same.
The mapping is one table per format (a ProxLB key path, `*` for any name, to a pvebalance key or to
the reason it has none), so a key ProxLB adds later is one more row. A key neither table knows is
reported as unknown: it is a typo or a setting of a ProxLB this importer has never seen, and the
operator must decide, so nothing is written.
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, ValidationError, create_model

from pvebalance.shared.config import RedisSettings, Settings, describe_problems

Convert = Callable[[Any, dict[str, Any]], Any]  # (the value, its section in the ProxLB file)


class ProxlbConfigError(Exception):
    """The ProxLB file cannot be read or converted; worded for the operator."""


class NoCounterpart(Exception):
    """Raised by a converter: this value of the key has no pvebalance equivalent (the message: why)."""


@dataclass(frozen=True)
class PartlyMapped:
    """Returned by a converter: `value` is mapped, the entries `left_out` are not, for `why`."""

    value: Any
    left_out: str
    why: str


def _same(value: Any, section: dict[str, Any]) -> Any:
    return value


@dataclass(frozen=True)
class To:
    """Maps to this pvebalance key ({0}: the name the `*` of the ProxLB path matched)."""

    key: str
    convert: Convert = _same
    note: str = ""  # where the two mean not quite the same: said when the key is mapped


@dataclass(frozen=True)
class Dropped:
    """No counterpart in pvebalance, and why (the whole subtree under the key)."""

    why: str


@dataclass
class ProxlbImport:
    source_format: str  # "ProxLB 1.0 INI" | "ProxLB YAML (1.1+, 2.x)"
    config: dict[str, Any] = field(default_factory=dict)  # the pvebalance config, nested
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (ProxLB key, pvebalance key)
    unmapped: list[tuple[str, str]] = field(default_factory=list)  # (ProxLB key, why)
    unknown: list[str] = field(default_factory=list)  # keys ProxLB itself does not have
    notes: list[tuple[str, str]] = field(default_factory=list)  # (ProxLB key, how pvebalance's differs)
    # Keys the file leaves out whose ProxLB default differs from pvebalance's: ProxLB's is written,
    # so the converted config behaves as the ProxLB one did (ProxLB key and default, pvebalance key and value).
    defaults: list[tuple[str, Any, str, Any]] = field(default_factory=list)
    # Keys pvebalance needs that ProxLB has no counterpart for, written with their default and why
    added: list[tuple[str, str]] = field(default_factory=list)  # (pvebalance key, why)


# --- converters --------------------------------------------------------------------------------

def _timeout(value: Any, section: dict[str, Any]) -> Any:
    if isinstance(value, bool):  # ProxLB's own default is `True`, a bug: requests reads it as 1 s
        raise NoCounterpart(f"{value!r} is not a number of seconds (pvebalance's default applies)")
    return value


def _mode(value: Any, section: dict[str, Any]) -> Any:
    if value == "psi":
        raise NoCounterpart("pvebalance balances on used or assigned resources; PSI is collected, not balanced on")
    return value


def _parallel(value: Any, section: dict[str, Any]) -> Any:
    # ProxLB runs `parallel_jobs` (default 5) at once when `parallel` is on, else one at a time.
    return int(section.get("parallel_jobs", 5)) if section.get("parallel", False) else 1


def _log_level(value: Any, section: dict[str, Any]) -> Any:
    level = str(value).upper()
    if level == "CRITICAL":
        raise NoCounterpart("pvebalance's levels are DEBUG, INFO, WARNING, ERROR")
    return level


def _csv(value: Any, section: dict[str, Any]) -> list[str]:
    return [item.strip() for item in str(value).split(",") if item.strip()]


def _flag(value: Any, section: dict[str, Any]) -> bool:
    text = str(value).strip().lower()
    if text not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        raise NoCounterpart(f"{value!r} is not 0 or 1")
    return text in ("1", "true", "yes", "on")


def _number(value: Any, section: dict[str, Any]) -> Any:
    try:
        return float(value) if "." in str(value) else int(value)
    except ValueError:
        return value  # left for the settings model to name


def _types(value: Any, section: dict[str, Any]) -> list[str]:
    return {"vm": ["vm"], "ct": ["ct"], "all": ["vm", "ct"]}.get(str(value).strip(), [str(value)])


def _parallel_1x(value: Any, section: dict[str, Any]) -> int:
    if _flag(value, section):
        raise NoCounterpart("ProxLB 1.0 started every migration at once; pvebalance runs up to "
                            "migrator.max_parallel_cluster (default 2) under per-node limits")
    return 1


_SCHEDULE_UNITS = {"hours": 3600, "minutes": 60}


def _schedule(value: Any, section: dict[str, Any]) -> float:
    """ProxLB's round every `interval` hours or minutes (1.1.1+: {interval, format}; 1.0 and 1.1.0: a
    number of hours), in seconds between pvebalance's balancing rounds."""
    if isinstance(value, dict):
        unit = _SCHEDULE_UNITS.get(str(value.get("format", "hours")).lower())
        if unit is None:
            raise NoCounterpart(f"format {value.get('format')!r} is neither hours nor minutes")
        amount = value.get("interval", 12)
    else:
        unit, amount = 3600, value
    try:
        seconds = float(amount) * unit
    except (TypeError, ValueError):
        raise NoCounterpart(f"interval {amount!r} is not a number") from None
    if seconds <= 0:
        raise NoCounterpart(f"interval {amount!r} is not above 0")
    return seconds


def _enforce(differs: str) -> Convert:
    def convert(value: Any, section: dict[str, Any]) -> Any:
        if _flag(value, section):
            raise NoCounterpart("nothing to set: pvebalance always repairs these rules in its next plan, as "
                                "ProxLB does with it on")
        raise NoCounterpart(differs)
    return convert


def _exact_names(value: Any, section: dict[str, Any]) -> Any:
    names = _csv(value, section)
    patterns = [n for n in names if "*" in n]
    if not patterns:
        return names
    why = "balancing.ignore_guests takes names or vmids, no wildcards: list the guests"
    if len(patterns) == len(names):
        raise NoCounterpart(why)
    return PartlyMapped([n for n in names if "*" not in n], ", ".join(patterns), why)


# --- the tables --------------------------------------------------------------------------------

_GATE = ("pvebalance balances only once a node passes it; ProxLB also balanced when the spread alone "
         "passed balanciness")
_SERVICES = "pvebalance's services run continuously"
_SCHEDULE_NOTE = ("ProxLB ran a balancing round this often; pvebalance makes a balancing plan at most this often "
                  "(planner.interval) and runs its moves at once; drains and operator requests are never held back")
# ProxLB relocates guests only in a round that balances, unless enforce_* is on (1.1.10+ turns
# enforce_affinity on itself when its affinity map is broken); pvebalance has no such switch.
_EAGER = ("pvebalance repairs them in its next plan, balanced or not, so this config may move guests ProxLB left "
          "in place (balancing.mode_of_operation: manual shows such moves for approval first)")
_AFFINITY_DIFFERS = ("DIFFERS: with it off, ProxLB repaired broken affinity and anti-affinity only in a round that "
                     "also balanced (1.1.10 and later: also when its affinity map was broken); " + _EAGER)
_PINNING_DIFFERS = ("DIFFERS: with it off, ProxLB moved guests onto their pinned nodes only in a round that also "
                    "balanced; " + _EAGER)

YAML_KEYS: dict[str, To | Dropped] = {
    "proxmox_api.hosts": To("proxmox_api.hosts"),
    "proxmox_api.user": To("proxmox_api.user"),
    "proxmox_api.pass": To("proxmox_api.pass"),
    "proxmox_api.token_id": To("proxmox_api.token_id"),
    "proxmox_api.token_secret": To("proxmox_api.token_secret"),
    "proxmox_api.ssl_verification": To("proxmox_api.ssl_verification"),
    "proxmox_api.timeout": To("proxmox_api.timeout", _timeout),
    "proxmox_api.retries": Dropped("pvebalance retries every failed API request itself, with backoff"),
    "proxmox_api.wait_time": Dropped("pvebalance retries every failed API request itself, with backoff"),
    "proxmox_cluster.maintenance_nodes": To("proxmox_cluster.maintenance_nodes"),
    "proxmox_cluster.ignore_nodes": To("proxmox_cluster.ignore_nodes"),
    "proxmox_cluster.overprovisioning": Dropped(
        "ProxLB never reads it; pvebalance bounds vCPUs per core with balancing.cpu_overcommit"),
    "proxmox_cluster.maintenance_nodes_schedule": Dropped("no weekly maintenance windows in this pvebalance version"),
    "balancing.enable": To("balancing.enable"),
    "balancing.enforce_affinity": To("balancing.enforce_affinity", _enforce(_AFFINITY_DIFFERS)),  # never written
    "balancing.enforce_pinning": To("balancing.enforce_pinning", _enforce(_PINNING_DIFFERS)),
    "balancing.parallel": To("migrator.max_parallel_cluster", _parallel),
    "balancing.parallel_jobs": To("migrator.max_parallel_cluster", _parallel),
    "balancing.live": To("balancing.live"),
    "balancing.with_local_disks": To("balancing.with_local_disks"),
    "balancing.with_conntrack_state": Dropped("pvebalance does not ask for conntrack-state migration"),
    "balancing.balance_types": To("balancing.balance_types"),
    "balancing.max_job_validation": To("migrator.task_timeout_base",
                                       note="pvebalance adds migrator.task_timeout_per_gib for each GiB copied"),
    "balancing.memory_threshold": To("balancing.threshold.memory", note=_GATE),
    "balancing.cpu_threshold": To("balancing.threshold.cpu", note=_GATE),
    "balancing.disk_threshold": To("balancing.threshold.disk", note=_GATE),
    "balancing.balanciness": To("balancing.balanciness"),
    "balancing.method": To("balancing.method"),
    "balancing.mode": To("balancing.mode", _mode),
    "balancing.balance_larger_guests_first": Dropped(
        "pvebalance picks the move that lowers the spread most, then the fewest and smallest moves"),
    "balancing.node_resource_reserve.*.memory": To("balancing.node_resource_reserve.{0}.memory"),
    "balancing.node_resource_reserve.*.cpu": To("balancing.node_resource_reserve.{0}.cpu"),
    "balancing.node_resource_reserve.*.disk": To("balancing.node_resource_reserve.{0}.disk"),
    "balancing.psi": Dropped("pvebalance does not balance on PSI thresholds"),
    "balancing.psi_thresholds": Dropped("pvebalance does not balance on PSI thresholds"),
    "balancing.pools.*.type": To("balancing.pools.{0}.type"),
    "balancing.pools.*.pin": To("balancing.pools.{0}.pin"),
    "balancing.pools.*.strict": To("balancing.pools.{0}.strict"),
    "balancing.ignore_guests": To("balancing.ignore_guests"),
    "balancing.cpu_overcommit": To("balancing.cpu_overcommit"),
    "balancing.max_node_inflow": To("balancing.max_migrations_per_target"),
    "service.daemon": Dropped(_SERVICES + "; `pvebalance rebalance` is the one-shot"),
    "service.schedule": To("planner.interval", _schedule, note=_SCHEDULE_NOTE),
    "service.delay": Dropped("pvebalance plans from its first snapshot on; no start-up delay"),
    "service.enable_ha": Dropped("pvebalance runs beside the cluster, not on a PVE node; its jobs live in Redis"),
    "service.log_level": To("logging.level", _log_level),
    "solver": Dropped("pvebalance's exact solver is built in (balancing.exact_seconds), never a shadow run"),
}

# ProxLB 1.1+/2.x defaults that differ from pvebalance's and change what is migrated (its config
# model: balancing.enable False, balance_types [], balanciness 10, parallel False).
YAML_DEFAULTS: dict[str, Any] = {
    "balancing.enable": False,
    "balancing.balance_types": [],
    "balancing.balanciness": 10,
    "balancing.parallel": False,
    "service.schedule": {"interval": 12, "format": "hours"},
}
# ProxLB settings whose default (off) behaves otherwise than pvebalance, said when the file leaves them out
YAML_DIFFERING_DEFAULTS = {"balancing.enforce_affinity": _AFFINITY_DIFFERS,
                           "balancing.enforce_pinning": _PINNING_DIFFERS}

INI_KEYS: dict[str, To | Dropped] = {
    "proxmox.api_host": To("proxmox_api.hosts", _csv),
    "proxmox.api_user": To("proxmox_api.user"),
    "proxmox.api_pass": To("proxmox_api.pass"),
    "proxmox.verify_ssl": To("proxmox_api.ssl_verification", _flag),
    "proxmox.timeout": To("proxmox_api.timeout", _number),
    "vm_balancing.enable": To("balancing.enable", _flag),
    "vm_balancing.method": To("balancing.method"),
    "vm_balancing.mode": To("balancing.mode"),
    "vm_balancing.mode_option": Dropped("pvebalance always compares nodes in percent of their size"),
    "vm_balancing.type": To("balancing.balance_types", _types),
    "vm_balancing.balanciness": To("balancing.balanciness", _number),
    "vm_balancing.parallel_migrations": To("migrator.max_parallel_cluster", _parallel_1x),
    "vm_balancing.maintenance_nodes": To("proxmox_cluster.maintenance_nodes", _csv),
    "vm_balancing.ignore_nodes": To("proxmox_cluster.ignore_nodes", _csv),
    "vm_balancing.ignore_vms": To("balancing.ignore_guests", _exact_names),
    "storage_balancing": Dropped("pvebalance does not move disks between shared storages"),
    "update_service": Dropped("pvebalance does not update nodes"),
    "api": Dropped("ProxLB 1.0's API switch; pvebalance has no such switch"),
    "service.daemon": Dropped(_SERVICES),
    "service.schedule": To("planner.interval", _schedule, note=_SCHEDULE_NOTE),
    "service.master_only": Dropped("pvebalance runs beside the cluster, not on its nodes"),
    "service.log_verbosity": To("logging.level", _log_level),
    "service.config_version": Dropped("ProxLB's own schema version"),
}


# --- reading and mapping -----------------------------------------------------------------------

_INI_SECTION = re.compile(r"^\s*\[[A-Za-z_][A-Za-z0-9_]*\]\s*$")


def read_proxlb(path: Path) -> ProxlbImport:
    """Read a ProxLB config file (either format) and map it; raises ProxlbConfigError when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ProxlbConfigError(f"cannot read {path}: {why}") from None
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", ";"))), "")
    if _INI_SECTION.match(first):
        return with_redis(map_keys(_read_ini(path, text), INI_KEYS, "ProxLB 1.0 INI", {}))
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProxlbConfigError(f"{path} is neither ProxLB YAML nor INI: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(doc, dict):
        raise ProxlbConfigError(f"{path} holds no ProxLB settings (expected a mapping of sections)")
    result = map_keys(doc, YAML_KEYS, "ProxLB YAML (1.1+, 2.x)", YAML_DEFAULTS)
    section = doc.get("balancing")
    balancing: dict[str, Any] = section if isinstance(section, dict) else {}
    for key, differs in YAML_DIFFERING_DEFAULTS.items():
        if key.split(".")[1] not in balancing:
            result.unmapped.append((f"{key} (not set: ProxLB's default is off)", differs))
    return with_redis(result)


def with_redis(result: ProxlbImport) -> ProxlbImport:
    """pvebalance keeps its state in Redis, which ProxLB never had: the section is written, so the
    operator sees where the services will look."""
    if "redis" not in result.config:
        url = RedisSettings().url
        result.config["redis"] = {"url": url}
        result.added.append(("redis.url", f"{url} (pvebalance's default, the redis-server package's): ProxLB "
                                          "kept no state; pvebalance keeps its plans, jobs and requests in Redis"))
    return result


def _read_ini(path: Path, text: str) -> dict[str, Any]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        raise ProxlbConfigError(f"{path}: {' '.join(str(exc).split())[:200]}") from None
    return {name: dict(parser[name]) for name in parser.sections()}


def map_keys(doc: dict[str, Any], table: dict[str, To | Dropped], source_format: str,
             defaults: dict[str, Any]) -> ProxlbImport:
    result = ProxlbImport(source_format)
    for key, value in defaults.items():
        *parents, name = key.split(".")
        section: Any = doc
        for parent in parents:
            section = section.get(parent) if isinstance(section, dict) else None
        if isinstance(section, dict) and name in section:
            continue
        rule, _ = _rule(table, tuple(key.split(".")))
        assert isinstance(rule, To), key  # a default is only kept for a key that maps
        converted = rule.convert(value, section if isinstance(section, dict) else {})
        result.defaults.append((key, value, rule.key, converted))
        _put(result.config, rule.key.split("."), converted)
    for path, value, section in _leaves(doc, table, ()):
        rule, names = _rule(table, path)
        key = ".".join(path)
        if rule is None:
            result.unknown.append(key)
        elif isinstance(rule, Dropped):
            result.unmapped.append((key, rule.why))
        else:
            try:
                converted = rule.convert(value, section)
            except NoCounterpart as exc:
                result.unmapped.append((key, str(exc)))
                continue
            target = rule.key.format(*names)
            if isinstance(converted, PartlyMapped):
                result.unmapped.append((f"{key} ({converted.left_out})", converted.why))
                converted = converted.value
            result.mapped.append((key, target))
            if rule.note:
                result.notes.append((key, rule.note))
            _put(result.config, target.split("."), converted)
    return result


def _leaves(doc: dict[str, Any], table: dict[str, To | Dropped],
            prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any, dict[str, Any]]]:
    """Each key the table has a rule for (a whole subtree for a Dropped one) or an unknown leaf."""
    for name, value in doc.items():
        path = (*prefix, str(name))
        if _rule(table, path)[0] is None and isinstance(value, dict | None) and _may_match_below(table, path):
            yield from _leaves(value or {}, table, path)  # None: a section written with nothing in it
        else:
            yield path, value, doc


def _rule(table: dict[str, To | Dropped], path: tuple[str, ...]) -> tuple[To | Dropped | None, list[str]]:
    """The rule for this key path, and the names its `*` segments matched."""
    for pattern, rule in table.items():
        parts = pattern.split(".")
        if len(parts) == len(path) and all(p in ("*", k) for p, k in zip(parts, path, strict=True)):
            return rule, [k for p, k in zip(parts, path, strict=True) if p == "*"]
    return None, []


def _may_match_below(table: dict[str, To | Dropped], path: tuple[str, ...]) -> bool:
    for pattern in table:
        parts = pattern.split(".")
        if len(parts) > len(path) and all(p in ("*", k) for p, k in zip(parts, path, strict=False)):
            return True
    return False


def _put(config: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        config = config.setdefault(key, {})
    config[keys[-1]] = value


# The settings model's fields and checks without its sources: validating a BaseSettings would also
# read the PVEBALANCE_* variables of this shell, which are not part of the file being written.
_SettingsData = create_model(  # type: ignore[call-overload]
    "SettingsData", __config__=ConfigDict(extra="forbid"),
    **{name: (info.annotation, info) for name, info in Settings.model_fields.items()},
)


def validate(result: ProxlbImport) -> list[str]:
    """What the settings model refuses in the converted config (empty when `config check` accepts it)."""
    try:
        _SettingsData.model_validate(result.config)
    except ValidationError as exc:
        return describe_problems(exc)
    return []


def to_yaml(result: ProxlbImport, source: Path) -> str:
    header = f"# pvebalance config converted from {source.name} ({result.source_format}) by import-proxlb-config\n"
    order = list(Settings.model_fields)  # sections in the order of pvebalance's own config
    config = dict(sorted(result.config.items(), key=lambda item: order.index(item[0])))
    body: str = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    return header + body
