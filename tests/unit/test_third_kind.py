"""Adding a kind of action is one module and one line (issue 21): tests/third_kind.py is such a module
(`relocate`: a stopped guest to another node, cold), written as docs/how-it-works.md says, and registered
here by the one line an operator of the code base would add to pvebalance/actions/__init__.py. Nothing
else changes: a plan holding it reads back, the planner queues it after what it waits for, the runner
carries it out against the simulator (real proxmoxer over HTTPS), and the words, the API's plan view and
/metrics show it.

The line runs in a process of its own, before anything builds the unions from the list (as it would at
the top of the registry), so this test's process keeps the two kinds the product has."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The registration line, as it would stand in KINDS: `third_kind.KIND,` after `move_disk.KIND,`.
REGISTER = "import pvebalance.actions as kinds, tests.third_kind as third; kinds.KINDS = (*kinds.KINDS, third.KIND)"


def test_a_third_kind_registered_by_one_line_runs_through_plan_queue_runner_api_and_metrics(certdir: Path) -> None:
    done = subprocess.run([sys.executable, "-c", f"{REGISTER}; third.main({str(certdir)!r})"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {
        "table": ["1 relocation, in the plan's order", "2 relocate guest 101 (vm101) pve1 -> pve3, stopped 0"],
        "kinds": ["Migration", "Relocation"],
        "queued": ["migrate-plan-third-100", "relocate-plan-third-101"],
        "jobs": ["MigrationJob", "RelocationJob"],
        "ended": ["succeeded", "succeeded"],
        "nodes": {"100": "pve2", "101": "pve3"},
        "words": "1 migration and 1 relocation",
        "api": [["migrate", "qemu/100", "succeeded"], ["relocate", "qemu/101", "succeeded"]],
        "metrics": ["pvebalance_relocations_finished_total"] * 4,
    }
