"""Storage balancing: the disk moves that bring each group's fullest and emptiest storage within
`storage_balancing.balanciness` percentage points, with the fewest moves, then the fewest GiB copied,
no storage above `max_usage` at any step (counting the moves in flight), in a safe order.

Pure: a snapshot and settings in, a StoragePlan out (no Redis, no HTTP). Each group is planned on its
own (a disk moves only within its group). storage_facts.py reads what may move and what stays,
storage_select.py chooses the moves, this module orders them into batches and says what is left.

The order's safety rule, which tests/oracle_storage_balance.py checks on its own: a move holds its
disk's size on its target from the moment it starts, and frees it on its source only once it has
ended; moves of one batch run at once (each storage in at most `max_parallel_per_storage` of them), a
batch starts once the one before it has ended. So while a batch runs, a storage holds what it held
before the batch plus every disk the batch copies onto it, and a storage that receives must stay at
or below `max_usage` then. Moves in flight when planning count on their targets throughout and are
not credited to their sources before the plan ends.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from pvebalance.shared.config import StorageBalancingSettings
from pvebalance.shared.models import ClusterSnapshot

from .storage_facts import Candidate, Facts, Store, read_facts
from .storage_models import (
    GIB,
    DiskMove,
    DiskStay,
    GroupOutcome,
    StorageFigures,
    StoragePlan,
    StorageUnmet,
)
from .storage_select import Selection, exact, final_bytes, greedy, spread

__all__ = ["DiskMove", "DiskStay", "GroupOutcome", "StorageFigures", "StoragePlan", "StorageUnmet",
           "plan_storage_balance"]

_EPS = 1e-7


def plan_storage_balance(snapshot: ClusterSnapshot, settings: StorageBalancingSettings, *,
                         ignore: Collection[int] = (), in_flight: Sequence[DiskMove] = (),
                         migrated: Collection[int] = ()) -> StoragePlan:
    """The plan for every group of `settings` (planned whether or not `settings.enable` is on: the
    caller decides whether to run it). `ignore`: vmids the operator has the balancer leave alone;
    `in_flight`: disk moves running now (their disks stay, their copies count on their targets);
    `migrated`: guests the same plan migrates to another node (their disks stay)."""
    facts = read_facts(snapshot, settings, ignore, in_flight, migrated)
    plan = StoragePlan(stays=facts.stays, notes=facts.notes)
    for group in facts.groups:
        if len(group) < 2:
            plan.notes.append(f"group {group}: fewer than two storages to balance")
            continue
        _plan_group(plan, facts, group, settings)
    # groups share no storage: their batches of the same number run at once
    plan.moves.sort(key=lambda m: m.batch)
    return plan


def _plan_group(plan: StoragePlan, facts: Facts, group: list[str], settings: StorageBalancingSettings) -> None:
    stores = facts.stores
    members = set(group)
    cands = [c for c in facts.candidates if c.source in members]
    before = final_bytes(group, stores, [])
    spread_before = spread(before, stores)
    band, max_usage, per = settings.balanciness, settings.max_usage, settings.max_parallel_per_storage
    selection = Selection([], "none")
    ordered: list[list[tuple[Candidate, str]]] = []
    if spread_before > band + _EPS and cands:
        selection, ordered = _select_and_order(group, stores, cands, band, max_usage, per)
    for b, batch in enumerate(ordered):
        for c, t in batch:
            plan.moves.append(DiskMove(vmid=c.vmid, guest_type=c.guest_type, name=c.name, node=c.node, disk=c.disk,
                                       source=c.source, target=t, size=c.size, batch=b))
    after = final_bytes(group, stores, selection.moves)
    spread_after = spread(after, stores)
    plan.groups.append(GroupOutcome(storages=group, spread_before_pp=round(spread_before, 3),
                                    spread_after_pp=round(spread_after, 3), method=selection.method,
                                    proven=selection.proven))
    plan.storages += [StorageFigures(storage=s, total=stores[s].total, before=stores[s].used,
                                     after=round(after[s])) for s in group]
    if spread_after > band + _EPS:
        plan.unmet.append(StorageUnmet(storages=group, spread_pp=round(spread_after, 3), band_pp=band,
                                       over_pp=round(spread_after - band, 3),
                                       reason=_why_unmet(group, stores, after, selection, cands, plan.stays,
                                                         max_usage)))


def _select_and_order(group: list[str], stores: dict[str, Store], cands: list[Candidate], band: float,
                      max_usage: float, per: int) -> tuple[Selection, list[list[tuple[Candidate, str]]]]:
    """The best selection that has a safe order, with that order. The exact model bounds only the end
    state first; if its moves have no safe order, the model that counts every arrival before any
    departure (any order safe) decides. The greedy's moves are safe one after another by construction;
    the exact plan is taken when it is no worse (narrower spread, then fewer moves, then fewer GiB)."""
    options: list[tuple[Selection, list[list[tuple[Candidate, str]]]]] = []
    for strict in (False, True):
        found = exact(group, stores, cands, band, max_usage, strict=strict)
        if found is None:  # too large, or nothing found in the node limit: nor would the stricter model
            break
        ordered = order_moves(stores, found.moves, max_usage, per)
        if ordered is not None:
            options.append((found, ordered))
            break
    quick = greedy(group, stores, cands, band, max_usage)
    ordered = order_moves(stores, quick.moves, max_usage, per) or [[move] for move in quick.moves]
    options.append((quick, ordered))

    def worth(option: tuple[Selection, list[list[tuple[Candidate, str]]]]) -> tuple[float, int, int]:
        moves = option[0].moves
        over = max(0.0, spread(final_bytes(group, stores, moves), stores) - band)
        return round(over, 6), len(moves), sum(c.size for c, _ in moves)

    return min(options, key=worth)  # min keeps the first of equals: the exact plan


def order_moves(stores: dict[str, Store], moves: list[tuple[Candidate, str]], max_usage: float,
                per: int) -> list[list[tuple[Candidate, str]]] | None:
    """The moves in batches that keep every receiving storage at or below max_usage while a batch
    runs (the module's rule), the fullest sources' largest disks first; None when no order found
    by filling one batch at a time is safe."""
    now = {s: float(st.used) for s, st in stores.items()}
    limit = {s: st.limit(max_usage) for s, st in stores.items()}
    pct = {s: now[s] / st.total for s, st in stores.items() if st.total > 0}
    pending = sorted(moves, key=lambda m: (-pct.get(m[0].source, 0.0), -m[0].size, m[0].vmid, m[0].disk))
    batches: list[list[tuple[Candidate, str]]] = []
    while pending:
        batch: list[tuple[Candidate, str]] = []
        busy: dict[str, int] = {}
        arriving: dict[str, float] = {}
        for c, t in pending:
            if busy.get(c.source, 0) >= per or busy.get(t, 0) >= per:
                continue
            if now[t] + arriving.get(t, 0.0) + c.size > limit[t]:
                continue
            batch.append((c, t))
            busy[c.source] = busy.get(c.source, 0) + 1
            busy[t] = busy.get(t, 0) + 1
            arriving[t] = arriving.get(t, 0.0) + c.size
        if not batch:
            return None
        for c, t in batch:
            now[t] += c.size
            now[c.source] -= c.size
            pending.remove((c, t))
        batches.append(batch)
    return batches


def _why_unmet(group: list[str], stores: dict[str, Store], after: dict[str, float], selection: Selection,
               cands: list[Candidate], stays: list[DiskStay], max_usage: float) -> str:
    pct = {s: 100.0 * after[s] / stores[s].total for s in group}
    top = max(group, key=lambda s: pct[s])
    staying = [d for d in stays if d.storage == top]
    kinds = sorted({d.kind for d in staying})
    held = f"; {len(staying)} disks on {top} stay ({', '.join(kinds)})" if staying else ""
    gib = sum(d.size for d in [c for c in cands if c.source == top]) / GIB
    if not cands:
        return f"no disk of the group can move{held}"
    if selection.method == "exact" and selection.proven:
        return (f"no set of moves brings it closer than {max(pct.values()) - min(pct.values()):.1f} pp with every "
                f"storage at or below {max_usage:g} % ({gib:.0f} GiB movable on {top}){held}")
    return f"no further single move narrows it within {max_usage:g} % ({gib:.0f} GiB movable on {top}){held}"
