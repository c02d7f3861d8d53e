"""Pins: `plb_pin_NODE` tags (several: any of those nodes) and pools pinned in the config.

Node names are compared case-insensitively: PVE lower-cases every tag, so `plb_pin_pve-a` must pin
to node `PVE-A` (ProxLB credativ#127)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pvebalance.shared.models import ClusterSnapshot, MigrationReason

from ..policy import Policy
from .kinds import NodeRule

PIN_PREFIX = "plb_pin_"


class Pins(NodeRule):
    name = "pins"
    reason = MigrationReason.PIN

    def restrictions(self, snapshot: ClusterSnapshot, policy: Policy) -> Iterator[tuple[int, Iterable[str], str]]:
        by_folded = {n.name.casefold(): n.name for n in snapshot.nodes}

        def nodes(names: Iterable[str]) -> set[str]:
            return {by_folded.get(name.casefold(), name) for name in names}

        for g in snapshot.guests:
            pins = {t[len(PIN_PREFIX):] for t in g.tags if t.casefold().startswith(PIN_PREFIX)}
            if pins:
                yield g.vmid, nodes(pins), "plb_pin tags"
        for pool, rule in sorted(policy.pools.items()):  # the config's key order must not name the rule
            for vmid in sorted(snapshot.pools.get(pool, [])) if rule.pin else ():
                yield vmid, nodes(rule.pin), f"pool {pool} pin"
