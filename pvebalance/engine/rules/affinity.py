"""Affinity: `plb_affinity_NAME` tags and affinity pools; each group ends on one node."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pvebalance.shared.models import ClusterSnapshot, MigrationReason

from ..policy import Policy
from .kinds import TogetherRule

AFFINITY_PREFIX = "plb_affinity_"


class Affinity(TogetherRule):
    name = "affinity"
    reason = MigrationReason.AFFINITY

    def groups(self, snapshot: ClusterSnapshot, policy: Policy) -> Iterator[tuple[str, Iterable[int]]]:
        for g in snapshot.guests:
            for t in g.tags:
                if t.startswith(AFFINITY_PREFIX):
                    yield f"tag:{t}", (g.vmid,)
        for pool, rule in sorted(policy.pools.items()):
            if rule.type == "affinity":
                yield f"pool:{pool}", snapshot.pools.get(pool, [])
