"""`python -m tests.faultsuite --seeds N`: the fault suite over N seeds in a row (./dev.sh soak);
`--storage`: disk-move runs (storage-3, storage balancing on) instead of migration runs."""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .run import RunConfig, RunResult, run_one, total_line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.faultsuite", description=__doc__)
    p.add_argument("--seeds", type=int, default=1, help="how many runs (seeds first-seed, first-seed+1, ...)")
    p.add_argument("--first-seed", type=int, default=None, help="default: from the clock (printed)")
    p.add_argument("--seed", type=int, action="append", default=[], help="run exactly this seed (repeatable)")
    p.add_argument("--faults", type=int, default=30, help="faults per run (default 30)")
    p.add_argument("--outage", choices=("random", "always", "never"), default="random",
                   help="the 60 s Redis outage: in half the seeds (by seed), every run, or none")
    p.add_argument("--outage-seconds", type=float, default=60.0, help="how long the Redis outage lasts")
    p.add_argument("--time-scale", type=float, default=None,
                   help="the simulator's (default 0.15; with --storage 0.02: a 400 GiB disk moves in ~7 s)")
    p.add_argument("--storage", action="store_true",
                   help="disk-move runs: storage balancing of storage-3, then again after a storage is filled")
    p.add_argument("--workdir", type=Path, default=None, help="keep each run's files under this folder")
    p.add_argument("--keep", action="store_true", help="keep the files of runs that passed too")
    args = p.parse_args(argv)
    seeds = args.seed or [(args.first_seed if args.first_seed is not None else int(time.time()) % 1_000_000) + i
                          for i in range(args.seeds)]
    print(f"fault suite: seeds {seeds}", flush=True)
    results: list[RunResult] = []
    for seed in seeds:
        outage = {"always": True, "never": False}.get(args.outage, random.Random(f"outage-{seed}").random() < 0.5)
        time_scale = args.time_scale or (0.02 if args.storage else 0.15)
        cfg = RunConfig(seed=seed, faults=args.faults, outage=outage, outage_seconds=args.outage_seconds,
                        time_scale=time_scale, fault_phase_max=420.0, settle_timeout=240.0, storage=args.storage)
        if args.workdir:
            workdir = args.workdir / f"seed-{seed}"
        else:
            workdir = Path(tempfile.mkdtemp(prefix=f"pvebalance-faults-{seed}-"))
        result = run_one(cfg, workdir, say=lambda line: print(line, flush=True))
        results.append(result)
        if result.ok and not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"[seed {seed}] files kept in {workdir}", flush=True)
    print("\n".join(r.summary() for r in results))
    print(total_line(results), flush=True)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
