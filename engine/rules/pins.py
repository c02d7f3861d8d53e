"""Pins: `plb_pin_NODE` tags (several: any of those nodes) and pools pinned in the config."""

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
        for g in snapshot.guests:
            pins = {t[len(PIN_PREFIX):] for t in g.tags if t.startswith(PIN_PREFIX)}
            if pins:
                yield g.vmid, pins, "plb_pin tags"
        for pool, rule in sorted(policy.pools.items()):  # the config's key order must not name the rule
            for vmid in sorted(snapshot.pools.get(pool, [])) if rule.pin else ():
                yield vmid, rule.pin, f"pool {pool} pin"
