"""The cluster under test: a redis-server of the run's own (append-only file, fsync always), the
simulator in this process (all-on-one; storage-3 with storage balancing on for a disk-move run), and
the services as real processes started with their CLI (`python -m pvebalance collector|planner|migrator
-c CONFIG`), each replaced when killed, as systemd would."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis import Redis

from pvebalance.shared import keys
from pvebalance.shared.apidump import load_dump
from pvebalance.simulator.server import Simulator
from tests.helpers import REPO, OwnRedis, write_config

NODES = ("pve1", "pve2", "pve3", "pve4")  # all-on-one's
DRAINED = "pve1"  # the node a migration run drains
SCENARIOS = {False: "all-on-one", True: "storage-3"}  # by whether the run balances storages
STORAGE_GROUP = ("nfs-a", "nfs-b", "nfs-c")  # storage-3's shared storages, balanced against each other


@dataclass(frozen=True)
class Limits:
    cluster: int = 2
    per_source: int = 2
    per_target: int = 1
    per_storage: int = 2  # storage_balancing.max_parallel_per_storage (a disk-move run)


def children(pid: int) -> list[int]:
    """The child processes of pid (rq's work-horses of a worker), from /proc."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


def alive(pid: int) -> bool:
    """Running and not a zombie (a killed child we have not reaped yet is not alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def ours(pid: int) -> bool:
    """A pvebalance process (so a pid reused by something else is never signalled)."""
    try:
        return b"pvebalance" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@dataclass
class Service:
    """One service instance slot; each (re)start is a new generation with its own log file."""

    name: str
    role: str  # collector | planner | migrator
    config: Path
    logdir: Path
    proc: subprocess.Popen[bytes] | None = None
    generation: int = 0
    logs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        self.generation += 1
        path = self.logdir / f"{self.name}.{self.generation}.log"
        self.logs.append(path)
        with path.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "pvebalance", self.role, "-c", str(self.config)],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL this process only (an rq work-horse is in its own process group and lives on)."""
        if self.running():
            os.kill(self.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, grace: float = 10) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, lines: int = 15) -> str:
        if not self.logs or not self.logs[-1].exists():
            return ""
        return "\n".join(self.logs[-1].read_text(errors="replace").splitlines()[-lines:])


class Harness:
    """Redis, the simulator and the services of one run."""

    def __init__(self, workdir: Path, time_scale: float, limits: Limits, workers: int = 4,
                 api_timeout: float = 2.0, slot_ttl: float = 90.0, storage: bool = False) -> None:
        self.workdir = workdir
        self.logdir = workdir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        (workdir / "redis").mkdir(exist_ok=True)
        self.redis_server = OwnRedis(workdir / "redis", appendonly=True)
        # Secrets of this run only, so finding one anywhere is a leak, not a coincidence.
        self.token_secret = str(uuid.uuid4())
        self.password = "pw-" + secrets.token_hex(12)
        self.storage = storage
        self.sim = Simulator(load_dump(REPO / "pvebalance" / "scenarios" / f"{SCENARIOS[storage]}.json"),
                             users={"root@pam": self.password}, tokens={"root@pam!pvebalance": self.token_secret},
                             time_scale=time_scale)
        self.limits = limits
        self.workers = workers
        self.api_timeout = api_timeout
        self.slot_ttl = slot_ttl
        self.services: list[Service] = []
        self.orphans: set[int] = set()  # work-horses whose worker was killed alone
        self.max_node_usage = 95.0
        self.nodes = tuple(sorted(self.sim.cluster.nodes))
        self.drained = None if storage else DRAINED  # a disk-move run fills a storage instead
        self.max_usage = 90.0  # storage_balancing's
        self.balanciness = 10.0

    # --- set-up and tear-down ---------------------------------------------------------------------

    def sections(self) -> dict[str, dict[str, Any]]:
        return {
            "proxmox_api": {"timeout": self.api_timeout},
            "collector": {"interval": 1},
            # Time-scaled like the migrations: after failed moves the planner waits 10 s, not 60.
            "planner": {"retry_after_failure": 10},
            # A killed collector's or planner's replacement waits for the old leader lock to expire.
            "leader": {"lock_ttl": 3},
            "balancing": {"max_node_usage": self.max_node_usage},
            "migrator": {"max_parallel_cluster": self.limits.cluster,
                         "max_parallel_per_source": self.limits.per_source,
                         "max_parallel_per_target": self.limits.per_target,
                         "slot_ttl": self.slot_ttl, "poll_interval": 0.1,
                         "slot_wait_timeout": 300, "task_timeout_base": 60},
            "logging": {"format": "json", "level": "INFO"},
            **({"storage_balancing": {"enable": True, "max_usage": self.max_usage, "balanciness": self.balanciness,
                                      "max_parallel_per_storage": self.limits.per_storage}} if self.storage else {}),
        }

    def start(self) -> None:
        self.redis_server.start()
        self.sim.start(0, certdir=self.workdir / "certs")
        token = write_config(self.workdir / "token.yaml", self.sim, self.redis_server.url, **self.sections())
        # Half of the workers log in with the password (tickets, re-login on a 401), half use the token.
        password = self.workdir / "password.yaml"
        config = yaml.safe_load(token.read_text())
        config["proxmox_api"].update({"token_id": None, "token_secret": None, "pass": self.password})
        password.write_text(yaml.safe_dump(config))
        self.services = [Service("collector", "collector", token, self.logdir),
                         Service("planner", "planner", token, self.logdir)]
        self.services += [Service(f"worker-{i}", "migrator", password if i % 2 else token, self.logdir)
                          for i in range(self.workers)]
        for s in self.services:
            s.start()

    def stop_services(self) -> None:
        """SIGTERM every service (so its log is flushed), then SIGKILL any work-horse left over."""
        horses = [h for s in self.services if s.running() for h in children(s.pid)]
        for s in self.services:
            if s.running():
                assert s.proc is not None
                s.proc.terminate()
        for s in self.services:
            s.stop()
        for pid in sorted(self.orphans) + horses:
            if alive(pid) and ours(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        self.stop_services()
        self.sim.stop()
        self.redis_server.stop()

    # --- what the suite reads ---------------------------------------------------------------------

    def redis(self) -> Redis:
        """A client that gives up fast while the server is away (the suite must not hang on it)."""
        return Redis.from_url(self.redis_server.url, socket_connect_timeout=1, socket_timeout=5)

    def redis_up(self) -> bool:
        proc = self.redis_server.proc
        return proc is not None and proc.poll() is None

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def migrators(self) -> list[Service]:
        return [s for s in self.services if s.role == "migrator"]

    def horses(self) -> list[tuple[Service, int, str | None]]:
        """(worker, work-horse pid, the job it runs as far as Redis says) for every running horse."""
        found = [(w, h) for w in self.migrators() if w.running() for h in children(w.pid) if alive(h)]
        jobs: dict[int, str] = {}
        if found and self.redis_up():
            try:
                r = self.redis()
                for key in r.smembers(keys.ACTIVE_JOBS):
                    job_id = key.decode()
                    name = r.hget(f"rq:job:{job_id}", "worker_name")
                    m = re.search(rb"-(\d+)-[0-9a-f]{6}$", name or b"")
                    if m:
                        jobs[int(m.group(1))] = job_id
            except Exception:  # Redis away or restarting: the job is only informational
                pass
        return [(w, h, jobs.get(w.pid)) for w, h in found]

    def redis_kill(self, hard: bool) -> None:
        proc = self.redis_server.proc
        if proc is None or proc.poll() is not None:
            return
        if hard:
            proc.kill()
            proc.wait(10)
        else:
            self.redis_server.stop()

    def redis_start(self) -> None:
        if self.redis_up():
            return
        for attempt in range(3):
            try:
                self.redis_server.start()
                return
            except (Exception, pytest.fail.Exception):  # OwnRedis fails through pytest.fail
                if attempt == 2:
                    raise
                time.sleep(1)
