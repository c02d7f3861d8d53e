"""What rules of one kind do, whatever family reads them: node sets, together-groups, apart-groups.

A family module picks its kind and says only where its rules come from (`restrictions` or
`groups`); allowing, repairing, the exact model's rows and the check are the kind's, here.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import pairwise
from typing import TYPE_CHECKING, ClassVar

from pvebalance.shared.models import ClusterSnapshot, GuestState, MigrationReason

from ..policy import Policy
from .family import Breach, ExactModel, Family, Fix, Group, Restriction

if TYPE_CHECKING:
    from ..state import PlanState
    from .book import Constraints


def said(text: str) -> Callable[[str], str]:
    """A move's detail that does not depend on its target."""
    return lambda _target: text


def _joins(name: str) -> Callable[[str], str]:
    return lambda target: f"{name}: joins the group on {target}"


class NodeRule(Family):
    """A guest may run only on some nodes (several rules of the family: on the nodes they share)."""

    reason: ClassVar[MigrationReason]

    @abstractmethod
    def restrictions(self, snapshot: ClusterSnapshot, policy: Policy) -> Iterator[tuple[int, Iterable[str], str]]:
        """(vmid, the nodes it may run on, the rule's name) for every rule of the family."""

    def read(self, snapshot: ClusterSnapshot, policy: Policy, book: Constraints) -> bool:
        nodes = {n.name for n in snapshot.nodes}
        known = {g.vmid for g in snapshot.guests}
        table: dict[int, Restriction] = {}
        for vmid, allowed, rule in self.restrictions(snapshot, policy):
            if vmid not in known:
                continue
            here = frozenset(allowed) & nodes
            if (current := table.get(vmid)) is not None:  # two rules of the family: both hold
                here, rule = current.nodes & here, current.rule
            table[vmid] = Restriction(here, rule)
        book.restrictions[self.name] = table
        return bool(table)

    def allows(self, state: PlanState, vmids: frozenset[int], target: str) -> bool:
        table = state.c.restrictions[self.name]
        return all(target in r.nodes for v in vmids if (r := table.get(v)) is not None)

    def refusal(self, state: PlanState, vmids: frozenset[int], target: str) -> str | None:
        table = state.c.restrictions[self.name]
        for v in sorted(vmids):
            if (r := table.get(v)) is not None and target not in r.nodes:
                return self.refused(state, v, target, r)
        return None

    def refused(self, state: PlanState, vmid: int, target: str, r: Restriction) -> str:
        """Why the guest may not go to the target, which its restriction leaves out."""
        return f"guest {vmid} may run only on {','.join(sorted(r.nodes)) or 'no node in the cluster'} ({r.rule})"

    def fixes(self, state: PlanState) -> Iterator[Fix]:
        table = state.c.restrictions[self.name]
        for vmid in sorted(table):
            r = table[vmid]
            if state.where[vmid] in r.nodes or vmid in state.moved:
                continue
            allowed = ",".join(sorted(r.nodes)) or "no node in the cluster"
            yield Fix(rule=r.rule, unit=state.c.unit(vmid), named=(vmid,), reason=self.reason,
                      detail=said(f"{r.rule}: may run only on {allowed}"),
                      cannot_move=f"must run on {allowed} but cannot move: {state.c.fixed.get(vmid, 'group')}",
                      no_room=f"must run on {allowed}: none may take it now")

    def exact(self, book: Constraints, model: ExactModel) -> None:
        for vmid, r in sorted(book.restrictions[self.name].items()):
            for node in model.nodes:
                if node not in r.nodes and model.var(vmid, node) is not None:
                    model.forbid(vmid, node)

    def check(self, book: Constraints, where: Mapping[int, str], guests: Mapping[int, GuestState]) -> Iterator[Breach]:
        for vmid, r in sorted(book.restrictions[self.name].items()):
            if where[vmid] not in r.nodes:
                yield Breach(r.rule, frozenset({vmid}), self.reason,
                             f"{r.rule}: may run only on {','.join(sorted(r.nodes))}",
                             f"guest {vmid} ends on {where[vmid]}, outside {sorted(r.nodes)} ({r.rule})")


class _GroupRule(Family):
    """Rules that bind guests to each other (together or apart)."""

    reason: ClassVar[MigrationReason]

    @abstractmethod
    def groups(self, snapshot: ClusterSnapshot, policy: Policy) -> Iterator[tuple[str, Iterable[int]]]:
        """(group name, its guests) for every rule of the family; rules of one name add up."""

    def _read_groups(self, snapshot: ClusterSnapshot, policy: Policy) -> list[Group]:
        known = {g.vmid for g in snapshot.guests}
        members: dict[str, set[int]] = defaultdict(set)
        for name, vmids in self.groups(snapshot, policy):
            members[name] |= set(vmids) & known
        return [Group(name, frozenset(v), self.reason) for name, v in sorted(members.items()) if len(v) > 1]


class TogetherRule(_GroupRule):
    """A group's guests end on one node. Moves take whole units (the book's: a group with every
    group it shares a guest with, of any family), so `allows` has nothing to refuse: the rule is on
    where the guests end, which `check` looks at. Each family gathers its own groups."""

    def read(self, snapshot: ClusterSnapshot, policy: Policy, book: Constraints) -> bool:
        book.together[self.name] = self._read_groups(snapshot, policy)
        return bool(book.together[self.name])

    def fixes(self, state: PlanState) -> Iterator[Fix]:
        for group in state.c.together[self.name]:
            unit = state.c.unit(min(group.vmids))  # the group, with every group it shares a guest with
            if len({state.where[v] for v in unit}) == 1:
                continue
            named = tuple(sorted(unit))
            anchors = {state.where[v] for v in unit if v in state.c.fixed or v in state.moved}
            if len(anchors) > 1:
                yield Fix(rule=group.name, unit=unit, named=named, reason=group.reason, detail=said(""),
                          stuck=f"members that cannot move sit on {', '.join(sorted(anchors))}")
                continue
            # where members that cannot move sit, or else where most of the group's memory already is
            share: dict[str, int] = defaultdict(int)
            for v in sorted(unit):
                share[state.where[v]] += state.guests[v].mem + 1
            nodes = sorted(anchors) if anchors else sorted(share, key=lambda n: (-share[n], n))
            if not anchors:
                nodes += [t for t in state.targets if t not in nodes]
            yield Fix(rule=group.name, unit=unit, named=named, reason=group.reason, nodes=tuple(nodes),
                      detail=_joins(group.name),
                      no_room="no node may hold the whole group with room to spare")

    def exact(self, book: Constraints, model: ExactModel) -> None:
        for group in book.together[self.name]:
            for a, b in pairwise(sorted(group.vmids)):
                for node in model.nodes:
                    ea, eb = model.var(a, node), model.var(b, node)
                    if ea is None and eb is None:
                        continue
                    model.row(([(ea, 1.0)] if ea is not None else []) + ([(eb, -1.0)] if eb is not None else []),
                              0.0, 0.0)

    def check(self, book: Constraints, where: Mapping[int, str], guests: Mapping[int, GuestState]) -> Iterator[Breach]:
        for group in book.together[self.name]:
            spots = {where[v] for v in group.vmids}
            if len(spots) > 1:
                yield Breach(group.name, group.vmids, group.reason, f"{group.name}: joins its group",
                             f"{group.name}: members end on {sorted(spots)}")


class ApartRule(_GroupRule):
    """A group's guests end on different nodes."""

    def read(self, snapshot: ClusterSnapshot, policy: Policy, book: Constraints) -> bool:
        groups = self._read_groups(snapshot, policy)
        book.apart[self.name] = groups
        index: dict[int, list[Group]] = {}
        for group in groups:
            for vmid in group.vmids:
                index.setdefault(vmid, []).append(group)
        book.apart_of[self.name] = index
        return bool(groups)

    def allows(self, state: PlanState, vmids: frozenset[int], target: str) -> bool:
        index = state.c.apart_of[self.name]
        for v in vmids:
            for group in index.get(v, ()):
                if any(state.where[m] == target for m in group.vmids if m not in vmids):
                    return False
        return True

    def refusal(self, state: PlanState, vmids: frozenset[int], target: str) -> str | None:
        index = state.c.apart_of[self.name]
        for v in sorted(vmids):
            for group in index.get(v, ()):
                there = sorted(m for m in group.vmids if m not in vmids and state.where[m] == target)
                if there:
                    return f"{group.name}: guest {v} must not share {target} with {there[0]}"
        return None

    def fixes(self, state: PlanState) -> Iterator[Fix]:
        for group in state.c.apart[self.name]:
            by_node: dict[str, list[int]] = defaultdict(list)
            for v in sorted(group.vmids):
                by_node[state.where[v]].append(v)
            for node, members in sorted(by_node.items()):
                # keep the member that cannot move (or the largest); move the others away
                members.sort(key=lambda v: (v not in state.c.fixed, -state.guests[v].mem, v))
                for v in members[1:]:
                    why = state.c.fixed.get(v) or f"{len(group.vmids)} members but no other node may take it"
                    yield Fix(rule=group.name, unit=state.c.unit(v), named=(members[0], v), reason=group.reason,
                              detail=said(f"{group.name}: must not share {node} with {members[0]}"),
                              cannot_move=f"share {node}: {why}", no_room=f"share {node}: {why}")

    def exact(self, book: Constraints, model: ExactModel) -> None:
        for group in book.apart[self.name]:
            for node in model.nodes:
                staying = sum(1 for v in group.vmids if model.stays_on(v) == node)
                entries = [(col, 1.0) for v in sorted(group.vmids) if (col := model.var(v, node)) is not None]
                if entries:
                    model.row(entries, -float("inf"), max(1.0 - staying, 0.0))
            members = sorted(group.vmids)
            for i, first in enumerate(members):  # two of them trading nodes cost a parking move
                for second in members[i + 1:]:
                    model.trade_parks(first, second)

    def check(self, book: Constraints, where: Mapping[int, str], guests: Mapping[int, GuestState]) -> Iterator[Breach]:
        for group in book.apart[self.name]:
            by_node: dict[str, list[int]] = defaultdict(list)
            for v in sorted(group.vmids):
                by_node[where[v]].append(v)
            for node, members in sorted(by_node.items()):
                if len(members) > 1:
                    yield Breach(group.name, frozenset(members), group.reason, f"{group.name}: must not share {node}",
                                 f"{group.name}: {' and '.join(map(str, members))} end on {node}")
