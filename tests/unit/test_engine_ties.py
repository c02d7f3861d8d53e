"""The exact model counts migrations alone; ties between placements of as many migrations go to the
one that copies less data (engine/exact_ties.py), every rule and band still held: judged by the
raw-dump oracle (tests/oracle_balance.py) and test_rules' own replay, never by the engine."""

from __future__ import annotations

import pytest

import pvebalance.engine.exact as exact
from pvebalance.engine import Policy, plan_balance
from pvebalance.shared.models import ClusterSnapshot, Plan
from tests.oracle_balance import Move, spreads_after
from tests.unit.test_dimensions import policy_for, scenario
from tests.unit.test_rules import replay_checking_rules


def copied(snap: ClusterSnapshot, plan: Plan) -> int:
    """Bytes a plan copies, from the snapshot: a running guest's memory and every guest's local disks."""
    guests = {g.vmid: g for g in snap.guests}
    return sum((guests[m.vmid].mem if guests[m.vmid].running else 0) + guests[m.vmid].local_disk
               for m in plan.migrations)


# one dimension each, where the count-only solve's own pick copied more than it had to (measured:
# maintenance memory 320 GiB -> 284, groups memory 324 -> 313, groups cpu 169 -> 164)
CASES = [("maintenance", "memory"), ("groups", "memory"), ("groups", "cpu")]


@pytest.mark.parametrize(("name", "method"), CASES)
def test_ties_go_to_the_placement_that_copies_less_keeping_the_count_the_bands_and_the_rules(
        name: str, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    snap, doc = scenario(name)
    policy: Policy = policy_for(name, method=method, balanciness=5)
    plan = plan_balance(snap, policy)
    with monkeypatch.context() as m:
        m.setattr(exact, "lighter", lambda model, x, data: x)  # the solver's own pick among the ties
        untied = plan_balance(snap, policy)
    assert len(plan.migrations) == len(untied.migrations)
    assert copied(snap, plan) < copied(snap, untied)
    moves = [Move(m.vmid, m.source, m.target) for m in plan.migrations]
    assert spreads_after(doc["api"], moves, held_out=policy.ignore_nodes)[method] <= 5 + 1e-6
    replay_checking_rules(snap, policy, plan)
    assert plan.unmet == [] and plan.violations == []
