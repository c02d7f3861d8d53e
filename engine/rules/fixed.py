"""Guests the engine never moves, and why: not a family of rules between guests, but the ground they
stand on (templates, locks, plb_ignore tags, the config's exclusions, cooldown, local devices...)."""

from __future__ import annotations

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
    if guest.vmid in policy.ignore_guests or guest.name in policy.ignore_guests_by_name:
        return "excluded in the config"
    if guest.node in policy.ignore_nodes:
        return f"its node {guest.node} is ignored"
    if guest.type not in policy.balance_types:
        return f"{guest.type.value} not in balance_types"
    if guest.vmid in policy.cooldown and guest.node not in draining:
        return "moved recently (cooldown)"
    if guest.hastate in _HA_BUSY:
        return f"HA state {guest.hastate}"
    if guest.running and guest.type is GuestType.QEMU and guest.local_resources:
        return f"uses local devices ({', '.join(guest.local_resources)})"
    return None


def fixed_guests(snapshot: ClusterSnapshot, policy: Policy, draining: frozenset[str]) -> dict[int, str]:
    fixed = {}
    for g in snapshot.guests:
        reason = fixed_reason(g, policy, draining)
        if reason is None and g.hastate and snapshot.ha_auto_rebalance and policy.leave_ha_to_crs:
            reason = "Proxmox HA auto-rebalance manages it"
        if reason:
            fixed[g.vmid] = reason
    return fixed
