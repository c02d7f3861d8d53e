"""PVE 9 HA resource-affinity rules: positive ones keep their resources on one node, negative ones
on different nodes. One family of two kinds: the positive rules repair first, as all affinity does."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Literal

from pvebalance.shared.models import ClusterSnapshot, GuestState, MigrationReason

from ..policy import Policy
from .family import Breach, ExactModel, Family, Fix
from .ha_node_affinity import sid_vmid
from .kinds import ApartRule, TogetherRule

if TYPE_CHECKING:
    from ..state import PlanState
    from .book import Constraints


def _rules(snapshot: ClusterSnapshot, affinity: Literal["positive", "negative"]) -> Iterator[tuple[str, Iterable[int]]]:
    for r in snapshot.ha_rules:
        if not r.disabled and r.type == "resource-affinity" and r.affinity == affinity:
            yield f"ha:{r.rule}", [v for v in (sid_vmid(s) for s in r.resources) if v is not None]


class _Positive(TogetherRule):
    name = "ha-resource-affinity/positive"
    reason = MigrationReason.HA_RULE

    def groups(self, snapshot: ClusterSnapshot, policy: Policy) -> Iterator[tuple[str, Iterable[int]]]:
        return _rules(snapshot, "positive")


class _Negative(ApartRule):
    name = "ha-resource-affinity/negative"
    reason = MigrationReason.HA_RULE

    def groups(self, snapshot: ClusterSnapshot, policy: Policy) -> Iterator[tuple[str, Iterable[int]]]:
        return _rules(snapshot, "negative")


class HaResourceAffinity(Family):
    name = "ha-resource-affinity"
    parts: tuple[Family, ...] = (_Positive(), _Negative())

    def read(self, snapshot: ClusterSnapshot, policy: Policy, book: Constraints) -> bool:
        found = [part.read(snapshot, policy, book) for part in self.parts]  # every part, not the first that finds
        return any(found)

    def allows(self, state: PlanState, vmids: frozenset[int], target: str) -> bool:
        return all(part.allows(state, vmids, target) for part in self.parts)

    def refusal(self, state: PlanState, vmids: frozenset[int], target: str) -> str | None:
        return next((why for part in self.parts if (why := part.refusal(state, vmids, target)) is not None), None)

    def fixes(self, state: PlanState) -> Iterator[Fix]:
        for part in self.parts:
            yield from part.fixes(state)

    def exact(self, book: Constraints, model: ExactModel) -> None:
        for part in self.parts:
            part.exact(book, model)

    def check(self, book: Constraints, where: Mapping[int, str], guests: Mapping[int, GuestState]) -> Iterator[Breach]:
        for part in self.parts:
            yield from part.check(book, where, guests)
