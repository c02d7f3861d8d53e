"""No churn through the whole pipeline (issue 20, item 5): `pvebalance demo --scenario homelab`, whose
simulated node figures lag the guests and whose hosts' own memory swings, makes no move that a later move
undoes (the guest back, or another guest from its target back to its source) and at most one move more
than its first plan."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from redis import Redis

pytestmark = pytest.mark.integration

MOVE = re.compile(r"^\s+(\d+) (\S+) -> (\S+)  ok", re.M)
PLAN = re.compile(r"^  plan plan-\w+: (?:(\d+) migrations|spread [\d.]+ pp, nothing to move)", re.M)


def test_the_homelab_demo_moves_nothing_back_and_at_most_one_guest_more_than_its_first_plan(
        real_redis: Redis, redis_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pvebalance", "demo", "--scenario", "homelab", "--time-scale", "0.01",
         "--redis-url", redis_url, "--timeout", "120"],
        capture_output=True, text=True, timeout=200,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    moves = [(int(vmid), source, target) for vmid, source, target in MOVE.findall(out.stdout)]
    plans = [int(count or 0) for count in PLAN.findall(out.stdout)]
    assert plans and plans[0] > 0 and plans[-1] == 0, out.stdout[-3000:]
    undone = [(earlier, later) for i, earlier in enumerate(moves) for later in moves[i + 1:]
              if (later[1], later[2]) == (earlier[2], earlier[1])]
    assert undone == [], out.stdout[-3000:]
    assert len(moves) <= plans[0] + 1, out.stdout[-3000:]
