"""One plan for the whole cluster: the migrations that balance the nodes (balance.py) and, where storage
balancing is on, the disk moves that balance the shared storages (storage_balance.py), as one list of
actions: the migrations first, then the disk moves in their batches.

The two parts share no resource a rule or a limit counts twice: a migration of a guest on shared storage
copies no disk, and a disk move changes no node's memory or CPU. They share guests: a disk move runs on
the node the guest is on, so the disks of a guest the plan migrates stay (said among the disks that stay),
and the next plan moves them if they still need to.
"""

from __future__ import annotations

from collections.abc import Sequence

from pvebalance.shared.config import StorageBalancingSettings
from pvebalance.shared.models import ClusterSnapshot, DiskMove, NodeUsage, Plan, StorageBalance, Unmet
from pvebalance.shared.words import plural

from .balance import plan_balance
from .policy import Policy
from .storage_balance import plan_storage_balance
from .storage_models import StoragePlan


def plan_cluster(snapshot: ClusterSnapshot, policy: Policy, storage: StorageBalancingSettings | None = None,
                 disks_in_flight: Sequence[DiskMove] = ()) -> Plan:
    """The node plan, with the storage plan's disk moves after its migrations when `storage.enable` is on."""
    plan = plan_balance(snapshot, policy)
    if storage is None or not storage.enable:
        return plan
    migrated = {m.vmid for m in plan.migrations}
    disks = plan_storage_balance(snapshot, storage, ignore=policy.ignore_guests, in_flight=disks_in_flight,
                                 migrated=migrated)
    return with_disk_moves(plan, disks, storage)


def _ordered(moves: list[DiskMove], offset: int) -> list[DiskMove]:
    """Each disk move waiting for the disk moves of the batch before its own (and its guest's earlier disk
    move), as the plan's action indexes (`offset`: the actions before the first disk move)."""
    of_batch: dict[int, list[int]] = {}
    last_of: dict[int, int] = {}
    out = []
    for i, m in enumerate(moves, offset):
        own = {last_of[m.vmid]} if m.vmid in last_of else set()
        out.append(m.model_copy(update={"after": sorted(set(of_batch.get(m.batch - 1, [])) | own)}))
        of_batch.setdefault(m.batch, []).append(i)
        last_of[m.vmid] = i
    return out


def with_disk_moves(plan: Plan, disks: StoragePlan, storage: StorageBalancingSettings) -> Plan:
    """`plan` with the storage plan's moves as its last actions and its figures as `plan.storage`."""
    def usage(used: dict[str, int]) -> dict[str, NodeUsage]:
        return {f.storage: NodeUsage(used=used[f.storage], total=f.total, percent=100.0 * used[f.storage] / f.total)
                for f in disks.storages}

    summary = StorageBalance(
        band_pp=storage.balanciness, max_usage=storage.max_usage,
        before=usage({f.storage: f.before for f in disks.storages}),
        after=usage({f.storage: f.after for f in disks.storages}),
        groups=disks.groups,
        stays=[f"{s.guest_type.value} {s.vmid} {s.disk} on {s.storage}: {s.reason}" for s in disks.stays],
    )
    unmet = [Unmet(rule=f"storage group {', '.join(u.storages)}", vmids=[],
                   reason=f"spread {u.spread_pp:.1f} pp after the plan, {u.over_pp:.1f} pp over its band of "
                          f"{u.band_pp:g} pp: {u.reason}") for u in disks.unmet]
    outcome, reason = plan.outcome, plan.outcome_reason
    spreads = ", ".join(f"{'/'.join(g.storages)} {g.spread_before_pp:.1f} -> {g.spread_after_pp:.1f} pp"
                        for g in disks.groups)
    said = (f"{plural(len(disks.moves), 'disk move')} ({disks.gib_moved:.1f} GiB): storage spread {spreads} "
            f"(balanciness {storage.balanciness:g} pp)")
    if disks.moves or unmet:
        reason = "; ".join([*([reason] if outcome != "balanced" else []), *([said] if disks.moves else []),
                            *(u.reason for u in unmet)])
        if outcome == "balanced":
            outcome = "partial" if unmet else "planned"
        elif (outcome == "planned" and unmet) or (outcome == "infeasible" and disks.moves):
            outcome = "partial"  # a part is left undone: the unmet or the outcome's reason says which
    return plan.model_copy(update={"actions": [*plan.actions, *_ordered(disks.moves, len(plan.actions))],
                                   "storage": summary,
                                   "unmet": [*plan.unmet, *unmet], "notes": [*plan.notes, *disks.notes],
                                   "outcome": outcome, "outcome_reason": reason})
