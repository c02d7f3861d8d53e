from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import engine_bench

ALL = ["all-on-one", "homelab", "mid-300", "groups", "maintenance", "tight", "operator-rules", "large-5k", "xl-10k"]
RESULTS = Path(__file__).parent / "results"


def table(title: str, rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> Table:
    t = Table(title=title)
    for _, header in columns:
        t.add_column(header, justify="left" if header == "scenario" else "right")
    for row in rows:
        t.add_row(*["" if row.get(key) is None else str(row.get(key)) for key, _ in columns])
    return t


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("which", nargs="?", default="engine",
                        choices=["engine", "heldout", "storage", "collector", "proxlb", "migrator", "e2e", "redis",
                                 "soak", "all"])
    parser.add_argument("--scenarios", nargs="*", default=ALL)
    parser.add_argument("--exact-limit", type=float, default=60.0, help="seconds for each placement MILP")
    parser.add_argument("--ordered", choices=["auto", "all", "none"], default="auto",
                        help="the ordered exact minimum: where the placement has no safe order (auto), "
                             "on every exact scenario (all, a cross-check), or nowhere")
    parser.add_argument("--ordered-limit", type=float, default=300.0, help="seconds for each ordered MILP")
    parser.add_argument("--time-scale", type=float, default=None,
                        help="migrator: the simulator's migration durations times this (default 1: as simulated)")
    parser.add_argument("--seeds", default="0-29",
                        help="heldout: the seeds, FIRST-LAST (0-29 chose the engine's constants; 30-59 never did); "
                             "other than 0-29, written to results/heldout-FIRST-LAST.json")
    parser.add_argument("--shape", default=None, metavar="NODESxGUESTS",
                        help="heldout: every seed's cluster drawn at this size (e.g. 6x300) in place of its own")
    args = parser.parse_args()
    first, _, last = args.seeds.partition("-")
    if not (first.isdigit() and (last or first).isdigit()) or int(last or first) < int(first):
        parser.error(f"--seeds {args.seeds!r}: FIRST-LAST, two whole numbers, FIRST not above LAST (0-29)")
    seeds = list(range(int(first), int(last or first) + 1))
    nodes, _, guests = (args.shape or "").partition("x")
    # tests/heldout.py draws from 3 nodes and 8 guests a node (held_out_shape's smallest): fewer fail inside it
    if args.shape is not None and not (nodes.isdigit() and guests.isdigit() and int(nodes) >= 3
                                       and int(guests) >= 8 * int(nodes)):
        parser.error(f"--shape {args.shape!r}: NODESxGUESTS, two whole numbers, at least 3 nodes and 8 guests "
                     "a node (6x300)")
    shape = (int(nodes), int(guests)) if args.shape is not None else None
    console = Console(width=220)
    RESULTS.mkdir(exist_ok=True)
    meta = {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()}
    # name -> (title, how to run it, its columns); each is imported only when asked for
    benches: dict[str, tuple[str, Callable[[], list[dict[str, Any]]], Callable[[], Any]]] = {
        "engine": ("pvebalance engine (memory, used, balanciness 5)",
                   lambda: engine_bench.run(args.scenarios, args.exact_limit, args.ordered,
                                                  args.ordered_limit), lambda: engine_bench.COLUMNS),
        # part of `bench engine`: memory and CPU at once, every bundled scenario unless named
        "dimensions": ("pvebalance engine, memory and CPU at once (used, balanciness 5 each)",
                       lambda: _module("dimensions_bench").run(
                           _module("dimensions_bench").BUNDLED if args.scenarios == ALL else args.scenarios,
                           args.exact_limit), lambda: _module("dimensions_bench").COLUMNS),
        "storage": ("storage balancing (balanciness 10 pp, max_usage 90 %) against the exact minimum (MILP)",
                    lambda: _module("storage_bench").run(), lambda: _module("storage_bench").COLUMNS),
        # part of `bench engine`: memory and CPU at once on clusters drawn by tests/heldout.py
        "heldout": ("pvebalance engine, memory and CPU at once on held-out clusters (5 pp each), against an "
                    "independent minimum", lambda: _module("heldout_bench").run(seeds, shape=shape),
                    lambda: _module("heldout_bench").COLUMNS),
        "collector": ("collector: API requests and time per snapshot",
                      lambda: _module("collector_bench").run(), lambda: _module("collector_bench").COLUMNS),
        "proxlb": ("ProxLB 2.3.0 (dry run) beside pvebalance",
                   lambda: _module("proxlb_bench").run(args.scenarios), lambda: _module("proxlb_bench").COLUMNS),
        "migrator": ("draining 40 guests (all-on-one, pve1 in maintenance)",
                     lambda: _module("migrator_bench").run(time_scale=args.time_scale),
                     lambda: _module("migrator_bench").COLUMNS),
        "e2e": ("ProxLB 2.3.0 and pvebalance from a cold start to balanced, links of 10 Gbit/s",
                lambda: _module("e2e_bench").run([(n, s) for n, s in _module("e2e_bench").RUNS
                                                  if n in args.scenarios]),
                lambda: _module("e2e_bench").COLUMNS),
        "redis": ("Redis and the services' memory: the collector publishing 30 snapshots of xl-10k",
                  lambda: _module("redis_bench").run(), lambda: _module("redis_bench").COLUMNS),
        "soak": ("a short soak (8 min, retention 60 s): the last sample (`./dev.sh soak --long`: 30 min)",
                 lambda: _module("soak").run(), lambda: _module("soak").BENCH_COLUMNS),
    }
    for name, (title, run, columns) in benches.items():
        if args.which in (name, "all") or (args.which == "engine" and name in ("dimensions", "heldout")):
            rows = run()
            console.print(table(title, rows, columns()))
            for row in rows:  # a plan of fewer migrations than the engine's: the engine should find it
                if row.get("ordered_moves") and row["ordered_migrations"] < row["migrations"]:
                    console.print(f"{row['scenario']}: a plan of {row['ordered_migrations']} migrations "
                                  f"(vmid, source, target): {row['ordered_moves']}")
            # held-out seeds other than the default get their own file: two ranges run at once keep both
            other = args.seeds != parser.get_default("seeds")
            stem = f"{name}-{seeds[0]}-{seeds[-1]}" if name == "heldout" and (other or shape) else name
            stem += f"-{args.shape}" if name == "heldout" and shape else ""
            (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    console.print(f"JSON written to {RESULTS}/")


def _module(name: str) -> Any:
    return importlib.import_module(f"{__package__}.{name}")


if __name__ == "__main__":
    main()
