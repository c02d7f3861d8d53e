"""A simulated cluster with its services running and `pvebalance api` serving it, for the API's
integration and browser tests: simulator over HTTPS, redis-server, collector and planner (threads),
rq workers and the API (processes of their own)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from pvebalance.demo.embedded_redis import free_port
from pvebalance.services.collector.collector import run_collector
from pvebalance.services.planner.planner import run_planner
from pvebalance.shared import keys
from pvebalance.shared.config import load_settings
from pvebalance.shared.logging import configure_logging
from tests.api_helpers import OPS, token_settings
from tests.helpers import start_workers, stop_services, write_config


@dataclass
class LiveCluster:
    config: Path
    redis: Redis
    sim: Any
    url: str
    log_dir: Path
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers=OPS, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, headers=OPS, timeout=30, **kwargs)

    def start_workers(self, count: int) -> None:
        self.procs += start_workers(self.config, count, burst=False, log_dir=self.log_dir)

    def guests_on(self, node: str, running_only: bool = False) -> list[int]:
        return sorted(v for v, g in self.sim.cluster.guests.items()
                      if g.node == node and (g.running or not running_only))

    def close(self) -> None:
        stop_services(self.stop, self.threads, self.procs)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 90, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def start_live(sim: Any, redis: Redis, redis_url: str, tmp_path: Path, workers: int = 0,
               **sections: Any) -> LiveCluster:
    port = free_port()
    balancing = {"mode_of_operation": "manual", **sections.pop("balancing", {})}
    config = write_config(tmp_path / "pvebalance.yaml", sim, redis_url, collector={"interval": 0.5},
                          planner={"retry_after_failure": 2}, balancing=balancing,
                          api=token_settings(port=port), **sections)
    settings = load_settings(config)
    configure_logging("INFO", "json", stream=(tmp_path / "services.log").open("w", buffering=1))
    live = LiveCluster(config, redis, sim, f"http://127.0.0.1:{port}", tmp_path)
    live.threads = [threading.Thread(target=run, args=(settings, live.stop), daemon=True)
                    for run in (run_collector, run_planner)]
    for t in live.threads:
        t.start()
    api_log = (tmp_path / "api.log").open("wb")
    live.procs.append(subprocess.Popen([sys.executable, "-m", "pvebalance", "api", "-c", str(config)],
                                       stdout=api_log, stderr=subprocess.STDOUT))
    live.start_workers(workers)

    def api_up() -> bool:
        try:
            return httpx.get(live.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("the API to answer", api_up, 60)
    wait_for("a first snapshot", lambda: redis.get(keys.SNAPSHOT_LATEST) is not None)
    return live
