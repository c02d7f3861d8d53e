"""Anti-affinity: `plb_anti_affinity_NAME` tags and anti-affinity pools; each group ends on different
nodes (as far as there are nodes: a pair that must share one is reported in the plan's `unmet`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pvebalance.shared.models import ClusterSnapshot, MigrationReason

from ..policy import Policy
from .kinds import ApartRule

ANTI_AFFINITY_PREFIX = "plb_anti_affinity_"


class AntiAffinity(ApartRule):
    name = "anti-affinity"
    reason = MigrationReason.ANTI_AFFINITY

    def groups(self, snapshot: ClusterSnapshot, policy: Policy) -> Iterator[tuple[str, Iterable[int]]]:
        for g in snapshot.guests:
            for t in g.tags:
                if t.startswith(ANTI_AFFINITY_PREFIX):
                    yield f"tag:{t}", (g.vmid,)
        for pool, rule in sorted(policy.pools.items()):
            if rule.type == "anti-affinity":
                yield f"pool:{pool}", snapshot.pools.get(pool, [])
