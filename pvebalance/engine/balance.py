"""Plan migrations: first repair what breaks a rule, then bring every balanced dimension's spread
within its band (`balanciness`, per dimension: `Policy.band`).

Pure: a snapshot and a policy in, a Plan out; no I/O. Each registered rule family repairs what it
finds broken, in the registry's order of urgency (maintenance, pins and HA node rules, affinity,
anti-affinity; see rules/registry.py), then the balance phase runs, all on one PlanState, so every
move is checked against every family's rules and the room on its target at the step it runs. A rule
that cannot be met is reported in `unmet`, with the guests and the reason; with several dimensions,
so is each dimension whose spread the plan cannot bring within its band (rule "balance DIM", how far
above, and why; with one, the notes say it). A dimension no node offers is left out, and memory is
balanced too where a node full of it holds another apart (planned_dimensions.py).
"""

from __future__ import annotations

import math

from pvebalance.shared.models import (
    ClusterSnapshot,
    GuestState,
    GuestType,
    Migration,
    Plan,
    Unmet,
)

from .band import apply_in_order, band_plan, clone
from .closest import let_go, score, squeeze
from .exact_phase import again_applies, capped_again, exact_if_fewer, exact_work, few_nodes_model, whole_then_subsets
from .explain import costly_moves, held_back, held_out_nodes, room_held
from .heap import alive_before_frozen
from .load import Vector, initial_loads, spread_in, summarize
from .outcome import outcome_of
from .planned_dimensions import Planned, making_room, offered
from .policy import Policy
from .repair import repair
from .room_probe import room_probe
from .rules import Constraints, build_constraints, fixed_reason
from .schedule import prefer, schedule
from .search import balance_moves, movable_units, units_by_node
from .state import BAND_TOLERANCE, Move, PlanState
from .verify import find_violations


def is_movable(guest: GuestState, policy: Policy) -> bool:
    """Whether a balance move may take this guest (maintenance drains may move stopped ones too)."""
    return fixed_reason(guest, policy) is None and guest.running


@alive_before_frozen
def plan_balance(snapshot: ClusterSnapshot, policy: Policy) -> Plan:
    """The plan for the dimensions asked; where a node full of memory holds one of them apart and
    memory is not among them, the closest of the plans made again with memory balanced too
    (planned_dimensions.making_room)."""
    if "memory" in policy.dimensions or policy.method == "weighted":
        return _plan_balance(snapshot, policy).plan
    planned = _plan_balance(snapshot, policy, room_first=True)
    if planned.room_held is None:
        return planned.plan
    return making_room(snapshot, policy, planned, _plan_balance)


def _plan_balance(snapshot: ClusterSnapshot, policy: Policy, room_first: bool = False) -> Planned:
    """The plan, and whether a dimension stays above its band because its emptiest node is full of
    memory (explain.room_held). `room_first`: such a plan is handed back as soon as that is known
    (its greedy finish stopped there, no plans that let a dimension go (_closest), no actions), as
    it will be made again with memory: planned_dimensions.making_room judges it by its spreads and
    unmet rules, and makes it in full if it is kept."""
    constraints = build_constraints(snapshot, policy)
    notes: list[str] = []
    state = PlanState(snapshot, policy, constraints)
    policy, none_offered = offered(state, notes)
    if policy is not state.policy:  # a dimension no node offers: planned without it
        state = PlanState(snapshot, policy, constraints)
    bands = dict(zip(state.dims, state.bands, strict=True))  # as asked, before any is relaxed
    before = summarize(state.loads, state.targets, state.dims)
    began = state.spreads()  # before any repair: no dimension given up may end further apart
    unmet: list[Unmet] = []
    cut_short = False
    held: str | None = None  # the dimension room holds apart in the plan handed back

    for family in constraints.families:  # in the registry's order: the most urgent rules first
        repair(state, family.fixes(state), unmet)
    if policy.repair_only or none_offered:  # the rules' moves only, and no threshold to speak of
        quiet = list(state.dims)
        if policy.repair_only:
            notes.append(REPAIR_ONLY)
    else:
        quiet = _below_thresholds(state, notes)  # dimensions no node has passed the threshold of
    if quiet and len(quiet) < len(state.dims):
        state.relax(quiet)
        policy = state.policy
    below_threshold = len(quiet) == len(state.dims)
    if not below_threshold:
        repaired = clone(state) if len(state.dims) > 1 else state
        state = _planned(snapshot, state, constraints, bool(unmet), notes, room_first=room_first)
        if not state.balanced():
            held = room_held(state)
            cut_short = room_first and held is not None
            if not cut_short and len(state.dims) > 1:
                state = _closest(snapshot, repaired, constraints, state, began, notes)
        policy = state.policy
    if state.balanced():  # the exact model or the local search brought it within: no longer so
        notes[:] = [n for n in notes if not (n.startswith("spread ") and "stays above" in n)]
    if not below_threshold and len(state.dims) > 1:  # one dimension: its notes say so, as they always have
        unmet += _out_of_band(state, notes, bands)

    plan = Plan(
        snapshot_id=snapshot.snapshot_id,
        method=",".join(state.dims),
        mode=policy.mode,
        balanciness=bands[state.dims[0]],
        bands=bands,
        before=before,
        after=summarize(state.loads, state.targets, state.dims),
        unmet=unmet,
        notes=notes,
    )
    if cut_short:  # what making_room judges it by, without its actions: made again in full if it is kept
        return Planned(plan, held, cut_short)
    timetable = schedule(state.moves, snapshot, policy, constraints)  # batches and queue order (schedule.py)
    plan.notes += timetable.notes
    plan.actions.extend(_to_migrations(timetable.moves, snapshot, policy, state.targets, timetable.batches,
                                       timetable.after or [[] for _ in timetable.moves]))
    plan.splits = timetable.splits
    plan.expected_seconds = round(timetable.expected_seconds, 1)
    plan.violations = find_violations(snapshot, plan, policy, constraints)
    plan.outcome, plan.outcome_reason = outcome_of(plan, below_threshold=below_threshold, quiet=quiet)
    plan.held_out = held_out_nodes(snapshot, state)
    # After the outcome, whose reason quotes the notes. Only where no safe move helps (not at the cap).
    if not below_threshold and any("stays above" in n for n in plan.notes):
        plan.notes += held_back(state)
    plan.notes += costly_moves(state, plan)
    held = room_held(state) if not below_threshold and not state.balanced() else None
    return Planned(plan, held, cut_short)


REPAIR_ONLY = "a drain's plan: only the moves the rules ask for (the drained nodes, pins, affinity); no balancing"


def _planned(snapshot: ClusterSnapshot, state: PlanState, constraints: Constraints, rules_unmet: bool,
             notes: list[str], thorough: bool = True, room_first: bool = False) -> PlanState:
    """The balance phase on the state after the repairs: the heuristics, the exact model where it is
    small enough, the local search where it is not (or found nothing that balances), then the search
    a few nodes at a time (and after it the whole model: exact_phase.few_nodes_model where it was not
    searched before, exact_phase.capped_again where it was and proved nothing). `thorough`:
    the exact search of several dimensions as exact_phase.exact_if_fewer says (else as for one)."""
    policy = state.policy
    repaired = clone(state) if _searches(state) else None  # the local search's start (improve.py)
    if not state.balanced():
        state = _balance(state, notes, room_first)
    # where the heuristics found no move at all the model is still asked while a dimension is above its
    # band: a trade of two guests kept apart (through a parking move) may be the only way in
    exact = (not rules_unmet and (bool(state.moves) or not state.balanced()) and _exact_applies(snapshot, policy)
             and exact_work(state) <= EXACT_MAX_WORK)
    proven = False  # the exact model proved that no plan has fewer migrations
    before_exact: tuple[PlanState, int] | None = None  # a plan it improved on, unproven: _by_subsets
    modelled = exact  # the whole model was searched
    if policy.max_migrations is not None and len(state.moves) >= policy.max_migrations and not state.balanced():
        notes.append(f"stopped at the cap of {policy.max_migrations} migrations per plan")
    elif exact:
        state, proven, before_exact = _exact(snapshot, policy, constraints, state, notes, thorough)
    if repaired is not None and (not exact or not state.balanced()):
        state = _searched(repaired, state, movable_units(repaired), notes)
        if not exact and not rules_unmet and state.balanced() and policy.exact_seconds > 0:
            state = _nearby(snapshot, policy, constraints, state, notes)
        elif not exact and not rules_unmet and bool(state.moves) and _exact_applies(snapshot, policy) \
                and exact_work(state) <= EXACT_MAX_WORK_UNBALANCED:
            modelled = True
            state, proven, before_exact = _exact(snapshot, policy, constraints, state, notes, thorough)
    searched = repaired is not None and thorough and not rules_unmet and not proven and policy.exact_seconds > 0
    solves = _subsets_solves(state) if searched else 0
    if solves != 0:
        state = _by_subsets(snapshot, policy, constraints, state, notes, before_exact, solves)
        if state.moves and state.balanced():  # the whole model after it: searched before it or not
            if not modelled and _exact_applies(snapshot, policy) and few_nodes_model(state):
                state = whole_then_subsets(snapshot, policy, constraints, state, notes)
            elif exact and again_applies(state):
                state = capped_again(snapshot, policy, constraints, state, notes)
    return state


def _exact(snapshot: ClusterSnapshot, policy: Policy, constraints: Constraints, plan: PlanState, notes: list[str],
           thorough: bool) -> tuple[PlanState, bool, tuple[PlanState, int] | None]:
    """exact_phase.exact_if_fewer, and `plan` with the count of notes so far where the model's plan
    replaced it without being proven the fewest."""
    said = len(notes)
    found, proven = exact_if_fewer(snapshot, policy, constraints, plan, notes, thorough)
    return found, proven, (plan, said) if found is not plan and not proven else None


def _nearby(snapshot: ClusterSnapshot, policy: Policy, constraints: Constraints, plan: PlanState,
            notes: list[str]) -> PlanState:
    """The exact model over the plan's neighbourhood (neighbourhood.py): where the whole model is
    too large, its plan when it has fewer migrations (and is preferred: balancing.objective)."""
    from .neighbourhood import fewer_nearby  # highspy: loaded only when used

    found = fewer_nearby(snapshot, policy, constraints, plan)
    if found is None or not prefer(found.moves, plan.moves, policy, constraints):
        return plan
    notes.append(f"exact solver over the plan's neighbourhood: {len(found.moves)} migrations instead of "
                 f"{len(plan.moves)}")
    return found


def _subsets_solves(state: PlanState) -> int | None:
    """The search a few nodes at a time's budget of solves for this plan: None (the module's own) for a
    whole model up to SUBSETS_MAX_WORK, past it one for each MOVES_A_SOLVE of the plan's moves (at most
    SHORT_SUBSETS_SOLVES), 0 (no search) past SHORT_SUBSETS_MAX_WORK."""
    work = exact_work(state)
    if work <= SUBSETS_MAX_WORK:
        return None
    return min(SHORT_SUBSETS_SOLVES, len(state.moves) // MOVES_A_SOLVE) if work <= SHORT_SUBSETS_MAX_WORK else 0


def _by_subsets(snapshot: ClusterSnapshot, policy: Policy, constraints: Constraints, plan: PlanState,
                notes: list[str], before_exact: tuple[PlanState, int] | None, solves: int | None) -> PlanState:
    """The exact model over a few nodes at a time, the rest of the plan held (node_subsets.by_subsets);
    `solves`: at most this many (None: the module's budget)."""
    from .node_subsets import by_subsets  # highspy: loaded only when used

    return by_subsets(snapshot, policy, constraints, plan, notes, before_exact, solves)


def _closest(snapshot: ClusterSnapshot, repaired: PlanState, constraints: Constraints, plan: PlanState,
             began: Vector, notes: list[str]) -> PlanState:
    """A plan that leaves some dimension above its band, as close as the others allow (closest.py):
    each dimension in turn let go, but no further than the spread it began with, the others planned
    for; then each dimension above its band brought closer by single moves that keep the others."""
    def planned(attempt: PlanState, told: list[str]) -> PlanState:
        # where the thorough search found no plan for all: each dimension let go is searched as one
        # dimension's model is (held-out seed 45: 4.6 s of 11.6 had gone to these searches)
        return _planned(snapshot, attempt, constraints, False, told, thorough=False)

    best, freed, said = let_go(repaired, plan, began, planned)
    if score(repaired, plan.bands, began) < score(best, plan.bands, began):
        best, freed, said = clone(repaired), "", []  # every plan left a dimension wider than it began
    if freed:
        notes[:] = [n for n in notes if not (n.startswith("spread ") and "stays above" in n)] + said
        notes.append(f"{freed} cannot be brought within its band with the others: planned for the others")
    best.policy = plan.policy  # the plan reads as asked: every dimension held to its band
    best.bands = plan.bands
    if not best.balanced() and squeeze(best, plan.bands, movable_units(repaired)):
        notes.append("then single moves that bring the dimensions above their bands closer, keeping the others")
    return best


def _below_thresholds(state: PlanState, notes: list[str]) -> list[str]:
    """The balanced dimensions with a threshold that no node passes (after the repairs): they are
    not balanced by this plan, and the notes say so."""
    quiet = []
    for i, dim in enumerate(state.dims):
        threshold = state.policy.threshold_of(dim)
        hottest = max((state.loads[n].percent_in(i) for n in state.targets), default=0.0)
        if threshold is not None and hottest < threshold:
            quiet.append(dim)
            notes.append(f"no node above the {dim} threshold of {threshold}%: "
                         + ("not balancing" if len(state.dims) == 1 else f"{dim} not balanced"))
    return quiet


def _out_of_band(state: PlanState, notes: list[str], bands: dict[str, float]) -> list[Unmet]:
    """Each dimension the plan leaves above its band, the largest excess first: how far, and why."""
    why = next((n.split(": ", 1)[1] for n in notes if n.startswith("spread ") and "stays above" in n),
               "no safe move the rules allow brings it closer")
    if any(n.startswith("stopped at the cap") for n in notes):
        why = f"the cap of {state.policy.max_migrations} migrations per plan is reached"
    quiet = {d for d, b in zip(state.dims, state.bands, strict=True) if not math.isfinite(b)}
    over = sorted(((s - bands[d], d, s, bands[d]) for d, s in zip(state.dims, state.spreads(), strict=True)
                   if s > bands[d] + BAND_TOLERANCE and d not in quiet), key=lambda x: (-x[0], x[1]))
    return [Unmet(rule=f"balance {d}", vmids=[],
                  reason=f"spread {s:.1f} pp, {excess:.1f} pp above its band of {b:g} pp: {why}")
            for excess, d, s, b in over]


EXACT_MAX_GUESTS = 500
# The exact model's size, in candidate guests x target nodes x dimensions, above which it is not
# built: HiGHS's root node alone (cuts, its own heuristics) then takes seconds. Measured on this
# repository's 2-core machine: groups balancing memory and CPU (1224) 1.5 s for the root, mid-300
# balancing CPU (2400) 5-9 s without a proof; maintenance with both (960) 0.4 s, every model of one
# dimension up to 645 (operator-rules) well under 0.5 s. The plan is then the heuristics' and the local
# search's (improve.py): the gate is work, not time, so it is the same on any machine.
EXACT_MAX_WORK = 1000
# ... and where neither the heuristics nor the local search bring every dimension within its band
# (several dimensions), the size up to which it is built all the same: a plan that leaves a
# dimension far apart is worth a longer search (held-out seed 13, tests/heldout.py, 1,224: CPU
# left 116 pp apart where the model proves 26 migrations balance both at its root node).
EXACT_MAX_WORK_UNBALANCED = 2500
# The size of the whole model (as EXACT_MAX_WORK) up to which a balanced plan of several dimensions
# is then searched a few nodes at a time (node_subsets.py).
SUBSETS_MAX_WORK = 2500
# ... and past it, up to this size, with its first solves only: one for each MOVES_A_SOLVE of the plan's
# moves, at most SHORT_SUBSETS_SOLVES. Held-out clusters of 6-8 nodes with 250-300 guests (tests/heldout.py
# drawn at that shape, 30-50 a node) ended 1.07-1.12x their minimum without any search (6 nodes, 300
# guests: 72 where 65 balance both, 60 where 54; 8 nodes: 63 where 59, 72 where 65; 7 nodes, 250: 48
# where 43); the search finds most of what it finds there within its first solves (those the plan's
# moves touch most), each 0.2-0.6 s on such a cluster: with them 67, 55, 61, 66 and 45, plans 1.5-8 s
# (the whole search: 12-113 s). A plan of few moves has few to spare, and a budget that follows them
# keeps mid-300's plans (8 nodes, 300 guests, 4,800 with two dimensions, 18-25 moves: 3-5 solves of
# about 0.04 s) within the 1.5 s; with three dimensions (7,200) it is past the gate.
SHORT_SUBSETS_MAX_WORK = 5000
SHORT_SUBSETS_SOLVES = 15
MOVES_A_SOLVE = 5


def _balance(state: PlanState, notes: list[str], room_first: bool = False) -> PlanState:
    """The balance phase: the band plan (band.py, built for few moves) and the greedy one
    (search.py, variance step by step), the one with fewer migrations (then the greedy one). On
    clusters too large for the exact model the greedy plan is only the fallback, to keep planning
    time down: the band plan needed fewer moves on every bundled cluster of that size. There, with
    several dimensions, the box plan finished by the greedy is the plan even where it leaves a
    dimension above its band: the greedy from scratch is no closer (xl-10k with cpu,disk: cpu 27.5
    and disk 34.0 pp against 5.3 and 22.8) at twice the moves and time. A room-first plan without
    memory on such a cluster asks room_probe.py first: where room holds, the box search is skipped."""
    units = movable_units(state)
    large = len(state.guests) > EXACT_MAX_GUESTS
    if room_first and large and "memory" not in state.dims and len(state.dims) > 1 and state.policy.min_gain <= 0:
        probed = room_probe(state, units, notes)  # a plan room holds, handed back without the box search
        if probed is not None:
            return probed
    until = _held if room_first and large else None  # a plan room holds is made again with memory
    banded: PlanState | None = None
    finished: list[str] = []  # the greedy finish's notes: why a dimension stays above its band
    # min_gain asks every balance move to lower the variance by itself: only the greedy plan's do
    band = band_plan(state, units) if state.policy.min_gain <= 0 else None
    if band is not None and state.budget_left(sum(len(u) for u, _ in band.moves)):
        banded = clone(state)
        ordered = apply_in_order(banded, band.moves)
        if not banded.balanced() and len(state.dims) > 1:  # a box no node could all be brought into:
            # the greedy finishes it; with room_first, only until a node full of memory holds a
            # dimension apart (xl-10k cpu,disk: from its 7th step of 160): made again with memory
            balance_moves(banded, units_by_node(banded, movable_units(banded)), finished, large, until=until)
        elif not ordered:
            banded = None
        if banded is not None and not banded.balanced() and not (large and len(state.dims) > 1):
            banded = None
    if banded is not None and large:
        notes.extend(finished)
        return banded
    greedy_notes: list[str] = []  # with room_first, it too stops where room holds (xl-10k disk: its 22nd of 121)
    balance_moves(state, units_by_node(state, units), greedy_notes, large, until=until)
    if banded is not None and prefer(banded.moves, state.moves, state.policy, state.c):  # balancing.objective
        state, greedy_notes = banded, []
    notes.extend(greedy_notes)
    return state


def _held(state: PlanState) -> bool:
    return room_held(state) is not None


def _searches(state: PlanState) -> bool:
    """Whether the local search (improve.py) runs: several dimensions, a cluster the size the exact
    model is built for, and no per-plan cap or minimum gain (it knows neither)."""
    policy = state.policy
    return (len(state.dims) > 1 and len(state.guests) <= EXACT_MAX_GUESTS and policy.max_migrations is None
            and policy.min_gain <= 0)


def _searched(base: PlanState, chosen: PlanState, units: list[frozenset[int]], notes: list[str]) -> PlanState:
    """The local search (improve.py) from the plan chosen and from each dimension's own band plan;
    its plan if it balances where the chosen one does not, or is preferred to it (fewer migrations).
    It runs where the exact model is not built (too large) or found nothing that balances."""
    from .improve import fewer_moves  # numpy: loaded only when several dimensions are balanced

    starts = [chosen]
    for i in range(len(base.dims)):
        one = band_plan(base, units, only=i)
        if one is not None:
            start = clone(base)
            apply_in_order(start, one.moves)
            starts.append(start)
    found = fewer_moves(base, starts, units)
    if found is None or (chosen.balanced() and not prefer(found.moves, chosen.moves, chosen.policy, chosen.c)):
        return chosen
    notes.append(f"local search: {len(found.moves)} migrations instead of {len(chosen.moves)}"
                 + ("" if chosen.balanced() else " that left a dimension above its band"))
    return found


def _exact_applies(snapshot: ClusterSnapshot, policy: Policy) -> bool:
    """The exact model knows the rules and the memory limit, not the per-plan caps or vCPU limit.
    `exact_seconds` > 0 turns it on; its search is bounded by work (exact.EXACT_NODE_LIMIT), never
    by time, so that no load on the machine changes a plan."""
    return (policy.exact_seconds > 0 and len(snapshot.guests) <= EXACT_MAX_GUESTS
            and policy.max_migrations is None and policy.max_migrations_per_target is None
            and policy.cpu_overcommit is None and policy.threshold is None and not policy.thresholds)


def _to_migrations(moves: list[Move], snapshot: ClusterSnapshot, policy: Policy, targets: list[str],
                   batches: list[int], after: list[list[int]]) -> list[Migration]:
    """Replay the moves (in queue order) to record each one's effect; `batches` and `after` from schedule.py."""
    loads = initial_loads(snapshot, policy)
    result = []
    spread = spread_in(loads, targets, 0)  # the first dimension's, as a migration reports it
    for move, batch, waits in zip(moves, batches, after, strict=True):
        before = spread
        loads[move.source].add(move.load, -1.0)
        loads[move.target].add(move.load)
        spread = spread_in(loads, targets, 0)
        g = move.guest
        result.append(
            Migration(
                vmid=g.vmid, name=g.name, type=g.type, source=move.source, target=move.target,
                reason=move.reason, detail=move.detail,
                online=g.type is GuestType.QEMU and g.running and policy.live,
                mem_bytes=g.mem, local_disk_bytes=g.local_disk, local_disks=g.local_storage_bytes(),
                spread_before_pp=round(before, 3), spread_after_pp=round(spread, 3),
                batch=batch, after=waits,
            )
        )
    return result


__all__ = ["Constraints", "is_movable", "plan_balance"]
