"""Requests and time per snapshot, first (cold config cache) and steady state, against the simulator."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import fakeredis

from pvebalance.services.collector.collector import Collector
from pvebalance.shared.apidump import load_dump
from pvebalance.shared.config import ProxmoxApiSettings
from pvebalance.shared.proxmox import ProxmoxClient
from pvebalance.simulator.server import Simulator

SCENARIOS = ["homelab", "mid-300", "large-5k", "xl-10k"]
COLUMNS = [("scenario", "scenario"), ("nodes", "nodes"), ("guests", "guests"),
           ("first_requests", "first: requests"), ("first_seconds", "first: s"),
           ("steady_requests", "steady: requests"), ("steady_seconds", "steady: s"), ("budget", "nodes + 10")]


def run(scenarios: list[str] | None = None, rounds: int = 3) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in scenarios or SCENARIOS:
            sim = Simulator(load_dump(name))
            sim.start(0, certdir=Path(tmp))
            ident, secret = next(iter(sim.tokens.items()))
            user, token = ident.split("!")
            client = ProxmoxClient(ProxmoxApiSettings(hosts=[f"127.0.0.1:{sim.port}"], user=user, token_id=token,
                                                      token_secret=secret, ca_file=sim.cafile))
            collector = Collector(client, fakeredis.FakeRedis())
            started = time.perf_counter()
            snap = collector.snapshot()
            first = (client.requests, time.perf_counter() - started)
            steady = []
            for _ in range(rounds):
                before, started = client.requests, time.perf_counter()
                collector.snapshot()
                steady.append((client.requests - before, time.perf_counter() - started))
            sim.stop()
            rows.append({"scenario": name, "nodes": len(snap.nodes), "guests": len(snap.guests),
                         "first_requests": first[0], "first_seconds": round(first[1], 2),
                         "steady_requests": max(r for r, _ in steady),
                         "steady_seconds": round(sorted(s for _, s in steady)[len(steady) // 2], 3),
                         "budget": len(snap.nodes) + 10})
    return rows
