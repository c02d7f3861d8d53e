"""Helpers shared by the tests: settings pointing at a simulator, config files, worker processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pvebalance.shared.config import ProxmoxApiSettings, Settings, load_settings
from pvebalance.simulator.server import Simulator

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = sorted(p.stem for p in (REPO / "scenarios").glob("*.json"))
SimFactory = Callable[..., Simulator]


def api_settings(sim: Simulator, **overrides: Any) -> ProxmoxApiSettings:
    ident, secret = next(iter(sim.tokens.items()))
    user, token_id = ident.split("!")
    values: dict[str, Any] = {"hosts": [f"127.0.0.1:{sim.port}"], "user": user, "token_id": token_id,
                              "token_secret": secret, "ca_file": sim.cafile}
    values.update(overrides)
    return ProxmoxApiSettings(**values)


def write_config(path: Path, sim: Simulator, redis_url: str, **sections: dict[str, Any]) -> Path:
    api = api_settings(sim)
    config: dict[str, Any] = {
        "proxmox_api": {"hosts": api.hosts, "user": api.user, "token_id": api.token_id,
                        "token_secret": api.token_secret.get_secret_value() if api.token_secret else None,
                        "ca_file": str(api.ca_file)},
        "redis": {"url": redis_url},
        "migrator": {"poll_interval": 0.05, "slot_ttl": 10},
        "logging": {"format": "json"},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return path


def settings_for(sim: Simulator, redis_url: str, tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    return load_settings(write_config(tmp_path / "pvebalance.yaml", sim, redis_url, **sections))


def start_workers(
    config: Path, count: int, burst: bool = True, log_dir: Path | None = None
) -> list[subprocess.Popen[bytes]]:
    """Real rq worker processes, as `pvebalance migrator` starts them."""
    args = [sys.executable, "-m", "pvebalance", "migrator", "-c", str(config)] + (["--burst"] if burst else [])
    procs = []
    for i in range(count):
        out = (log_dir / f"worker-{i}.log").open("wb") if log_dir else subprocess.DEVNULL
        procs.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT))
    return procs
