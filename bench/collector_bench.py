"""Requests and time per snapshot, first (cold config cache) and steady state, against the simulator.

The simulator runs in its own process, as a Proxmox API would: in this process its JSON encoding
would compete with the collector for the interpreter and be counted as the collector's time.
Each scenario is run twice: with an instant API (`--latency 0`) and with one that answers in
20 ms ± 50 % per request (`--latency 20`); both with pveproxy's 3 workers per node.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fakeredis

from pvebalance.demo.embedded_redis import free_port
from pvebalance.services.collector.collector import Collector
from pvebalance.shared.config import ProxmoxApiSettings
from pvebalance.shared.proxmox import ProxmoxClient
from pvebalance.simulator.server import Simulator

SCENARIOS = ["homelab", "mid-300", "large-5k", "xl-10k"]
LATENCIES_MS = [0, 20]
COLUMNS = [("scenario", "scenario"), ("latency_ms", "latency ms"), ("nodes", "nodes"), ("guests", "guests"),
           ("first_requests", "first: requests"), ("first_seconds", "first: s"),
           ("steady_requests", "steady: requests"), ("steady_seconds", "steady: s"), ("budget", "nodes + 10")]


def run(scenarios: list[str] | None = None, rounds: int = 3,
        latencies: list[int] | None = None) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in scenarios or SCENARIOS:
            for latency in latencies or LATENCIES_MS:
                rows.append(run_one(name, latency, rounds, Path(tmp) / f"{name}-{latency}"))
    return rows


def run_one(name: str, latency: int, rounds: int, certdir: Path) -> dict[str, Any]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "pvebalance", "simulator", "--scenario", name,
                               "--port", str(port), "--certdir", str(certdir), "--latency", str(latency)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(port)
        ident, secret = next(iter(Simulator.default_tokens().items()))
        user, token = ident.split("!")
        client = ProxmoxClient(ProxmoxApiSettings(hosts=[f"127.0.0.1:{port}"], user=user, token_id=token,
                                                  token_secret=secret, ca_file=certdir / "cert.pem"))
        collector = Collector(client, fakeredis.FakeRedis())
        started = time.perf_counter()
        snap = collector.snapshot()
        first = (client.requests, time.perf_counter() - started)
        steady = []
        for _ in range(rounds):
            before, started = client.requests, time.perf_counter()
            collector.snapshot()
            steady.append((client.requests - before, time.perf_counter() - started))
    finally:
        server.terminate()
        server.wait(10)
    return {"scenario": name, "latency_ms": latency, "nodes": len(snap.nodes), "guests": len(snap.guests),
            "first_requests": first[0], "first_seconds": round(first[1], 2),
            "steady_requests": max(r for r, _ in steady),
            "steady_seconds": round(sorted(s for _, s in steady)[len(steady) // 2], 3),
            "budget": len(snap.nodes) + 10}


def _wait_for(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the simulator did not start on port {port}")
