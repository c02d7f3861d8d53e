"""pvebalance's own fault-injection suite.

The promise under test: a migration is never lost or doubled, the concurrency limits hold however
many workers run, and every service survives. One run (run.py) sets up a redis-server of its own
(append-only file, fsync always), the simulator on `all-on-one` and, as real processes started with
their CLI, a collector, a planner and four migrator workers (harness.py); lets the planner
rebalance the cluster and then drain pve1; injects faults at random moments from a seeded
random.Random (inject.py: killed workers, work-horses, planner, collector, Redis restarted or down
for 60 s, API errors, garbled bodies, timeouts, failed tasks, locked, moved and deleted guests,
nodes going offline), printing each with its time; heals everything, waits until the cluster
settles and checks the simulator's record and Redis against the promise (verify.py).

    tests/integration/test_faults.py       one run with a fixed seed (CI)
    tests/integration/test_faults_disk.py  the disk-move run, likewise
    ./dev.sh soak --seeds N                N seeds in a row (python -m tests.faultsuite)
"""

from .harness import Limits
from .run import FIGURES, RunConfig, RunResult, run_one, total_line

__all__ = ["FIGURES", "Limits", "RunConfig", "RunResult", "run_one", "total_line"]
