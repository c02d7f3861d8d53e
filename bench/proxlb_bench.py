"""ProxLB 2.3.0 beside pvebalance, on the same clusters, judged by the same yardstick.

ProxLB is installed from PyPI into bench/.venv-proxlb (never vendored) and run in dry-run JSON
mode (`python -m proxlb -c CFG -d -j`) against the project's simulator serving each scenario, so
this is also a test of the simulator's fidelity. Its 0.1 s sleeps between API calls are switched
off by a small launcher (they would only measure waiting). Its plan (every guest whose
node_target differs from node_current, in its JSON order) is replayed on the snapshot with
pvebalance's own load model and rule checker.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from pvebalance.engine import Policy, plan_balance
from pvebalance.engine.load import initial_loads, summarize
from pvebalance.engine.rules import build_constraints
from pvebalance.engine.verify import find_violations
from pvebalance.shared.apidump import operator_pools
from pvebalance.shared.models import ClusterSnapshot, GuestType, Migration, MigrationReason, Plan
from pvebalance.shared.scenario import load_scenario
from pvebalance.simulator.server import Simulator

VERSION = "2.3.0"
VENV = Path(__file__).parent / ".venv-proxlb"
LAUNCHER = "import runpy, time; time.sleep = lambda s: None; runpy.run_module('proxlb', run_name='__main__')"
COLUMNS = [("scenario", "scenario"), ("tool", "tool"), ("status", "status"), ("spread_after", "spread after"),
           ("migrations", "migr."), ("gib_moved", "GiB moved"), ("rules_broken", "rules broken"),
           ("seconds", "seconds")]


def ensure_proxlb() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    check = f"import importlib.metadata as m; assert m.version('proxlb') == '{VERSION}'"
    probe = subprocess.run([str(python), "-c", check], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"proxlb=={VERSION}"], check=True)
    return python


def proxlb_config(sim: Simulator, pools: dict[str, Any]) -> dict[str, Any]:
    ident, secret = next(iter(sim.tokens.items()))
    user, token = ident.split("!")
    return {
        "proxmox_api": {"hosts": [f"127.0.0.1:{sim.port}"], "user": user, "token_id": token,
                        "token_secret": secret, "ssl_verification": False, "timeout": 30},
        "proxmox_cluster": {"maintenance_nodes": [], "ignore_nodes": []},
        "balancing": {"enable": True, "method": "memory", "mode": "used", "balanciness": 5,
                      "balance_types": ["vm", "ct"], "max_node_inflow": None, "pools": pools or None},
        "service": {"daemon": False, "log_level": "WARNING"},
    }


def plan_from_proxlb(doc: dict[str, Any], snapshot: ClusterSnapshot, policy: Policy) -> Plan:
    guests = {g.vmid: g for g in snapshot.guests}
    targets = [n.name for n in snapshot.nodes if n.online and not n.maintenance]
    loads = initial_loads(snapshot, policy)
    before = summarize(loads, targets)
    migrations = []
    for entry in doc.get("guests", {}).values():
        if entry["node_target"] == entry["node_current"]:
            continue
        g = guests[int(entry["id"])]
        migrations.append(Migration(vmid=g.vmid, name=g.name, type=g.type, source=entry["node_current"],
                                    target=entry["node_target"], reason=MigrationReason.BALANCE,
                                    online=g.type is GuestType.QEMU and g.running, mem_bytes=g.mem,
                                    local_disk_bytes=g.local_disk))
        load = g.mem if g.running else 0
        loads[entry["node_current"]].load -= load
        loads[entry["node_target"]].load += load
    return Plan(method="memory", mode="used", balanciness=policy.balanciness, before=before,
                after=summarize(loads, targets), migrations=migrations)


def run_one(name: str, python: Path, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    recorded = load_scenario(name)
    doc, snapshot = recorded.doc, recorded.snapshot
    policy = Policy.from_settings(recorded.balancing())
    constraints = build_constraints(snapshot, policy)
    ours_started = time.perf_counter()
    ours = plan_balance(snapshot, policy)
    ours_row = {"scenario": name, "tool": "pvebalance", "status": "ok", "spread_after": ours.after.spread_pp,
                "migrations": len(ours.migrations), "gib_moved": round(sum(m.gib_moved for m in ours.migrations), 1),
                "rules_broken": len(ours.violations), "seconds": round(time.perf_counter() - ours_started, 3)}
    sim = Simulator(doc, host_variation=0)  # the same figures for ProxLB as the independent replay
    sim.start(0, certdir=workdir / "certs")
    cfg = workdir / f"proxlb-{name}.yaml"
    cfg.write_text(yaml.safe_dump(proxlb_config(sim, operator_pools(doc))))
    started = time.perf_counter()
    try:
        out = subprocess.run([str(python), "-c", LAUNCHER, "-c", str(cfg), "-d", "-j"],
                             capture_output=True, text=True, timeout=1800)
    finally:
        sim.stop()
    seconds = round(time.perf_counter() - started, 1)
    row: dict[str, Any] = {"scenario": name, "tool": f"ProxLB {VERSION}", "seconds": seconds}
    text = out.stdout
    try:
        result = json.loads(text[text.index("{"): text.rindex("}") + 1])
    except ValueError:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        row.update(status=f"failed: {tail[0][:120]}")
        return ours_row, row
    plan = plan_from_proxlb(result, snapshot, policy)
    violations = find_violations(snapshot, plan, policy, constraints)
    row.update(status="ok", spread_after=plan.after.spread_pp, migrations=len(plan.migrations),
               gib_moved=round(sum(m.gib_moved for m in plan.migrations), 1), rules_broken=len(violations),
               violations=violations[:20], requests=sum(sim.cluster.stats.requests.values()))
    return ours_row, row


def run(scenarios: list[str]) -> list[dict[str, Any]]:
    python = ensure_proxlb()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in scenarios:
            ours, theirs = run_one(name, python, Path(tmp))
            rows += [ours, theirs]
    return rows

