"""A real Redis master, a replica and three sentinels on free localhost ports, for the failover tests
(`redis-server --sentinel` runs a sentinel; Debian's redis-sentinel package is the same binary)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from redis import Redis

from pvebalance.demo.embedded_redis import free_port

MASTER_NAME = "pvebalance"
DOWN_AFTER_MS = 1000  # a stopped master is noticed within a second (Sentinel's default is 30 s)


class RedisHA:
    """The master keeps acknowledged writes with min-replicas-to-write 1 (docs/operations.md, Redis):
    an old master cut off from its replica refuses writes instead of taking writes it will drop."""

    def __init__(self, workdir: Path, password: str = "", min_replicas: int = 1) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("these tests need redis-server on PATH")
        self.binary, self.workdir, self.password, self.min_replicas = binary, workdir, password, min_replicas
        self.ports = {"a": free_port(), "b": free_port()}
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _auth(self) -> list[str]:
        return ["--requirepass", self.password, "--masterauth", self.password] if self.password else []

    def start_server(self, name: str, replica_of: int | None = None) -> None:
        port = self.ports[name]
        args = [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir), "--dbfilename", f"{name}.rdb",
                "--min-replicas-to-write", str(self.min_replicas), "--min-replicas-max-lag", "5",
                "--repl-ping-replica-period", "1", "--repl-diskless-sync-delay", "0", *self._auth()]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.procs[name] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait(lambda: self.server(name).ping())

    def start(self) -> None:
        self.start_server("a")
        self.start_server("b", replica_of=self.ports["a"])
        self._wait(lambda: self.server("a").info("replication")["min_slaves_good_slaves"] >= 1)
        for i, port in enumerate(self.sentinel_ports):
            conf = self.workdir / f"sentinel-{i}.conf"  # a sentinel rewrites its config: one file each
            lines = [f"port {port}", "bind 127.0.0.1", f"dir {self.workdir}",
                     f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.ports['a']} 2",
                     f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                     f"sentinel failover-timeout {MASTER_NAME} 10000",
                     f"sentinel parallel-syncs {MASTER_NAME} 1"]
            if self.password:
                lines.append(f"sentinel auth-pass {MASTER_NAME} {self.password}")
            conf.write_text("\n".join(lines) + "\n")
            self.procs[f"sentinel-{i}"] = subprocess.Popen([self.binary, str(conf), "--sentinel"],
                                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait(lambda: all(self.sentinel(i).sentinel_master(MASTER_NAME)["num-other-sentinels"] == 2
                               and self.sentinel(i).sentinel_master(MASTER_NAME)["num-slaves"] >= 1
                               for i in range(3)), timeout=30)

    def server(self, name: str) -> Redis:
        return Redis(port=self.ports[name], password=self.password or None, socket_timeout=5)

    def sentinel(self, i: int) -> Redis:
        return Redis(port=self.sentinel_ports[i], socket_timeout=5, decode_responses=True)

    @property
    def sentinels(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.sentinel_ports]

    def master_port(self) -> int:
        return int(self.sentinel(0).sentinel_get_master_addr_by_name(MASTER_NAME)[1])

    def master(self) -> str:
        return next(n for n, p in self.ports.items() if p == self.master_port())

    def failover(self, timeout: float = 30) -> str:
        """Sentinel promotes the replica; returns the new master's name once every sentinel and both
        servers agree (the old master a replica of the new one, in sync)."""
        old = self.master()
        self.sentinel(0).execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        new = next(n for n in self.ports if n != old)

        def settled() -> bool:
            ok = all(int(self.sentinel(i).sentinel_get_master_addr_by_name(MASTER_NAME)[1]) == self.ports[new]
                     for i in range(3))
            info = self.server(old).info("replication")
            return ok and info["role"] == "slave" and info.get("master_link_status") == "up"

        self._wait(settled, timeout=timeout)
        return new

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    @staticmethod
    def _wait(check: object, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if check():  # type: ignore[operator]
                    return
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(0.05)
        raise AssertionError(f"Redis HA set-up not ready within {timeout} s (last error: {last})")
