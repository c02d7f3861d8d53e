"""The engine on every bundled scenario: balance reached, migrations, data moved, rules, time;
migrations compared with the exact minimum (MILP, HiGHS, 60 s) or, where that cannot finish, with
lower bounds (the best of them, and the plan's ratio to it, side by side).

The exact minimum is of placements (pvebalance/engine/exact.py). Where its placement has no safe order (a swap
between full nodes), the reference is the ordered exact minimum (bench/exact_ordered.py), the fewest
migrations of a plan that can be carried out, so that the ratio compares plans with plans; the
placement figure stays beside it."""

from __future__ import annotations

import math
import time
from typing import Any

from bench.exact_ordered import ordered_minimum
from pvebalance.engine import Policy, plan_balance
from pvebalance.engine.exact import minimum_migrations, order_placement
from pvebalance.engine.load import guest_load, initial_loads
from pvebalance.engine.rules import build_constraints
from pvebalance.shared import scenario
from pvebalance.shared.models import ClusterSnapshot, Plan

EXACT_SCENARIOS = ("all-on-one", "homelab", "mid-300", "groups", "maintenance", "tight", "operator-rules")


def lower_bound(snapshot: ClusterSnapshot, policy: Policy, dim: int = 0) -> int:
    """For each node above mean + balanciness, the fewest of its guests whose load covers the excess
    (in the policy's `dim`-th dimension)."""
    loads = initial_loads(snapshot, policy)
    band = policy.band(policy.dimensions[dim])
    nodes = [n.name for n in snapshot.nodes if n.online and not n.maintenance]
    mean = sum(loads[n].percent_in(dim) for n in nodes) / len(nodes)
    bound = 0
    for n in nodes:
        excess_pct = loads[n].percent_in(dim) - (mean + band)
        if excess_pct <= 0:
            continue
        excess = excess_pct / 100 * loads[n].capacity[dim]
        sizes = sorted((guest_load(g, policy)[dim] for g in snapshot.guests if g.node == n), reverse=True)
        covered = 0.0
        for count, size in enumerate(sizes, 1):
            covered += size
            if covered >= excess:
                bound += count
                break
    return bound


def band_lower_bound(snapshot: ClusterSnapshot, policy: Policy, step: float = 0.25, dim: int = 0) -> int:
    """A stronger bound: whatever band [lo, lo + balanciness] the nodes end in, nodes above it must
    shed (each with its own largest guests) and nodes below it must receive (at best the largest
    guests of the whole cluster); every migration does one of each, so at least the larger count.
    The smallest such count over all band positions bounds every plan."""
    loads = initial_loads(snapshot, policy)
    band = policy.band(policy.dimensions[dim])
    nodes = [n.name for n in snapshot.nodes if n.online and not n.maintenance]
    own = {n: sorted((guest_load(g, policy)[dim] for g in snapshot.guests if g.node == n), reverse=True)
           for n in nodes}
    everyone = sorted((guest_load(g, policy)[dim] for g in snapshot.guests if g.node in own), reverse=True)

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
            excess = (loads[n].percent_in(dim) - lo - band) / 100 * loads[n].capacity[dim]
            if excess > 0:
                count = fewest(own[n], excess)
                if count is None:
                    feasible = False
                    break
                shed += count
        need = sum(max(0.0, (lo - loads[n].percent_in(dim)) / 100 * loads[n].capacity[dim]) for n in nodes)
        receive = fewest(everyone, need)
        if feasible and receive is not None:
            bound = max(shed, receive)
            best = bound if best is None else min(best, bound)
        lo += step
    return best or 0


def shed_fill_lower_bound(snapshot: ClusterSnapshot, policy: Policy, steps: int = 500, dim: int = 0) -> int:
    """A bound that counts both sides of the band at once (no node being drained; rules only shrink
    the plans it covers, so they may be left out). Say the nodes end in [lo, lo + balanciness] (the
    cluster's mean must lie in it), and count, per node n, the c_n of its own guests that leave it:

    - n above the band loses at least its excess net, so at least that much leaves it: c_n >= k_n,
      the fewest of its guests whose largest add up to the excess;
    - the nodes below the band (R) gain at least their lack D net, and what R gains net is what the
      other nodes lose net, each at most min(its c_n largest guests, its load above lo).

    The fewest migrations (the sum of the c_n) doing both: the forced k_n, then the guests outside R
    that add the most to what R can get, until it reaches D (each node's next guest adds no more
    than the one before, so taking the largest additions first is best); and at least one per node
    of R. Every lo in [mean - balanciness, mean] is covered by `steps` intervals, each taken at its
    most lenient end (the excess at the interval's top, lack and load above lo at its bottom), so
    the minimum over the intervals bounds every plan, not only the grid's."""
    loads = initial_loads(snapshot, policy)
    fixed = build_constraints(snapshot, policy).fixed
    nodes = [n.name for n in snapshot.nodes if n.online and n.usable and not n.maintenance
             and n.name not in policy.ignore_nodes and min(loads[n.name].capacity) > 0]
    cap = {n: loads[n].capacity[dim] for n in nodes}
    load = {n: loads[n].load[dim] for n in nodes}
    own: dict[str, list[float]] = {n: [] for n in nodes}
    for g in snapshot.guests:
        if g.node in own and g.vmid not in fixed and (size := guest_load(g, policy)[dim]) > 0:
            own[g.node].append(size)
    for sizes in own.values():
        sizes.sort(reverse=True)
    mean = 100.0 * sum(load.values()) / sum(cap.values())
    b = policy.band(policy.dimensions[dim])
    best: int | None = None
    for i in range(steps):
        lo_bottom, lo_top = mean - b + b * i / steps, mean - b + b * (i + 1) / steps
        count = _count_for_band(own, cap, load, lo_bottom, lo_top, b)
        if count is not None:
            best = count if best is None else min(best, count)
    return best or 0


def _count_for_band(own: dict[str, list[float]], cap: dict[str, float], load: dict[str, float], lo_bottom: float,
                    lo_top: float, b: float) -> int | None:
    """The shed+fill count for lo in [lo_bottom, lo_top]; None when no plan reaches such a band."""
    lacking = {n for n in cap if load[n] < lo_bottom * cap[n] / 100}
    lack = sum(lo_bottom * cap[n] / 100 - load[n] for n in lacking)
    count, given, additions = 0, 0.0, []
    for n in sorted(cap):
        excess = load[n] - (lo_top + b) * cap[n] / 100
        above_lo = load[n] - lo_bottom * cap[n] / 100
        shed, k = 0.0, 0
        while shed < excess and k < len(own[n]):
            shed += own[n][k]
            k += 1
        if shed < excess:
            return None  # not even all its movable guests take it into this band
        count += k
        if n in lacking:
            continue
        given += min(shed, above_lo)
        for size in own[n][k:]:  # what each further guest adds, capped by the node's load above lo
            added = min(shed + size, above_lo) - min(shed, above_lo)
            if added <= 0:
                break
            additions.append(added)
            shed += size
    for added in sorted(additions, reverse=True):
        if given >= lack:
            break
        given += added
        count += 1
    if given < lack:
        return None
    return max(count, len(lacking))  # each node below the band receives at least one guest


def load_scenario(name: str) -> tuple[ClusterSnapshot, Policy]:
    recorded = scenario.load_scenario(name)
    return recorded.snapshot, Policy.from_settings(recorded.balancing())


def ordered_reference(snapshot: ClusterSnapshot, policy: Policy, plan: Plan, limit: float) -> dict[str, Any]:
    """The ordered exact minimum (bench/exact_ordered.py) as the reference: the fewest migrations of
    a plan that can be carried out, not of a placement.

    When the engine's plan keeps every rule and ends within the band, it is a plan of the model, so
    the model is asked only for plans of fewer migrations (steps = the engine's count - 1): no such
    plan proves the engine's count the minimum. That question is much quicker for HiGHS than the
    minimum over as many steps as the engine's plan (operator-rules: 19 s against 167 s, groups: 234 s
    against no proof in 300 s), which has to tell apart every order of the same moves."""
    engine = len(plan.migrations)
    clean = not plan.violations and not plan.unmet and plan.after.spread_pp <= policy.balanciness
    steps = engine - 1 if clean else engine
    result = ordered_minimum(snapshot, policy, steps, node_limit=None, time_limit=limit) if steps > 0 else None
    seconds = round(result.seconds, 1) if result else 0.0
    out: dict[str, Any] = {"ordered_seconds": seconds, "reference_seconds": seconds}
    if result is None or (clean and result.status == "infeasible"):
        out.update(reference="exact, ordered", reference_migrations=engine, ordered_migrations=engine,
                   ordered_proof=f"no plan of {steps} or fewer; the engine's has {engine}")
    elif result.status == "infeasible":  # the engine's plan breaks a rule or the band: it proves nothing
        out.update(reference=f"ordered: no plan of {steps} or fewer", reference_migrations=None,
                   ordered_migrations=None)
    elif result.status == "optimal":
        out.update(reference="exact, ordered", reference_migrations=result.migrations,
                   ordered_migrations=result.migrations, ordered_moves=result.moves,
                   ordered_proof=f"the minimum over plans of at most {steps} migrations")
    else:  # cut short: the best plan it found, if any, and what it proved
        bound = result.bound
        out.update(reference=f"MILP ordered ({result.status}, bound {bound})",
                   reference_migrations=result.migrations if result.migrations is not None else engine,
                   ordered_migrations=result.migrations, ordered_moves=result.moves,
                   ordered_proof=f"no plan of fewer than {bound}" if bound is not None else None)
    return out


def run(scenarios: list[str], exact_limit: float = 60.0, ordered: str = "auto",
        ordered_limit: float = 300.0) -> list[dict[str, Any]]:
    """`ordered`: where to compute the ordered exact minimum: "auto" where the placement minimum has
    no safe order, "all" on every scenario with an exact reference (a cross-check: where the
    placement has a safe order the two must agree), "none" nowhere."""
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
            orderable = bool(exact.placement) and order_placement(
                snapshot, policy, build_constraints(snapshot, policy), exact.placement) is not None
            row.update(reference=label, reference_migrations=exact.migrations,
                       reference_seconds=round(exact.seconds, 1), placement_migrations=exact.migrations,
                       placement_seconds=round(exact.seconds, 1),
                       placement_orderable=("yes" if orderable else "no") if exact.placement else None)
            if ordered == "all" or (ordered == "auto" and exact.placement and not orderable):
                row.update(ordered_reference(snapshot, policy, plan, ordered_limit))
        else:
            row.update(reference="lower bound", reference_migrations=lower_bound(snapshot, policy),
                       reference_seconds=None)
            band = band_lower_bound(snapshot, policy)
            shed_fill = shed_fill_lower_bound(snapshot, policy)
            bound = max(band, shed_fill, row["reference_migrations"])
            row.update(band_bound=band, shed_fill_bound=shed_fill, best_bound=bound,
                       vs_bound=round(row["migrations"] / bound, 3) if bound else None,
                       vs_band_pct=round(100 * (row["migrations"] - band) / band, 1) if band else None)
        ref = row["reference_migrations"]
        row["vs_reference_pct"] = round(100 * (row["migrations"] - ref) / ref, 1) if ref else (
            0.0 if ref == 0 and row["migrations"] == 0 else math.inf)
        rows.append(row)
    return rows


COLUMNS = [("scenario", "scenario"), ("guests", "guests"), ("spread_before", "spread before"),
           ("spread_after", "after"), ("migrations", "migr."), ("gib_moved", "GiB moved"),
           ("rules_broken", "rules broken"), ("plan_seconds", "plan s"), ("placement_migrations", "placement min"),
           ("placement_orderable", "safe order"), ("reference", "reference"),
           ("reference_migrations", "ref. migr."), ("reference_seconds", "ref. s"), ("vs_reference_pct", "+% vs ref."),
           ("band_bound", "band bound"), ("shed_fill_bound", "shed+fill bound"), ("vs_bound", "ratio to best bound")]
