"""An independent judge of a plan's balance: each node's memory-used % and CPU-used % after the plan,
computed from the raw API answers of a recorded cluster (`pve-api-dump/1`'s `api` mapping).

It reads /cluster/resources itself, never pvebalance's parsers (shared/apidump.py) or the engine's
load model (pvebalance/engine/load.py), so a mistake there cannot hide itself:

- memory-used %: the host's own use (the node's `mem` less its running guests' `mem`, at least 0)
  plus the `mem` of the running guests on it after the plan, as a share of its `maxmem`;
- CPU-used %: the same in cores: the host's own (the node's `cpu`, a fraction of all its cores,
  times its `maxcpu`, less its running guests' use) plus each running guest's `cpu` times its own
  `maxcpu` (a guest's `cpu` is a fraction of its own vCPUs), as a share of its `maxcpu`.

The host's share is never below 0: PVE reports a node's `cpu` at most 1.0 while its guests' figures,
read a moment apart, may add up to more (a saturated node), and a node's figures lag its guests'.
Stopped guests use neither. The nodes judged are those a plan may balance: online, not in
maintenance (its `hastate`), and not among the `held_out` the caller names (ignored nodes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Move:
    vmid: int
    source: str
    target: str


def _use(guest: Mapping[str, Any], figure: str) -> float:
    """A running guest's memory in bytes ("mem") or CPU in cores ("cpu"); a stopped one uses none."""
    if guest.get("status") != "running":
        return 0.0
    if figure == "mem":
        return float(guest.get("mem", 0))
    return float(guest.get("cpu", 0)) * float(guest.get("maxcpu", 0))


def usage_after(api: Mapping[str, Any], moves: Iterable[Move], *,
                held_out: Iterable[str] = ()) -> dict[str, dict[str, float]]:
    """dimension ("memory", "cpu") -> node -> percent used after the moves, over the nodes judged."""
    resources = api["/cluster/resources"]
    nodes = {e["node"]: e for e in resources if e.get("type") == "node"}
    guests = {int(e["vmid"]): e for e in resources if e.get("type") in ("qemu", "lxc")}

    def totals(where: Mapping[int, str]) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {"mem": dict.fromkeys(nodes, 0.0), "cpu": dict.fromkeys(nodes, 0.0)}
        for vmid, g in guests.items():
            for figure in out:
                out[figure][where[vmid]] += _use(g, figure)
        return out

    before = {vmid: str(g["node"]) for vmid, g in guests.items()}
    after = dict(before)
    for m in moves:
        assert after[m.vmid] == m.source, f"guest {m.vmid} is not on {m.source}"
        after[m.vmid] = m.target
    was, now = totals(before), totals(after)
    used: dict[str, dict[str, float]] = {"memory": {}, "cpu": {}}
    for n, e in nodes.items():
        node_mem, node_cores = float(e.get("mem", 0)), float(e.get("cpu", 0)) * float(e.get("maxcpu", 0))
        used["memory"][n] = max(node_mem - was["mem"][n], 0.0) + now["mem"][n]
        used["cpu"][n] = max(node_cores - was["cpu"][n], 0.0) + now["cpu"][n]
    # a node's `hastate` is "maintenance" while HA's node-maintenance is on: it is being drained
    skip = {n for n, e in nodes.items() if e.get("hastate") == "maintenance"} | set(held_out)
    judged = sorted(n for n, e in nodes.items() if e.get("status") == "online" and n not in skip
                    and float(e.get("maxmem", 0)) > 0 and float(e.get("maxcpu", 0)) > 0)
    return {
        "memory": {n: 100.0 * used["memory"][n] / float(nodes[n]["maxmem"]) for n in judged},
        "cpu": {n: 100.0 * used["cpu"][n] / float(nodes[n]["maxcpu"]) for n in judged},
    }


def spreads_after(api: Mapping[str, Any], moves: Iterable[Move], *, held_out: Iterable[str] = ()) -> dict[str, float]:
    """dimension -> the spread (highest less lowest node percentage) after the moves, in pp."""
    usage = usage_after(api, moves, held_out=held_out)
    return {dim: (max(per.values()) - min(per.values())) if len(per) > 1 else 0.0 for dim, per in usage.items()}
