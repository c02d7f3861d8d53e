"""Helpers shared by the tests: settings pointing at a simulator, config files, worker processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis import Redis

from pvebalance.demo.embedded_redis import free_port
from pvebalance.shared.config import PlannerSettings, ProxmoxApiSettings, Settings, load_settings
from pvebalance.simulator.server import Simulator

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = sorted(p.stem for p in (REPO / "pvebalance" / "scenarios").glob("*.json"))
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
        # the simulator's node figures lag by its figure_lag times its time scale: so does their settling
        "planner": {"settle_seconds": PlannerSettings().settle_seconds * sim.cluster.time_scale},
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


class OwnRedis:
    """A redis-server of the test's own, on a free port; with appendonly it survives restarts."""

    def __init__(self, workdir: Path, appendonly: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("these tests need redis-server on PATH (or PVEBALANCE_TEST_REDIS_URL)")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.persist = ["--appendonly", "yes", "--appendfsync", "always"] if appendonly else ["--appendonly", "no"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      *self.persist, "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except Exception:
                time.sleep(0.05)
        self.stop()
        pytest.fail("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def descendants(pid: int) -> list[int]:
    """Every process below pid (rq's work-horse calls setsid, so it is not in its worker's group)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker and its work-horse at once, as a crashed machine would stop them."""
    import contextlib
    import os
    import signal

    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)


def stop_services(stop: threading.Event, threads: list[threading.Thread], procs: list[subprocess.Popen[bytes]],
                  timeout: float = 120) -> None:
    """Stop in-process services (a collector's, a planner's thread) and wait until each has ended, then
    kill the worker processes (`kill_tree`) whatever happened. A thread left running logs into the next
    test's closed capture ("I/O operation on closed file"); a planner amid a plan finishes it first,
    which on two busy cores took longer than 10 s. One still running after `timeout` fails the test."""
    try:
        stop.set()
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(deadline - time.monotonic(), 0))
        alive = [t.name for t in threads if t.is_alive()]
        assert not alive, f"service threads still running {timeout:.0f} s after their stop: {alive}"
    finally:
        for p in procs:
            kill_tree(p)
