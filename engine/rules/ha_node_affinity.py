"""PVE 9 HA node-affinity rules: the HA resources of a rule run only on its nodes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pvebalance.shared.models import ClusterSnapshot, MigrationReason

from ..policy import Policy
from .kinds import NodeRule


def sid_vmid(sid: str) -> int | None:
    """The vmid of an HA resource id ("vm:100", "ct:101")."""
    kind, _, num = sid.partition(":")
    return int(num) if kind in ("vm", "ct") and num.isdigit() else None


class HaNodeAffinity(NodeRule):
    name = "ha-node-affinity"
    reason = MigrationReason.HA_RULE

    def restrictions(self, snapshot: ClusterSnapshot, policy: Policy) -> Iterator[tuple[int, Iterable[str], str]]:
        for r in snapshot.ha_rules:
            if r.disabled or r.type != "node-affinity":
                continue
            for vmid in (sid_vmid(s) for s in r.resources):
                if vmid is not None:
                    yield vmid, r.nodes, f"HA rule {r.rule}"
