"""The fault suite's disk-move run, one run with a fixed seed: what test_faults.py does to migrations,
done to storage balancing (storage-3's three NFS storages at 90 / 51 / 24 %): no disk lost or
doubled, no storage above max_usage, the storages end balanced (`./dev.sh soak --storage` for more
seeds). A file of its own so that the suite's two long runs go to different test workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faultsuite import FIGURES, RunConfig, run_one

pytestmark = pytest.mark.integration

CI_DISK_SEED = 11


@pytest.mark.timeout(300)
def test_no_disk_lost_or_doubled_under_faults(tmp_path: Path) -> None:
    # Every kind of fault once and a few more, a 20 s Redis outage, at time scale 0.01 (a 400 GiB disk
    # moves in ~4 s) and a 30 s slot_ttl (a killed runner's job is taken up again within it): about two
    # minutes, the balance's 9 moves and the fill's 2-4 (the phases capped: under 5 minutes in any case).
    # (test_faults.py's CI_SEED deck restarts Redis while the first plan is enqueued: 4 of its 9 moves
    # are never enqueued.)
    cfg = RunConfig(seed=CI_DISK_SEED, faults=14, gap=(1.0, 3.0), outage=True, outage_seconds=20.0, time_scale=0.01,
                    slot_ttl=30.0, rebalance_timeout=75.0, fault_phase_max=120.0, settle_timeout=100.0, storage=True)
    result = run_one(cfg, tmp_path, say=lambda line: print(line, flush=True))
    print(result.summary())
    details = "\n".join(result.problems[:40])
    assert result.disk_moves_ok >= 8, f"too few disk moves to mean anything: {result.summary()}"
    assert sum(result.faults.values()) >= 12, f"too few faults were injected: {result.summary()}"
    assert result.faults_in_copies >= 5, f"too few faults hit a disk move in flight: {result.summary()}"
    assert {f: result.figures[f] for f in FIGURES} == dict.fromkeys(FIGURES, 0), (
        f"{result.summary()}\n{details}\nlogs and state: {tmp_path}")
