"""A recorded cluster to plan on: its snapshot, and the settings to plan it with.

`pvebalance plan --scenario`, `best-node --scenario`, the demo and the benchmarks read a
pve-api-dump/1 file the same way: the snapshot from its API answers (a file that cannot be used
names the scenario), and the pool rules recorded with the cluster when the operator's settings name
none.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .apidump import DumpError, load_dump, operator_pools, snapshot_from_api
from .config import BalancingSettings, ConfigError, Settings, load_settings
from .models import ClusterSnapshot


@dataclass(frozen=True)
class Scenario:
    source: str
    doc: dict[str, Any]
    snapshot: ClusterSnapshot

    @property
    def pools(self) -> dict[str, dict[str, Any]]:
        """The pool rules recorded with the cluster (`balancing.pools` form)."""
        return operator_pools(self.doc)

    def balancing(self, base: BalancingSettings | None = None, **overrides: Any) -> BalancingSettings:
        """`base` (default: the defaults) with the recorded pool rules when it names none, then `overrides`."""
        fields = (base or BalancingSettings()).model_dump()
        if not fields.get("pools") and self.pools:
            fields["pools"] = self.pools
        return BalancingSettings.model_validate({**fields, **overrides})

    def settings(self, config: Path | None, **balancing: Any) -> Settings:
        """The settings of `config` (None: the defaults) with the recorded pool rules when they name none,
        then `balancing` (a command's options); ConfigError names a bad value, as for the file's own."""
        settings = load_settings(config)
        fields = {"pools": self.pools} if not settings.balancing.pools and self.pools else {}
        fields.update(balancing)
        if not fields:
            return settings
        try:
            return load_settings(config, balancing={**settings.balancing.model_dump(), **fields})
        except ConfigError as exc:  # the settings alone were valid: a command's option is wrong, named as typed
            problems = [_as_option(p, balancing) for p in exc.problems]
            raise ConfigError("invalid " + "; ".join(problems), problems) from None


def _as_option(problem: str, given: dict[str, Any]) -> str:
    """'balancing.method: unknown dimension ...' as '--method: unknown dimension ...' where the
    command's option set it."""
    key, sep, what = problem.partition(": ")
    name = key.removeprefix("balancing.").split(".")[0]
    return f"--{name.replace('_', '-')}: {what}" if sep and key.startswith("balancing.") and name in given else problem


def load_scenario(source: str | Path) -> Scenario:
    """A bundled scenario by name, or a pve-api-dump/1 file by path; DumpError names what is wrong."""
    doc = load_dump(source)
    try:
        snapshot = snapshot_from_api(doc["api"], cluster=doc["name"])
    except DumpError as exc:
        raise DumpError(f"scenario {source}: {exc}") from None
    return Scenario(str(source), doc, snapshot)


def bundled_scenarios() -> list[str]:
    """The names of the scenarios that ship with pvebalance."""
    return sorted(Path(str(p)).stem for p in resources.files("pvebalance.scenarios").iterdir()
                  if str(p).endswith(".json"))
