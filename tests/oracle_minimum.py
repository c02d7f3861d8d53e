"""An independent checker of the fewest migrations that bring memory and CPU each within a band at
once (issue 19): a small MILP of its own, solved with HiGHS, reading the raw API answers of a
recorded cluster (`pve-api-dump/1`'s `api` mapping) itself, never pvebalance's parsers
(shared/apidump.py), its load model (engine/load.py) or its exact model (engine/exact.py).

The model, for the nodes a plan may use (online, not in HA maintenance):
- x[g, n] = 1 when guest g ends on node n, one node per guest; a guest that cannot move is a
  constant on its node: stopped (the engine moves a stopped guest only off a node in maintenance),
  a template, locked, tagged `plb_ignore*`, or a running VM with a local device (hostpciN, usbN but
  SPICE, serialN but a socket, parallelN, ivshmem, virtiofsN);
- memory-used % and CPU-used % of each node as tests/oracle_balance.py defines them (the host's own
  use, at least 0, plus the running guests on it), each within [lo_d, lo_d + band] with lo_d free;
- no node above `max_memory` % of its memory (the engine's default max_node_usage, 95);
- where a guest may go: its `plb_pin_NODE` tags (any case); its PVE 9.2 HA node-affinity rule
  (a negative rule becomes the other nodes at priority 0, a non-strict rule adds the unnamed nodes
  at -1; with failback on, only the highest-priority group of the usable nodes, with failback off
  also the node it runs on if the rule allows it; rules PVE rejects are dropped: a resource in two
  rules, a negative rule naming every node or giving priorities); a VM's vCPUs (sockets x cores,
  or `vcpus`) no more than the node's cores, but for the node it runs on; each local disk on the
  target's storage of the same id (active, not shared), which may fill to `max_storage` % counting
  every disk that arrives (none is credited back to the storage it leaves);
- HA resource-affinity rules and `plb_affinity_*` / `plb_anti_affinity_*` tags (and pools the
  caller says are kept together or apart): positive groups on one node, negative ones each on its own;
- minimise the guests that end off the node they are on, plus one for each pair of guests kept
  apart that trade nodes: neither can go first without joining the other, so one of them moves
  twice, through a third node (left out with `park_swaps=False`: the end state alone, as the issue's
  table of minima counts).

Beyond those trades it judges a plan's end state only: the order of the moves (each step within
the limits) is the plan's business, so the minimum here is a lower bound on any plan's migrations.
Solved to a proven optimum (the objective counts migrations, so a gap below 1 proves it), bounded by
branch-and-bound nodes, never by a clock.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from highspy import HighsModelStatus, HighsVarType, _core

from tests.oracle_storage import local_disks

_DEVICE = re.compile(r"^(hostpci\d+|usb\d+|serial\d+|parallel\d+|ivshmem|virtiofs\d+)$")
_BUSY_HA = {"migrate", "relocate", "fence", "recovery", "error", "freeze", "request_stop"}


@dataclass(frozen=True)
class Minimum:
    status: str  # "optimal", "infeasible", "node limit", or HiGHS's words for another end
    migrations: int | None  # the proven minimum (status "optimal")
    bound: int | None  # what no plan goes below (the solver's dual bound, rounded up)
    placement: dict[int, str] | None  # vmid -> node of an optimal end state
    parked: int = 0  # of the migrations, those that park a guest of a pair kept apart trading nodes


def _tags(entry: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    raw = entry.get("tags") if entry.get("tags") is not None else config.get("tags")
    return [t for t in re.split(r"[;, ]+", str(raw or "")) if t]


def _has_device(config: Mapping[str, Any]) -> bool:
    for key, value in config.items():
        if not _DEVICE.match(key):
            continue
        if (key.startswith("usb") and "spice" in str(value)) or (key.startswith("serial") and value == "socket"):
            continue
        return True
    return False


def _vcpus(entry: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    if not any(k in config for k in ("cores", "sockets", "vcpus")):
        return int(entry.get("maxcpu", 1))
    return max(int(config.get("cores", 1)) * int(config.get("sockets", 1)), int(config.get("vcpus", 0)))


def _sid_vmid(sid: str) -> int | None:
    kind, _, num = sid.partition(":")
    return int(num) if kind in ("vm", "ct") and num.isdigit() else None


def _ha_nodes(api: Mapping[str, Any], cluster: list[str], usable: list[str],
              where: Mapping[int, str]) -> dict[int, set[str]]:
    """vmid -> the nodes its HA node-affinity rule lets it end on."""
    rules = [r for r in api.get("/cluster/ha/rules") or [] if r.get("type") == "node-affinity" and not r.get("disable")]
    uses: dict[str, int] = defaultdict(int)
    for r in rules:
        for sid in set(filter(None, str(r.get("resources", "")).split(","))):
            uses[sid] += 1
    failback_off = {_sid_vmid(str(e["sid"])) for e in api.get("/cluster/ha/resources") or []
                    if str(e.get("failback", 1)) == "0"}
    ignored = {_sid_vmid(str(e["sid"])) for e in api.get("/cluster/ha/resources") or [] if e.get("state") == "ignored"}
    out: dict[int, set[str]] = {}
    for r in rules:
        sids = [s for s in str(r.get("resources", "")).split(",") if s]
        named = {}
        for item in filter(None, str(r.get("nodes", "")).split(",")):
            name, _, prio = item.partition(":")
            named[name] = int(prio) if prio else 0
        negative = r.get("affinity") == "negative"
        if any(uses[s] > 1 for s in sids) or (negative and (len(named) >= len(cluster) or any(named.values()))):
            continue  # PVE drops the rule
        priority = {n: 0 for n in cluster if n not in named} if negative else dict(named)
        if not int(r.get("strict", 0)):
            priority.update({n: -1 for n in cluster if n not in priority})
        ranked = {n: p for n, p in priority.items() if n in usable}
        top = {n for n, p in ranked.items() if p == max(ranked.values())} if ranked else set()
        for sid in sids:
            vmid = _sid_vmid(sid)
            if vmid is None or vmid in ignored or vmid not in where:
                continue
            stays = vmid in failback_off and where[vmid] in ranked
            out[vmid] = top | ({where[vmid]} if stays else set())
    return out


def _groups(api: Mapping[str, Any], tags: Mapping[int, list[str]],
            pools: Mapping[str, str]) -> tuple[list[list[int]], list[list[int]]]:
    """Groups kept on one node, and groups kept each on its own node."""
    together: dict[str, set[int]] = defaultdict(set)
    apart: dict[str, set[int]] = defaultdict(set)
    for vmid, names in tags.items():
        for t in names:
            if t.startswith("plb_affinity_"):
                together[t].add(vmid)
            elif t.startswith("plb_anti_affinity_"):
                apart[t].add(vmid)
    for r in api.get("/cluster/ha/rules") or []:
        if r.get("type") == "resource-affinity" and not r.get("disable"):
            vmids = {v for v in map(_sid_vmid, str(r.get("resources", "")).split(",")) if v is not None and v in tags}
            (together if r.get("affinity") == "positive" else apart)[f"ha:{r['rule']}"] |= vmids
    for pool, kind in pools.items():
        detail = api.get(f"/pools/{pool}") or {}
        vmids = {int(m["vmid"]) for m in detail.get("members", []) if m.get("type") in ("qemu", "lxc")}
        vmids |= {int(e["vmid"]) for e in api["/cluster/resources"] if e.get("pool") == pool}
        (together if kind == "affinity" else apart)[f"pool:{pool}"] |= vmids & set(tags)
    return ([sorted(v) for _, v in sorted(together.items()) if len(v) > 1],
            [sorted(v) for _, v in sorted(apart.items()) if len(v) > 1])


def minimum_migrations(api: Mapping[str, Any], *, band: float = 5.0, max_memory: float = 95.0,
                       max_storage: float = 90.0, pools: Mapping[str, str] | None = None,
                       node_limit: int | None = None, park_swaps: bool = True) -> Minimum:
    """The fewest migrations that bring memory and CPU each within `band` pp: the guests that end
    elsewhere, and (`park_swaps`) one parking move for each pair kept apart that trades nodes.

    `pools`: pool -> "affinity" or "anti-affinity", the rules an operator set for pools."""
    resources = api["/cluster/resources"]
    node_entries = {e["node"]: e for e in resources if e.get("type") == "node"}
    guests = {int(e["vmid"]): e for e in resources if e.get("type") in ("qemu", "lxc")}
    configs = {v: api.get(f"/nodes/{e['node']}/{e['type']}/{v}/config") or {} for v, e in guests.items()}
    cluster = sorted(node_entries)
    usable = [n for n in cluster if node_entries[n].get("status") == "online"
              and node_entries[n].get("hastate") != "maintenance"]
    where = {v: str(e["node"]) for v, e in guests.items()}
    running = {v for v, e in guests.items() if e.get("status") == "running"}
    tags = {v: _tags(guests[v], configs[v]) for v in guests}

    def use(v: int) -> tuple[float, float]:  # memory bytes, CPU cores
        e = guests[v]
        return (float(e.get("mem", 0)), float(e.get("cpu", 0)) * float(e.get("maxcpu", 0))) if v in running else (0, 0)

    def fixed(v: int) -> bool:
        e, config = guests[v], configs[v]
        return (v not in running and where[v] in usable) or bool(e.get("template")) or bool(e.get("lock")) \
            or bool(config.get("lock")) or any(t.startswith("plb_ignore") for t in tags[v]) \
            or e.get("hastate") in _BUSY_HA or (v in running and e["type"] == "qemu" and _has_device(config))

    # the host's own use: what the node reports beyond its running guests, at least 0
    host = {n: [float(node_entries[n].get("mem", 0)),
                float(node_entries[n].get("cpu", 0)) * float(node_entries[n].get("maxcpu", 0))] for n in cluster}
    for v in running:
        if where[v] in host:
            host[where[v]][0] -= use(v)[0]
            host[where[v]][1] -= use(v)[1]
    cap = {n: (float(node_entries[n]["maxmem"]), float(node_entries[n]["maxcpu"])) for n in usable}
    base = {n: [max(host[n][0], 0.0), max(host[n][1], 0.0)] for n in usable}
    movable = sorted(v for v in guests if not fixed(v))
    for v in set(guests) - set(movable):
        if where[v] in base:
            base[where[v]][0] += use(v)[0]
            base[where[v]][1] += use(v)[1]

    disks = local_disks(api)
    storages = {(e["node"], e["storage"]): e for e in resources if e.get("type") == "storage"
                and not e.get("shared") and e.get("status", "available") == "available"}
    ha = _ha_nodes(api, cluster, usable, where)
    allowed: dict[int, list[str]] = {}
    for v in movable:
        nodes = set(usable)
        pins = {t[len("plb_pin_"):] for t in tags[v] if t.startswith("plb_pin_")}
        if pins:
            nodes &= {n for n in cluster if n.casefold() in pins}
        if v in ha:
            nodes &= ha[v]
        if guests[v]["type"] == "qemu":
            vcpus = _vcpus(guests[v], configs[v])
            nodes = {n for n in nodes if cap[n][1] >= vcpus or n == where[v]}
        nodes = {n for n in nodes if n == where[v] or all((n, s) in storages for s in disks.get(v, {}))}
        allowed[v] = sorted(nodes)

    # columns: x[v, n] for each movable guest and allowed node, then lo_memory, lo_cpu
    column: dict[tuple[int, str], int] = {}
    for v in movable:
        for n in allowed[v]:
            column[v, n] = len(column)
    lo = [len(column), len(column) + 1]
    rows: list[tuple[dict[int, float], float, float]] = []  # (coefficients, low, high)
    for v in movable:
        rows.append(({column[v, n]: 1.0 for n in allowed[v]}, 1.0, 1.0))
    for n in usable:
        arriving = [(v, column[v, n]) for v in movable if (v, n) in column]
        for d in (0, 1):
            coef = {c: 100.0 * use(v)[d] / cap[n][d] for v, c in arriving if use(v)[d]}
            coef[lo[d]] = -1.0
            level = 100.0 * base[n][d] / cap[n][d]
            rows.append((coef, -level, band - level))
        rows.append(({c: use(v)[0] for v, c in arriving if use(v)[0]}, -np.inf,
                     max_memory / 100.0 * cap[n][0] - base[n][0]))
        for storage in sorted({s for v, _ in arriving for s in disks.get(v, {})}):
            if (n, storage) not in storages:
                continue
            entry = storages[n, storage]
            room = max_storage / 100.0 * float(entry["maxdisk"]) - float(entry.get("disk", 0))
            coef = {c: float(disks[v][storage]) for v, c in arriving if where[v] != n and storage in disks.get(v, {})}
            if coef:
                rows.append((coef, -np.inf, room))
    together, apart = _groups(api, tags, pools or {})
    for group in together:
        free = [v for v in group if v in allowed]
        pinned = {where[v] for v in group if v not in allowed}
        for n in usable:
            must = 1.0 if n in pinned else 0.0 if pinned else None
            for v in free:
                coef = {column[v, n]: 1.0} if (v, n) in column else {}
                if must is not None:
                    rows.append((coef, must, must))
                elif v != free[0]:
                    head = {column[free[0], n]: -1.0} if (free[0], n) in column else {}
                    rows.append(({**coef, **head}, 0.0, 0.0))
    for group in apart:
        for n in usable:
            staying = sum(1 for v in group if v not in allowed and where[v] == n)
            coef = {column[v, n]: 1.0 for v in group if (v, n) in column}
            if coef:
                rows.append((coef, -np.inf, 1.0 - staying))
    swaps = 0
    if park_swaps:
        # Two guests kept apart that trade nodes cannot do it in two migrations: whichever goes first
        # joins the other. One of them moves twice (parked on a third node): s >= both trades - 1,
        # one more migration. Counted only for guests in one group kept apart, so that no parking is
        # counted twice (a guest parked once may unblock trades in two groups).
        once = [v for group in apart for v in group]
        for group in apart:
            for g, h in ((g, h) for i, g in enumerate(group) for h in group[i + 1:]):
                there, back = column.get((g, where[h])), column.get((h, where[g]))
                if where[g] != where[h] and once.count(g) == once.count(h) == 1 and there is not None \
                        and back is not None:
                    rows.append(({there: 1.0, back: 1.0, len(column) + 2 + swaps: -1.0}, -np.inf, 1.0))
                    swaps += 1
    return _solve(column, lo, swaps, rows, where, movable, node_limit)


def _solve(column: dict[tuple[int, str], int], lo: list[int], swaps: int,
           rows: list[tuple[dict[int, float], float, float]], where: Mapping[int, str], movable: list[int],
           node_limit: int | None) -> Minimum:
    count = len(column) + 2 + swaps
    cost = np.zeros(count)
    cost[len(column) + 2:] = 1.0  # a parking migration each
    for (v, n), c in column.items():
        if n == where[v]:
            cost[c] = -1.0  # staying saves the migration counted in the offset
    solver = _core._Highs()  # highspy.Highs would print HiGHS's banner on stdout before any option silences it
    for name, option in {"output_flag": False, "threads": 1, "random_seed": 0, "mip_rel_gap": 0.0,
                         "mip_abs_gap": 0.999}.items():
        solver.setOptionValue(name, option)
    if node_limit is not None:
        solver.setOptionValue("mip_max_nodes", node_limit)
    upper = np.ones(count)
    lower = np.zeros(count)
    lower[lo], upper[lo] = -1e4, 1e4
    solver.addVars(count, lower, upper)
    solver.changeColsCost(count, np.arange(count, dtype=np.int32), cost)
    solver.changeObjectiveOffset(float(len(movable)))
    solver.changeColsIntegrality(len(column), np.arange(len(column), dtype=np.int32),
                                 np.array([HighsVarType.kInteger] * len(column)))
    starts, index, value = [0], list[int](), list[float]()
    for coef, _, _ in rows:
        for c, a in sorted(coef.items()):
            index.append(c)
            value.append(a)
        starts.append(len(index))
    solver.addRows(len(rows), np.array([r[1] for r in rows]), np.array([r[2] for r in rows]), len(index),
                   np.array(starts[:-1], dtype=np.int32), np.array(index, dtype=np.int32), np.array(value))
    solver.run()
    status = solver.getModelStatus()
    words = {HighsModelStatus.kOptimal: "optimal", HighsModelStatus.kInfeasible: "infeasible",
             HighsModelStatus.kSolutionLimit: "node limit"}
    said = words.get(status, solver.modelStatusToString(status))
    info = solver.getInfo()
    bound = int(np.ceil(info.mip_dual_bound - 1e-6)) if np.isfinite(info.mip_dual_bound) else None
    if said != "optimal":
        return Minimum(said, None, bound, None)
    x = np.array(solver.getSolution().col_value)
    placement = dict(where)
    for (v, n), c in column.items():
        if x[c] > 0.5:
            placement[v] = n
    moved = sum(1 for v in movable if placement[v] != where[v])
    parked = round(float(x[len(column) + 2:].sum()))
    return Minimum(said, moved + parked, bound, placement, parked)
