"""Guests the engine never moves, and why: not a family of rules between guests, but the ground they
stand on (templates, locks, plb_ignore tags, the config's exclusions, cooldown, local devices...)."""

from __future__ import annotations

from fnmatch import fnmatchcase

from pvebalance.shared.models import ClusterSnapshot, GuestState, GuestType

from ..policy import Policy

IGNORE_PREFIX = "plb_ignore"
# HA service states in which the HA manager is moving, recovering or holding the guest itself
_HA_BUSY = {"migrate", "relocate", "fence", "recovery", "error", "freeze", "request_stop"}


def fixed_reason(guest: GuestState, policy: Policy, draining: frozenset[str] = frozenset()) -> str | None:
    """Why the balancer must leave this guest where it is, or None if it may move.

    Cooldown never holds a guest on a node being drained: a guest moved onto a node shortly before the
    node went into maintenance must leave with the others."""
    if guest.template:
        return "template"
    if guest.lock:
        return f"locked ({guest.lock})"
    if any(t.startswith(IGNORE_PREFIX) for t in guest.tags):
        return "plb_ignore tag"
    if guest.vmid in policy.ignore_guests:
        return "excluded in the config"
    if (pattern := _excluding_pattern(guest.name, policy)) is not None:
        return f"excluded in the config ({pattern})"
    if guest.node in policy.ignore_nodes:
        return f"its node {guest.node} is ignored"
    if guest.type not in policy.balance_types:
        return f"{guest.type.value} not in balance_types"
    if guest.vmid in policy.cooldown and guest.node not in draining:
        return "moved recently (cooldown)"
    if guest.node not in draining and (waiting := adaptive_cooldown(guest.vmid, policy)) is not None:
        return waiting
    if guest.hastate in _HA_BUSY:
        return f"HA state {guest.hastate}"
    if guest.running and guest.type is GuestType.QEMU and guest.local_resources:
        return f"uses local devices ({', '.join(guest.local_resources)})"
    if not policy.live and guest.running and guest.type is GuestType.QEMU:
        # PVE moves a running VM only live ("can't migrate running VM without --online"); the
        # migrator skips such a move, so the plan must not count on it
        return "running VM and balancing.live is off"
    if not policy.with_local_disks and guest.local_disk > 0:
        return "has disks on local storage (balancing.with_local_disks is off)"
    return None


def fixed_guests(snapshot: ClusterSnapshot, policy: Policy, draining: frozenset[str]) -> dict[int, str]:
    fixed = {}
    rebalance_off = frozenset(snapshot.ha_auto_rebalance_off)
    for g in snapshot.guests:
        reason = fixed_reason(g, policy, draining)
        if reason is None and g.hastate and snapshot.ha_auto_rebalance and policy.leave_ha_to_crs \
                and g.vmid not in rebalance_off:  # PVE 9.2: auto-rebalance=0 leaves the resource to us
            reason = "Proxmox HA auto-rebalance manages it"
        if reason:
            fixed[g.vmid] = reason
    return fixed


def _excluding_pattern(name: str, policy: Policy) -> str | None:
    """The `ignore_guests` name or shell-style pattern (`veeam-*`) that matches the guest's name,
    compared case-insensitively (guest names are host names)."""
    if not policy.ignore_guests_by_name:
        return None
    folded = name.casefold()
    for pattern in sorted(policy.ignore_guests_by_name):
        if fnmatchcase(folded, pattern.casefold()):
            return pattern
    return None


def adaptive_cooldown(vmid: int, policy: Policy) -> str | None:
    """Why a guest moved n times within 24 h still waits, or None: it waits max(cooldown, its last
    move's duration) x 2^(n-1) after its last move, at most `cooldown_cap_minutes`."""
    moves = policy.recent_moves(vmid)
    end = cooldown_end(vmid, policy)
    if end is None or policy.now >= end:
        return None
    times = "once" if len(moves) == 1 else f"{len(moves)} times"
    wait = end - moves[-1].at
    return f"moved {times} in 24 h: waits {round(wait / 60, 1):g} min after its last move (adaptive cooldown)"


def cooldown_end(vmid: int, policy: Policy) -> float | None:
    """When the guest's cooldown after its last move ends (epoch seconds), None without a recent move."""
    moves = policy.recent_moves(vmid)
    if not moves:
        return None
    last = moves[-1]
    wait = min(max(policy.cooldown_minutes * 60, last.duration_s) * 2.0 ** (len(moves) - 1),
               policy.cooldown_cap_minutes * 60)
    return last.at + wait
