"""Where should a new guest go: the best node under the same rules, reservations and limits as a plan.

The guest is added to the snapshot as it would run (its full memory in use: a new guest's real use
is not known yet, and the full size is the safe figure), every registered rule family reads the
snapshot with it, and each node is asked the questions a plan asks of a move: is it a target at all
(online, usable, not drained, not ignored), does the guest fit (`fit.fits`, the one answer), does it
have the local storage, and does every rule hold with the guest there. Nodes that pass are ranked by
their load after the guest arrives, in the policy's method; the others say why not.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from pvebalance.shared.models import ClusterSnapshot, GuestState, GuestType

from . import fit
from .load import guest_load, initial_loads
from .policy import Policy
from .rules import build_constraints

GIB = fit.GIB


class PlacementRequest(BaseModel):
    """A guest that does not exist yet."""

    model_config = ConfigDict(extra="forbid")
    memory: int = Field(gt=0, description="bytes of memory")
    cores: int = Field(1, ge=1, description="vCPUs")
    disk: int = Field(0, ge=0, description="bytes of disk")
    local: bool = Field(False, description="the disk is on the node's local storage")
    storage: str | None = Field(None, description="that local storage's id (default: any of the node's)")
    type: GuestType = GuestType.QEMU
    tags: list[str] = Field(default_factory=list, description="plb_* tags it will carry")
    pool: str | None = None


class NodeChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node: str
    percent_after: float = Field(description="the node's load once the guest runs: in the balanced dimension, "
                                 "or the highest of the balanced dimensions' (percent)")
    memory_percent_after: float


class PlacementAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: str
    best: str | None
    ranked: list[NodeChoice] = Field(description="every node that may take the guest, best first")
    refused: dict[str, str] = Field(description="node -> why it may not take the guest")
    reason: str = Field("", description="when no node may take it: why, in one line")


def place(snapshot: ClusterSnapshot, policy: Policy, request: PlacementRequest) -> PlacementAnswer:
    vmid = max((g.vmid for g in snapshot.guests), default=99) + 1_000_000  # no real guest has it
    usable = [n for n in snapshot.nodes if n.online and n.usable]
    new = GuestState(vmid=vmid, name="(new guest)", type=request.type, node=usable[0].name if usable else "",
                     tags=list(request.tags), pool=request.pool, maxcpu=request.cores, cpu=1.0,
                     mem=request.memory, maxmem=request.memory, maxdisk=request.disk,
                     local_disk=request.disk if request.local else 0)
    pools = dict(snapshot.pools)
    if request.pool:
        pools[request.pool] = [*pools.get(request.pool, []), vmid]
    with_new = snapshot.model_copy(update={"guests": [*snapshot.guests, new], "pools": pools})
    book = build_constraints(with_new, policy)
    loads = initial_loads(snapshot, policy)  # without the new guest: what each node holds now
    figures = fit.snapshot_figures(snapshot)
    arriving = fit.GuestFigures(request.memory, request.cores, True)
    load = guest_load(new, policy, smoothed=False)
    where = {g.vmid: g.node for g in with_new.guests}
    guests = {g.vmid: g for g in with_new.guests}

    ranked: list[NodeChoice] = []
    refused: dict[str, str] = {}
    for node in sorted(snapshot.nodes, key=lambda n: n.name):
        why = _not_a_target(node.name, snapshot, policy, book.draining)
        if why is None:
            why = fit.fits(arriving, figures[node.name], policy)
        if why is None and request.local and request.disk:
            why = _local_room(request, figures[node.name], policy)
        if why is None:
            where[vmid] = node.name
            breaches = [b for family in book.families for b in family.check(book, where, guests)
                        if vmid in b.vmids and b.required]
            if breaches:
                text = breaches[0].violation.replace(f"guest {vmid}", "the new guest")
                why = text.replace(str(vmid), "the new guest")
        if why is not None:
            refused[node.name] = why
            continue
        n = loads[node.name]
        mem_after = figures[node.name].used_mem + request.memory
        # the balanced dimensions' worst: the highest share any of them reaches on the node
        after = max(100 * (n.load[i] + load[i]) / n.capacity[i] if n.capacity[i] else 100.0 for i in range(len(load)))
        ranked.append(NodeChoice(
            node=node.name, percent_after=round(after, 2),
            memory_percent_after=round(100 * mem_after / max(fit.usable_memory(figures[node.name], policy), 1), 2)))
    ranked.sort(key=lambda c: (c.percent_after, c.node))
    answer = PlacementAnswer(method=policy.method, best=ranked[0].node if ranked else None, ranked=ranked,
                             refused=refused)
    if not ranked:
        answer.reason = f"no node may take a guest of {request.memory / GIB:g} GiB and {request.cores} vCPUs: " + \
            "; ".join(f"{k}: {v}" for k, v in sorted(refused.items()))
    return answer


def _not_a_target(name: str, snapshot: ClusterSnapshot, policy: Policy, draining: frozenset[str]) -> str | None:
    node = next(n for n in snapshot.nodes if n.name == name)
    if not node.online:
        return f"{name} is offline"
    if not node.usable:
        return f"{name}'s figures cannot be planned on: {node.problem}"
    if name in policy.ignore_nodes:
        return f"{name} is in proxmox_cluster.ignore_nodes"
    if name in draining:
        return f"{name} is drained (maintenance)"
    return None


def _local_room(request: PlacementRequest, node: fit.NodeFigures, policy: Policy) -> str | None:
    """Why none of the node's local storages (or the one asked for) can take the new guest's disk,
    under `max_storage_usage` and the disk reserve: the same check as a migration's disks."""
    storages = node.storages or {}
    candidates = [request.storage] if request.storage else sorted(storages)
    why = f"{node.name} has no local storage for guest disks"
    for storage in candidates:
        disk = fit.GuestFigures(0, 0, False, ((storage, request.disk),))
        if (why_here := fit.storage_refusal(disk, node, policy)) is None:
            return None
        why = why_here
    return why
