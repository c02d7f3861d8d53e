from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import engine_bench

ALL = ["all-on-one", "homelab", "mid-300", "groups", "maintenance", "tight", "large-5k", "xl-10k"]
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
                        choices=["engine", "collector", "proxlb", "migrator", "all"])
    parser.add_argument("--scenarios", nargs="*", default=ALL)
    parser.add_argument("--exact-limit", type=float, default=60.0, help="seconds for each MILP")
    args = parser.parse_args()
    console = Console(width=200)
    RESULTS.mkdir(exist_ok=True)
    meta = {"machine": platform.machine(), "python": platform.python_version(), "cpus": __import__("os").cpu_count()}
    if args.which in ("engine", "all"):
        rows = engine_bench.run(args.scenarios, args.exact_limit)
        console.print(table("pvebalance engine (memory, used, balanciness 5)", rows, engine_bench.COLUMNS))
        (RESULTS / "engine.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if args.which in ("collector", "all"):
        from . import collector_bench

        rows = collector_bench.run()
        console.print(table("collector: API requests and time per snapshot", rows, collector_bench.COLUMNS))
        (RESULTS / "collector.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if args.which in ("proxlb", "all"):
        from . import proxlb_bench

        rows = proxlb_bench.run(args.scenarios)
        console.print(table("ProxLB 2.3.0 (dry run) beside pvebalance", rows, proxlb_bench.COLUMNS))
        (RESULTS / "proxlb.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if args.which in ("migrator", "all"):
        from . import migrator_bench

        rows = migrator_bench.run()
        console.print(table("draining 40 guests (all-on-one, pve1 in maintenance)", rows, migrator_bench.COLUMNS))
        (RESULTS / "migrator.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    console.print(f"JSON written to {RESULTS}/")


main()
