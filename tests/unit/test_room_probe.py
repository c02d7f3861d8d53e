"""The room probe (engine/room_probe.py) answers, from the first box alone, what the whole box
search answered on a large cluster planned without memory: does a node full of memory hold a
dimension apart, so that the plan is made again with memory balanced too?"""

from __future__ import annotations

import pytest

from pvebalance.engine import balance
from pvebalance.engine.explain import room_held
from pvebalance.engine.room_probe import room_probe
from pvebalance.engine.rules import build_constraints
from pvebalance.engine.search import movable_units
from pvebalance.engine.state import PlanState
from tests.unit.test_dimensions import policy_for, scenario

pytestmark = pytest.mark.long  # xl-10k's whole box search: seconds

CPU_DISK = ["cpu", "disk"]


@pytest.mark.parametrize(("name", "held"), [("xl-10k", "disk"), ("large-5k", None)])
def test_the_probe_finds_room_holding_a_dimension_apart_where_the_whole_box_search_does(
        name: str, held: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    snap, _ = scenario(name)
    policy = policy_for(name, method=CPU_DISK, balanciness=5)
    state = PlanState(snap, policy, build_constraints(snap, policy))
    probe = room_probe(state, movable_units(state), [])
    assert (None if probe is None else room_held(probe)) == held
    assert state.moves == []  # probed on a copy: where it does not answer, the plan starts as it was

    if held is not None:  # answered: the plan is handed back cut short, without the whole search
        planned = balance._plan_balance(snap, policy, room_first=True)
        assert (planned.room_held, planned.cut_short) == (held, True)
    monkeypatch.setattr(balance, "room_probe", lambda *_: None)  # the whole box search, as before the probe
    searched = balance._plan_balance(snap, policy, room_first=True)
    assert (searched.room_held, searched.cut_short) == (held, held is not None)
