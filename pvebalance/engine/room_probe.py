"""Whether a node full of memory holds a dimension apart, found cheaply on a large cluster.

A plan of dimensions that leave memory out (cpu,disk, say) can stall where the emptiest node of
one of them is full of memory: it takes nothing until memory leaves it (explain.room_held). Such a
plan is made again with memory balanced too (planned_dimensions.making_room), so the first one only
answers a question: does room hold it? balance._balance answered it with the whole box search
(band_vector: 7 boxes on xl-10k) and the greedy finish up to the stall, then the plan was thrown
away: 3.4 of xl-10k's 7.4 s in-process with cpu,disk.

The probe asks the first box only (each band centred on its mean), and the greedy finish for at
most PROBE_STEPS moves. Where room holds by then, its plan is handed back cut short, as the whole
search's was; where it does not, the caller searches as before, so a plan room does not hold is the
same plan. Each of the 7 boxes agrees with the whole search on xl-10k (room holds disk apart, from
the greedy's 4th to 7th move) and on large-5k (it holds nothing) with cpu,disk, the bundled plans
it is asked for. It is not asked once memory is among the dimensions (making_room's own attempts):
with memory held to 71.4 pp on xl-10k, the first box stalls where the search's best box balances.
"""

from __future__ import annotations

from itertools import count

from .band import apply_in_order, clone
from .band_vector import box_plan
from .explain import room_held
from .search import balance_moves, movable_units, units_by_node
from .state import PlanState

# The greedy moves after the first box within which room must hold for the probe to answer: xl-10k
# stalls at the 4th; a plan room does not hold pays the box, its moves and these few steps.
PROBE_STEPS = 10


def room_probe(state: PlanState, units: list[frozenset[int]], notes: list[str]) -> PlanState | None:
    """The plan of the first box, finished by the greedy until room holds a dimension apart (then
    it is handed back, the greedy's notes added to `notes`), or None where room does not hold within
    PROBE_STEPS moves (or the box plan cannot be made or balances by itself)."""
    plan = box_plan(state, units, first_only=True)
    if plan is None or not state.budget_left(sum(len(u) for u, _ in plan.moves)):
        return None
    probe = clone(state)
    apply_in_order(probe, plan.moves)
    if probe.balanced():
        return None
    steps = count(1)
    told: list[str] = []
    balance_moves(probe, units_by_node(probe, movable_units(probe)), told, large=True,
                  until=lambda s: room_held(s) is not None or next(steps) >= PROBE_STEPS)
    if probe.balanced() or room_held(probe) is None:
        return None
    notes.extend(told)
    return probe
