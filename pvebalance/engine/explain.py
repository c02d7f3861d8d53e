"""A plan's explanations beyond its outcome: what holds back the guests that would bring a dimension
within its band, and the moves that copy far more than they gain.

"No move that the rules allow lowers it safely" tells an operator nothing to act on. For a plan that
leaves a dimension above its band, `held_back` names the guests on the fullest node whose move to
the emptiest would narrow the gap, best first, each with what holds it: a cooldown (until when),
no return, a rule, a lock, room on the target, or nothing (the move would not lower the spread as a
whole). Read on the plan's final state, so it speaks of the cluster as the plan leaves it.
`held_out_nodes` says which nodes the spread leaves out, and why (offline, maintenance, ...).
"""

from __future__ import annotations

import math
import time

from pvebalance.shared.models import ClusterSnapshot, MigrationReason, Plan

from . import fit
from .rules.fixed import cooldown_end
from .state import PlanState

SHOWN = 5  # guests named per plan: the best helpers; more would bury the first ones
# A balance move is worth a note when it copies this much at least, and this many times its guest's
# memory or more: 64.9 GiB copied (mostly local disks) for a VM of 4.9 GiB, which shifts 1.4 pp.
COSTLY_GIB = 8.0
COSTLY_FACTOR = 4.0


def held_back(state: PlanState, shown: int = SHOWN) -> list[str]:
    """One note per guest that would help the dimension furthest above its band, and what holds it."""
    found = _helpers(state)
    if found is None:
        return []
    i, fullest, emptiest, helpers = found
    dim = state.dims[i]
    notes = []
    for vmid in helpers[:shown]:
        guest = state.guests[vmid]
        notes.append(f"guest {vmid} ({guest.name}) would narrow the {dim} gap moving {fullest} -> {emptiest}: "
                     f"{_what_holds(state, vmid, emptiest, i)}")
    if len(helpers) > shown:
        notes.append(f"{len(helpers) - shown} more guests on {fullest} would help; the first {shown} are named")
    return notes


def room_held(state: PlanState) -> str | None:
    """The dimension furthest above its band, where its emptiest node lacks the memory for every
    guest of the fullest that would narrow the gap (and is not yet moved): a node full of memory
    that takes nothing until memory leaves it. None where it does not."""
    found = _helpers(state)
    if found is None:
        return None
    i, _, emptiest, helpers = found
    free = [v for v in helpers if v not in state.moved and v not in state.c.fixed]
    node = state.loads[emptiest].figures
    held = bool(free) and all(
        fit.memory_refusal(state.arriving(state.c.unit(v), emptiest), node, state.policy) is not None for v in free)
    return state.dims[i] if held else None


def _helpers(state: PlanState) -> tuple[int, str, str, list[int]] | None:
    """The dimension furthest above its band, its fullest and emptiest target, and the guests of the
    fullest whose move to the emptiest would narrow the gap between them, best first."""
    over = [(s - b, i) for i, (s, b) in enumerate(zip(state.spreads(), state.bands, strict=True))
            if math.isfinite(b) and s > b]
    if not over or len(state.targets) < 2:
        return None
    _, i = max(over)
    pct = {n: state.loads[n].percent_in(i) for n in state.targets}
    fullest = max(state.targets, key=lambda n: (pct[n], n))
    emptiest = min(state.targets, key=lambda n: (pct[n], n))
    gap = pct[fullest] - pct[emptiest]
    full_cap, empty_cap = state.loads[fullest].capacity[i], state.loads[emptiest].capacity[i]
    helpers = []
    for vmid, node in state.where.items():
        if node != fullest:
            continue
        load = state.guest_load(vmid)[i]
        if load <= 0:
            continue
        after = abs((pct[fullest] - 100 * load / full_cap) - (pct[emptiest] + 100 * load / empty_cap))
        if after < gap:
            helpers.append((after, vmid))
    return i, fullest, emptiest, [vmid for _, vmid in sorted(helpers)]


def _what_holds(state: PlanState, vmid: int, target: str, i: int) -> str:
    fixed = state.c.fixed.get(vmid)
    if fixed is not None:
        end = cooldown_end(vmid, state.policy) if "cooldown" in fixed else None
        if end is None:
            return fixed
        return fixed.replace("(cooldown)", f"(cooldown until {clock(end)})") if "(cooldown)" in fixed \
            else f"{fixed}, until {clock(end)}"
    if vmid in state.moved:
        return "this plan moves it already"
    unit = state.c.unit(vmid)
    if (why := state.refusal(unit, target)) is not None:
        return why if len(unit) == 1 else f"{why} (it moves with its group of {len(unit)})"
    return "nothing holds it, but the move alone does not lower the spread over all nodes " \
           "(another node would set it)"


def costly_moves(state: PlanState, plan: Plan) -> list[str]:
    """One note per balance move whose copy is far above the load it shifts: it copies COSTLY_FACTOR
    times its guest's memory or more (its local disks), while what it shifts is its load (for memory,
    that memory). A VM copied for its memory costs what it gains; one whose disks dwarf it does not.
    None where local disk is balanced: there the disks copied are the load shifted (xl-10k with
    disk had 305 such notes, one for nearly every move); nor for a move that shifts a whole band or
    more of its node, a gain no copy makes costly (mid-300 with cpu: a VM of 16 GiB shifting 48 pp).
    """
    if "disk" in state.dims:
        return []
    dim = state.dims[0]
    band = state.bands[0]
    notes = []
    for m in plan.migrations:
        if m.reason is not MigrationReason.BALANCE or m.source not in state.loads or m.gib_moved < COSTLY_GIB:
            continue
        memory = m.mem_bytes / 2**30
        if m.gib_moved < COSTLY_FACTOR * max(memory, 1e-9):
            continue
        shift = 100 * state.guest_load(m.vmid)[0] / max(state.loads[m.source].capacity[0], 1e-9)
        if shift >= band:
            continue
        notes.append(f"guest {m.vmid} ({m.name}) copies {m.gib_moved:.1f} GiB, {m.gib_moved / max(memory, 0.1):.0f}x "
                     f"its {memory:.1f} GiB of memory (its local disks), to shift {shift:.1f} pp of {dim}: "
                     "costly for its gain")
    return notes


def clock(epoch: float) -> str:
    """A moment in UTC, as plans say it (the same on every machine that reads the plan)."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


def held_out_nodes(snapshot: ClusterSnapshot, state: PlanState) -> dict[str, str]:
    """The nodes with a usage figure that the spread leaves out and nothing moves onto, and why."""
    online = {n.name: n.online for n in snapshot.nodes}
    return {
        name: "offline" if not online.get(name, False) else "maintenance" if name in state.draining
        else "ignored" if name in state.policy.ignore_nodes else "no capacity"
        for name in sorted(state.loads) if name not in state.targets
    }
