"""The one interface every rule family implements, and the shapes of its answers.

A family is one kind of rule from one source (plb_pin tags, HA node-affinity rules, ...). For a
snapshot it reads its groups into the rule book (`Constraints`); then, for the engine, it says
whether a placement is allowed, lists what it finds broken as `Fix`es (which `engine.repair`
carries out, one skeleton for every family), adds its constraints to the exact model, and checks a
placement (the end of a finished plan, or the start of the exact solver's) as `Breach`es.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from pvebalance.shared.models import ClusterSnapshot, GuestState, MigrationReason

from ..policy import Policy

if TYPE_CHECKING:
    from ..state import PlanState
    from .book import Constraints


@dataclass(frozen=True)
class Group:
    """Guests one rule binds together (or keeps apart)."""

    name: str  # as the plan names it: "tag:plb_affinity_web", "pool:ci", "ha:rule-id"
    vmids: frozenset[int]
    reason: MigrationReason


@dataclass(frozen=True)
class Restriction:
    """The nodes one guest may run on, by one family (several rules of it: their intersection)."""

    nodes: frozenset[str]
    rule: str  # the first rule that restricted it, as the plan names it


@dataclass(frozen=True)
class Fix:
    """One broken rule and how to repair it: move `unit` to a node where every rule holds.

    `stuck` says at once why it cannot be repaired (nothing is tried). Otherwise `nodes` are tried
    in order (the members of `unit` not already on a node move there), or, when None, the unit
    goes to the node the state finds best."""

    rule: str
    unit: frozenset[int]  # the guests that move, as one
    named: tuple[int, ...]  # the guests a plan names if it cannot repair it
    reason: MigrationReason
    detail: Callable[[str], str]  # the move's detail, given its target
    stuck: str | None = None
    cannot_move: str = "it cannot move"  # when a member of `unit` may not move (fixed, already moved)
    no_room: str = "no node may take it with room to spare"
    nodes: tuple[str, ...] | None = None
    required: bool = True  # False: a plan may leave it unrepaired, and says nothing


@dataclass(frozen=True)
class Breach:
    """A rule a placement breaks."""

    rule: str
    vmids: frozenset[int]  # the guests that break it
    reason: MigrationReason
    detail: str  # why a move repairs it (the detail of an exact plan's move)
    violation: str  # the same, said of a finished plan
    required: bool = True  # False: a plan may leave it so (a stopped guest on a drained node)


class ExactModel(Protocol):
    """What a family sees of the exact model (pvebalance/engine/exact.py): x[g, n] = 1 when g ends on n."""

    nodes: list[str]

    def var(self, vmid: int, node: str) -> int | None:
        """The column of x[vmid, node]; None when the guest is not the model's to move."""

    def forbid(self, vmid: int, node: str) -> None:
        """x[vmid, node] = 0."""

    def row(self, entries: list[tuple[int, float]], low: float, high: float) -> None:
        """low <= sum(value * x[column]) <= high."""

    def stays_on(self, vmid: int) -> str | None:
        """Where a guest the model does not move stays (None for one it may move)."""

    def trade_parks(self, first: int, second: int) -> None:
        """One more migration counted where the two end each on the node the other began on: kept
        apart, neither can go first without joining the other, so one is parked on a third node."""


class Family(ABC):
    """One family of rules. Stateless: what it reads from a snapshot lives in the rule book."""

    name: ClassVar[str]

    @abstractmethod
    def read(self, snapshot: ClusterSnapshot, policy: Policy, book: Constraints) -> bool:
        """Add this family's groups for the snapshot to the book; whether it found any."""

    def allows(self, state: PlanState, vmids: frozenset[int], target: str) -> bool:
        """Whether the rules of this family hold with these guests on the target."""
        return True

    def refusal(self, state: PlanState, vmids: frozenset[int], target: str) -> str | None:
        """Why the rules of this family forbid these guests on the target, in words (None: they allow
        it). Says what `allows` decides; a family with rules of its own words overrides it."""
        return None if self.allows(state, vmids, target) else f"the {self.name} rules forbid it"

    @abstractmethod
    def fixes(self, state: PlanState) -> Iterator[Fix]:
        """What is broken, one fix at a time: each is made from the state as the previous left it."""

    @abstractmethod
    def exact(self, book: Constraints, model: ExactModel) -> None:
        """Add this family's constraints to the exact model."""

    @abstractmethod
    def check(self, book: Constraints, where: Mapping[int, str], guests: Mapping[int, GuestState]) -> Iterator[Breach]:
        """The rules of this family the placement `where` breaks."""
