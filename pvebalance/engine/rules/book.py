"""The rule book of one snapshot: what every registered family read from it, and the guests that
never move. The engine's state, the exact model and the plan's check all read this one book."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pvebalance.shared.models import ClusterSnapshot

from ..policy import Policy
from .family import Family, Group, Restriction
from .fixed import fixed_guests


@dataclass
class Constraints:
    fixed: dict[int, str] = field(default_factory=dict)  # vmid -> why it never moves
    draining: frozenset[str] = frozenset()  # nodes being emptied
    # Each family's own groups, under its name:
    restrictions: dict[str, dict[int, Restriction]] = field(default_factory=dict)  # vmid -> nodes it may run on
    together: dict[str, list[Group]] = field(default_factory=dict)  # groups that end on one node
    apart: dict[str, list[Group]] = field(default_factory=dict)  # groups that end on different nodes
    apart_of: dict[str, dict[int, list[Group]]] = field(default_factory=dict)  # vmid -> its apart groups
    # Guests that move as one: every family's together-groups, joined where they share a guest.
    units: dict[int, frozenset[int]] = field(default_factory=dict)
    families: list[Family] = field(default_factory=list)  # the families that found rules, in the registry's order

    def unit(self, vmid: int) -> frozenset[int]:
        return self.units.get(vmid) or frozenset({vmid})


def build_constraints(snapshot: ClusterSnapshot, policy: Policy,
                      families: Sequence[Family] | None = None) -> Constraints:
    """The book for a snapshot, read by `families` (the registry's, unless given)."""
    from .registry import FAMILIES  # imported here: every family module imports this one

    book = Constraints()
    book.families = [f for f in (FAMILIES if families is None else families) if f.read(snapshot, policy, book)]
    book.fixed = fixed_guests(snapshot, policy, book.draining)
    book.units = _join(g for groups in book.together.values() for g in groups)
    return book


def _join(groups: Iterable[Group]) -> dict[int, frozenset[int]]:
    """Together-groups that share a guest become one unit: a guest cannot be in two places."""
    merged: list[set[int]] = []
    for group in groups:
        members = set(group.vmids)
        rest = []
        for other in merged:
            if other & members:
                members |= other
            else:
                rest.append(other)
        merged = [*rest, members]
    return {v: frozenset(m) for m in merged for v in m}
