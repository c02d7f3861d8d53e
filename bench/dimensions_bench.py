"""The engine balancing memory and CPU at once (issue 19), part of `bench engine`: each dimension's
spread after the plan, the migrations, and beside them a reference:

- up to 500 guests the exact two-dimension minimum (pvebalance/engine/exact.py with a band per dimension, every
  rule of the scenario, no node over its memory limit), solved without a node limit for at most
  `exact_limit` seconds: a yardstick, not a plan, so it may depend on the machine's load; the issue's
  proven minima beside it (solved for longer than a bench should take);
- on large-5k and xl-10k a lower bound: the larger of the two one-dimension shed+fill bounds
  (engine_bench.shed_fill_lower_bound, each for its own dimension and band), and the plan's ratio to it.

And each method's planning time: in the process (`plan s`), and the whole `pvebalance plan
--scenario X --method M --json` process, imports and the dump's parsing included (one run each).
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from pvebalance.engine import Policy, plan_balance
from pvebalance.engine.exact import minimum_migrations
from pvebalance.shared.apidump import load_dump, operator_pools, snapshot_from_api
from pvebalance.shared.config import BalancingSettings
from pvebalance.shared.scenario import bundled_scenarios

from .engine_bench import shed_fill_lower_bound

BUNDLED = bundled_scenarios()
EXACT_GUESTS = 500
METHODS = ("memory", "cpu", "memory,cpu")
# The issue's two-dimension minima (memory and CPU each within 5 pp), proven optimal there.
ISSUE_MINIMA = {"homelab": 6, "all-on-one": 18, "tight": 7, "maintenance": 28, "mid-300": 18, "groups": 34}


def _policy(doc: dict[str, Any], method: str) -> Policy:
    return Policy.from_settings(BalancingSettings(pools=operator_pools(doc), method=method.split(","), balanciness=5))


def process_seconds(name: str, method: str) -> float:
    """One whole `pvebalance plan` process, as an operator runs it."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pvebalance", "plan", "--scenario", name, "--method", method, "--json"],
                   check=True, capture_output=True, timeout=600)
    return round(time.perf_counter() - started, 2)


def run(scenarios: list[str], exact_limit: float = 60.0) -> list[dict[str, Any]]:
    rows = []
    for name in scenarios:
        doc = load_dump(name)
        snapshot = snapshot_from_api(doc["api"], cluster=doc["name"])
        row: dict[str, Any] = {"scenario": name, "guests": len(snapshot.guests)}
        for method in METHODS:
            policy = _policy(doc, method)
            started = time.perf_counter()
            plan = plan_balance(snapshot, policy)
            row[f"{method}_seconds"] = round(time.perf_counter() - started, 3)
            row[f"{method}_process"] = process_seconds(name, method)
            if method == "memory,cpu":
                both, plan_both = policy, plan
        row.update(migrations=len(plan_both.migrations),
                   memory_after=plan_both.after.dimensions["memory"].spread_pp,
                   cpu_after=plan_both.after.dimensions["cpu"].spread_pp,
                   rules_broken=len(plan_both.violations), unmet=len(plan_both.unmet),
                   issue_minimum=ISSUE_MINIMA.get(name))
        if len(snapshot.guests) <= EXACT_GUESTS:
            exact = minimum_migrations(snapshot, both, node_limit=None, time_limit=exact_limit)
            label = "exact" if exact.status == "optimal" else f"MILP ({exact.status}, bound {exact.bound})"
            row.update(reference=label, reference_migrations=exact.migrations,
                       reference_seconds=round(exact.seconds, 1))
            best = min((m for m in (exact.migrations, ISSUE_MINIMA.get(name)) if m is not None), default=None)
        else:
            bounds = [shed_fill_lower_bound(snapshot, both, dim=i) for i in range(len(both.dimensions))]
            best = max(bounds)
            row.update(reference=f"lower bound (memory {bounds[0]}, cpu {bounds[1]})", reference_migrations=best)
        row["ratio"] = round(row["migrations"] / best, 3) if best else None
        rows.append(row)
    return rows


COLUMNS = [("scenario", "scenario"), ("guests", "guests"), ("migrations", "migr."),
           ("memory_after", "memory after"), ("cpu_after", "cpu after"), ("rules_broken", "rules broken"),
           ("unmet", "unmet"), ("reference", "reference"), ("reference_migrations", "ref. migr."),
           ("reference_seconds", "ref. s"), ("issue_minimum", "issue min"), ("ratio", "ratio to best ref."),
           ("memory_seconds", "memory plan s"), ("memory_process", "process s"),
           ("cpu_seconds", "cpu plan s"), ("cpu_process", "process s"),
           ("memory,cpu_seconds", "memory,cpu plan s"), ("memory,cpu_process", "process s")]
