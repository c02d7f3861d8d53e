"""The engine on every bundled scenario: balance reached, migrations, data moved, rules, time;
migrations compared with the exact minimum (MILP, HiGHS, 60 s) or, where that cannot finish, with
a simple lower bound."""

from __future__ import annotations

import math
import time
from typing import Any

from pvebalance.engine import Policy, plan_balance
from pvebalance.engine.exact import minimum_migrations
from pvebalance.engine.load import guest_load, initial_loads
from pvebalance.shared.apidump import load_dump, operator_pools, snapshot_from_api
from pvebalance.shared.config import BalancingSettings
from pvebalance.shared.models import ClusterSnapshot

EXACT_SCENARIOS = ("all-on-one", "homelab", "mid-300", "groups", "maintenance", "tight", "operator-rules")


def lower_bound(snapshot: ClusterSnapshot, policy: Policy) -> int:
    """For each node above mean + balanciness, the fewest of its guests whose load covers the excess."""
    loads = initial_loads(snapshot, policy)
    nodes = [n.name for n in snapshot.nodes if n.online and not n.maintenance]
    mean = sum(loads[n].percent for n in nodes) / len(nodes)
    bound = 0
    for n in nodes:
        excess_pct = loads[n].percent - (mean + policy.balanciness)
        if excess_pct <= 0:
            continue
        excess = excess_pct / 100 * loads[n].capacity
        sizes = sorted((guest_load(g, policy) for g in snapshot.guests if g.node == n), reverse=True)
        covered = 0.0
        for count, size in enumerate(sizes, 1):
            covered += size
            if covered >= excess:
                bound += count
                break
    return bound


def band_lower_bound(snapshot: ClusterSnapshot, policy: Policy, step: float = 0.25) -> int:
    """A stronger bound: whatever band [lo, lo + balanciness] the nodes end in, nodes above it must
    shed (each with its own largest guests) and nodes below it must receive (at best the largest
    guests of the whole cluster); every migration does one of each, so at least the larger count.
    The smallest such count over all band positions bounds every plan."""
    loads = initial_loads(snapshot, policy)
    nodes = [n.name for n in snapshot.nodes if n.online and not n.maintenance]
    own = {n: sorted((guest_load(g, policy) for g in snapshot.guests if g.node == n), reverse=True) for n in nodes}
    everyone = sorted((guest_load(g, policy) for g in snapshot.guests if g.node in own), reverse=True)

    def fewest(sizes: list[float], amount: float) -> int | None:
        covered = 0.0
        for count, size in enumerate(sizes, 1):
            if covered >= amount:
                return count - 1
            covered += size
        return len(sizes) if covered >= amount else None

    best: int | None = None
    lo = 0.0
    while lo <= 100:
        shed, feasible = 0, True
        for n in nodes:
            excess = (loads[n].percent - lo - policy.balanciness) / 100 * loads[n].capacity
            if excess > 0:
                count = fewest(own[n], excess)
                if count is None:
                    feasible = False
                    break
                shed += count
        need = sum(max(0.0, (lo - loads[n].percent) / 100 * loads[n].capacity) for n in nodes)
        receive = fewest(everyone, need)
        if feasible and receive is not None:
            bound = max(shed, receive)
            best = bound if best is None else min(best, bound)
        lo += step
    return best or 0


def load_scenario(name: str) -> tuple[ClusterSnapshot, Policy]:
    doc = load_dump(name)
    return snapshot_from_api(doc["api"]), Policy.from_settings(BalancingSettings(pools=operator_pools(doc)))


def run(scenarios: list[str], exact_limit: float = 60.0) -> list[dict[str, Any]]:
    rows = []
    for name in scenarios:
        snapshot, policy = load_scenario(name)
        started = time.perf_counter()
        plan = plan_balance(snapshot, policy)
        seconds = time.perf_counter() - started
        row: dict[str, Any] = {
            "scenario": name, "nodes": len(snapshot.nodes), "guests": len(snapshot.guests),
            "spread_before": plan.before.spread_pp, "spread_after": plan.after.spread_pp,
            "migrations": len(plan.migrations), "gib_moved": round(sum(m.gib_moved for m in plan.migrations), 1),
            "rules_broken": len(plan.violations), "unmet": len(plan.unmet), "plan_seconds": round(seconds, 3),
            "notes": plan.notes,  # e.g. whether the exact solver's plan replaced the greedy one
        }
        if name in EXACT_SCENARIOS:
            # the yardstick: no cap, no node limit, only time (it is not a plan, so it may depend on load)
            exact = minimum_migrations(snapshot, policy, node_limit=None, time_limit=exact_limit)
            label = "exact" if exact.status == "optimal" else f"MILP ({exact.status}, bound {exact.bound})"
            row.update(reference=label,
                       reference_migrations=exact.migrations, reference_seconds=round(exact.seconds, 1))
        else:
            row.update(reference="lower bound", reference_migrations=lower_bound(snapshot, policy),
                       reference_seconds=None)
            band = band_lower_bound(snapshot, policy)
            row.update(band_bound=band, vs_band_pct=round(100 * (row["migrations"] - band) / band, 1) if band else None)
        ref = row["reference_migrations"]
        row["vs_reference_pct"] = round(100 * (row["migrations"] - ref) / ref, 1) if ref else (
            0.0 if ref == 0 and row["migrations"] == 0 else math.inf)
        rows.append(row)
    return rows


COLUMNS = [("scenario", "scenario"), ("guests", "guests"), ("spread_before", "spread before"),
           ("spread_after", "after"), ("migrations", "migr."), ("gib_moved", "GiB moved"),
           ("rules_broken", "rules broken"), ("plan_seconds", "plan s"), ("reference", "reference"),
           ("reference_migrations", "ref. migr."), ("vs_reference_pct", "+% vs ref."),
           ("band_bound", "band bound"), ("vs_band_pct", "+% vs band")]
