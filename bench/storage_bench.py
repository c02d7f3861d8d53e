"""Storage balancing (engine/storage_balance.py) on storage-3 and the held-out clusters of
tests/heldout_storage.py, beside the exact minimum (tests/oracle_storage_minimum.py: a MILP of the
end state, HiGHS, proven; the fewest moves, then the fewest GiB with that many) and judged by
tests/oracle_storage_balance.py (safe at every batch, the group's spread at the end).

`least GiB` is the fewest GiB of any plan, whatever its count of moves: computed for storage-3 only
(the issue's 3,480), as on the held-out clusters HiGHS takes minutes to prove it (seed 10: 313 s).
`safe order`: whether the MILP's optimum has an order the oracle accepts (then its figures are the
minimum of safe plans, not only a bound on them).
"""

from __future__ import annotations

import time
from typing import Any

from pvebalance.engine.storage_balance import plan_storage_balance
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.config import StorageBalancingSettings
from tests.heldout_storage import SEEDS, heldout_cluster
from tests.oracle_storage_balance import Move, capacities, default_group, judge, movable_targets
from tests.oracle_storage_minimum import fewest_gib, fewest_moves, safe_order

COLUMNS = [("scenario", "scenario"), ("storages", "storages"), ("disks", "disks (may move)"),
           ("spread", "spread before → after"), ("moves", "moves"), ("gib", "GiB"), ("min_moves", "min moves"),
           ("min_gib", "min GiB at min moves"), ("least_gib", "least GiB (moves)"), ("ratio", "ratio moves / GiB"),
           ("safe", "safe"), ("safe_order", "MILP safe order"), ("plan_s", "plan s"), ("milp_s", "MILP s")]


def row(name: str, api: dict[str, Any], least_gib: bool) -> dict[str, Any]:
    settings = StorageBalancingSettings()
    snapshot = snapshot_from_api(api)
    start = time.perf_counter()
    plan = plan_storage_balance(snapshot, settings)
    plan_s = time.perf_counter() - start
    moves = [Move(m.vmid, m.disk, m.source, m.target, m.batch) for m in plan.moves]
    verdict = judge(api, moves, max_usage=settings.max_usage)
    least = fewest_moves(api, band=settings.balanciness, max_usage=settings.max_usage)
    group = default_group(api)
    pct = {s: 100 * used / total for s, (total, used) in capacities(api).items() if s in group}
    gib = fewest_gib(api, band=settings.balanciness, max_usage=settings.max_usage) if least_gib else None
    on_group = sum(1 for g in snapshot.guests for d in g.disks if d.storage in group and d.media is None)
    reached = least.moves is not None and least.gib is not None
    return {
        "scenario": name, "storages": len(group),
        "disks": f"{on_group} ({len(movable_targets(api))})",
        "spread": f"{max(pct.values()) - min(pct.values()):.1f} → {max(verdict.spreads.values()):.1f}",
        "moves": len(plan.moves), "gib": round(verdict.gib, 1),
        "min_moves": least.moves, "min_gib": round(least.gib, 1) if least.gib is not None else None,
        "least_gib": f"{gib[0]:,.0f} ({gib[1]})" if gib else None,
        "ratio": f"{len(plan.moves) / least.moves:.2f} / {verdict.gib / least.gib:.3f}"
        if reached and least.moves and least.gib else None,
        "safe": "yes" if not verdict.problems else f"no: {len(verdict.problems)} problems",
        "safe_order": ("yes" if safe_order(api, least.chosen, max_usage=settings.max_usage) else "not found")
        if reached else "band out of reach",
        "plan_s": round(plan_s, 2), "milp_s": round(least.seconds, 2),
    }


def run() -> list[dict[str, Any]]:
    rows = [row("storage-3", load_dump("storage-3")["api"], least_gib=True)]
    rows += [row(f"held-out {seed}", heldout_cluster(seed)["api"], least_gib=False) for seed in sorted(SEEDS)]
    return rows
