"""Redis memory and the services' memory at xl-10k: the collector publishing 30 snapshots of it.

The simulator serves xl-10k (100 nodes, 10,000 guests with their disks, 200 storages) in its own
process; a redis-server of this bench's own; the collector (`collector.interval` 1 s) and the
planner (dry-run: it plans on every snapshot it may, stores the plan, enqueues nothing) run as
`pvebalance collector` and `pvebalance planner` processes, as they run in a container. Sampled each
second: Redis's used_memory and key count, and each service's resident memory (VmRSS; the peak is
the kernel's VmHWM). The limits are the Helm chart's (helm/pvebalance/values.yaml).

Issue 23's target: Redis at most 48 MB after 30 snapshots, a steady state that does not grow, and
each service within its chart limit.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from redis import Redis

from pvebalance.demo.embedded_redis import RedisServerProcess, free_port
from pvebalance.shared import keys
from pvebalance.simulator.server import Simulator

from .collector_bench import _wait_for

REPO = Path(__file__).resolve().parent.parent
COLUMNS = [("scenario", "scenario"), ("snapshots", "snapshots"), ("seconds", "s"),
           ("redis_mb", "Redis used MB"), ("redis_peak_mb", "Redis peak MB"), ("redis_mb_at_10", "MB at 10th"),
           ("keys", "keys"), ("snapshot_kb", "snapshot KB"), ("collector_mb", "collector RSS peak MB"),
           ("collector_limit_mb", "limit MB"), ("planner_mb", "planner RSS peak MB"),
           ("planner_limit_mb", "limit MB"), ("plans", "plans")]
TARGET_MB = 48


def helm_limit_mb(service: str) -> float:
    values = yaml.safe_load((REPO / "helm" / "pvebalance" / "values.yaml").read_text())
    limit = str(values[service]["resources"]["limits"]["memory"])
    units = {"Mi": 1, "Gi": 1024}
    return float(limit[:-2]) * units[limit[-2:]]


def rss_mb(pid: int) -> tuple[float, float]:
    """(now, peak) resident memory of a process, MiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def run(scenario: str = "xl-10k", snapshots: int = 30) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        return [run_one(scenario, snapshots, Path(tmp))]


def run_one(scenario: str, count: int, workdir: Path) -> dict[str, Any]:
    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "pvebalance", "simulator", "--scenario", scenario,
                            "--port", str(port), "--certdir", str(workdir / "certs"), "--latency", "0"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServerProcess("redis-server", workdir)
    services: dict[str, subprocess.Popen[bytes]] = {}
    try:
        _wait_for(port, timeout=300)
        ident, secret = next(iter(Simulator.default_tokens().items()))
        user, token = ident.split("!")
        config = workdir / "pvebalance.yaml"
        config.write_text(yaml.safe_dump({
            "proxmox_api": {"hosts": [f"127.0.0.1:{port}"], "user": user, "token_id": token, "token_secret": secret,
                            "ca_file": str(workdir / "certs" / "cert.pem"), "timeout": 60},
            "redis": {"url": server.url}, "collector": {"interval": 1},
            "balancing": {"mode_of_operation": "dry-run"}, "logging": {"format": "json"}}))
        for service in ("collector", "planner"):
            services[service] = subprocess.Popen([sys.executable, "-m", "pvebalance", service, "-c", str(config)],
                                                 stdout=(workdir / f"{service}.log").open("wb"),
                                                 stderr=subprocess.STDOUT)
        redis = Redis.from_url(server.url)
        started = time.monotonic()
        at_10 = 0.0
        while published(redis) < count:
            if any(p.poll() is not None for p in services.values()):
                raise RuntimeError(f"a service ended early: see {workdir}/*.log")
            if time.monotonic() - started > 1800:
                raise RuntimeError(f"{count} snapshots not published within 30 minutes")
            if not at_10 and published(redis) >= 10:
                at_10 = used_mb(redis)
            for proc in services.values():
                rss_mb(proc.pid)
            time.sleep(1)
        seconds = time.monotonic() - started
        memory = redis.info("memory")
        latest = redis.get(keys.SNAPSHOT_LATEST) or b""
        peaks = {name: rss_mb(proc.pid)[1] for name, proc in services.items()}
        return {"scenario": scenario, "snapshots": published(redis), "seconds": round(seconds),
                "redis_mb": round(memory["used_memory"] / 2**20, 1),
                "redis_peak_mb": round(memory["used_memory_peak"] / 2**20, 1), "redis_mb_at_10": round(at_10, 1),
                "keys": redis.dbsize(), "snapshot_kb": round(len(latest) / 1024),
                "collector_mb": round(peaks["collector"]), "collector_limit_mb": helm_limit_mb("collector"),
                "planner_mb": round(peaks["planner"]), "planner_limit_mb": helm_limit_mb("planner"),
                "plans": redis.zcard(keys.PLAN_INDEX)}
    finally:
        for proc in services.values():
            proc.terminate()
        for proc in services.values():
            proc.wait(30)
        server.stop()
        sim.terminate()
        sim.wait(30)


def published(redis: Redis) -> int:
    """Snapshots published so far: the stream's entries-added (it keeps only the newest few)."""
    try:
        return int(redis.xinfo_stream(keys.SNAPSHOT_STREAM)["entries-added"])
    except Exception:  # no stream yet
        return 0


def used_mb(redis: Redis) -> float:
    return float(redis.info("memory")["used_memory"]) / 2**20
