"""The faults of a disk-move run (storage-3, storage balancing on): the migration run's, aimed at disk
moves. API faults stand in front of move_disk/move_volume, the guest configs and the storages' views a
disk move's check and verification read; `disk_error` (the simulator's fault: the copy breaks off half
way, PVE frees the new volume) takes the place of a failed migration task; locks, hand moves and deletes
hit mostly guests whose disks the planner moves next (large disks on the fullest storage), but never a
guest while its disk moves (PVE's config flock for a VM, `lock: disk` for a CT keep a backup or a
migration off it; a delete by hand does not wait).

Between the two phases of the run, data that is no guest's (backups, ISO images) is written to a storage
(`fill`), as the drain starts the migration run's second phase: the planner then moves disks off it."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from pvebalance.simulator.cluster import Guest
from pvebalance.simulator.disks import moves_of
from pvebalance.simulator.server import Simulator

from .harness import STORAGE_GROUP, Harness
from .inject import EXTRA, KINDS, Injected, Injector

GIB = 2**30
DISK_KINDS = tuple("disk_error" if k == "task_error" else k for k in KINDS)
DISK_EXTRA = {("disk_error" if k == "task_error" else k): w for k, w in EXTRA.items()}
BIG_DISK = 256 * GIB  # storage-3's planner moves its largest disks first
# what a disk move's check and verification read, besides the task status
DISK_READS = r"^/nodes/[^/]+/((qemu|lxc)/\d+/config|storage|storage/[^/]+/content)$"
FILL_TO = 0.82  # a filled storage's use: a 400 GiB copy onto it that was checked just before stays below 90 %


def group_use(sim: Simulator) -> dict[str, tuple[int, int]]:
    """storage -> (bytes used, bytes total) of the balanced storages, from the simulator's own state."""
    c = sim.cluster
    with c.lock:
        return {s["storage"]: (int(s["disk"]), int(s["maxdisk"])) for s in c.storages
                if s["storage"] in STORAGE_GROUP and s["node"] == sorted(c.nodes)[0]}


def fullest_of(use: dict[str, tuple[int, int]]) -> str:
    """The storage of `group_use` with the highest share used."""
    return max(use, key=lambda s: use[s][0] / use[s][1])


class DiskInjector(Injector):
    kinds = DISK_KINDS
    extra = DISK_EXTRA
    post_path = "/move_(disk|volume)$"

    def __init__(self, h: Harness, rng: random.Random, t0: float, say: Callable[[str], None],
                 outage_seconds: float = 60.0) -> None:
        super().__init__(h, rng, t0, say, outage_seconds)
        self.fills: list[Injected] = []  # not faults: the second phase's cause, which explains some skips

    def work_in_flight(self) -> bool:
        """A disk being copied: a fault then meets a move in flight, not only the gaps between moves."""
        with self.sim.cluster.lock:
            return bool(moves_of(self.sim.tasks).running)

    def _target(self) -> tuple[str | None, str | None]:
        choice = self.rng.choice(["all", "move", "move", "config", "storage", "resources", "tasks", "ticket"])
        return {
            "all": (None, None),
            "move": (self.rng.choice([None, "POST", "POST"]), self.post_path),
            "config": ("GET", r"^/nodes/[^/]+/(qemu|lxc)/\d+/(config|status/current)$"),
            "storage": ("GET", r"^/nodes/[^/]+/storage($|/[^/]+/content$)"),
            "resources": ("GET", "^/cluster/resources$"),
            "tasks": ("GET", "/tasks"),
            "ticket": ("POST", "^/access/ticket$"),
        }[choice]

    def _task_answer(self, n: int) -> Injected:
        """As a migration run's (task status reads answered with no task status), or the reads a disk move's
        check and verification make (the guest's config, the node's storages, a storage's content)
        answered `{"data": null}` or `{"data": ""}`: the move runs on, its job must wait the answer out."""
        if self.rng.random() < 0.5:
            return super()._task_answer(n)
        seconds = self.rng.uniform(2, 8)
        spec = {"kind": "data", "method": "GET", "path": DISK_READS, "data": self.rng.choice([None, ""]),
                **self._lifetime(seconds, self.rng.randint(5, 40))}
        return self._api_fault(n, "task_answer", spec, seconds)

    def _disk_error(self, n: int) -> Injected:
        with self.sim.cluster.lock:
            moving = sorted({m.guest.vmid for m in moves_of(self.sim.tasks).running.values()})
        return self._failing_task(n, "disk_error", moving,
                                  f"mirroring error: Input/output error (simulated disk error #{n})",
                                  "its disk moving now", "the next disk move")

    def _guests(self, prefer: float) -> list[int]:
        with self.sim.cluster.lock:
            moving = {m.guest.vmid for m in moves_of(self.sim.tasks).running.values()}
            return [v for v in super()._guests(prefer) if v not in moving]

    def next_moved(self, guests: list[Guest]) -> list[Guest]:
        use = group_use(self.sim)
        fullest = fullest_of(use)
        c = self.sim.cluster
        return [g for g in guests if any(storage == fullest and size >= BIG_DISK
                                         for _, storage, _, size in c.volumes(g))]

    def fill(self) -> Injected:
        """Data that is no guest's written to a storage other than the fullest, up to FILL_TO of it."""
        use = group_use(self.sim)
        fullest = fullest_of(use)
        storage = self.rng.choice(sorted(s for s in use if s != fullest))
        used, total = use[storage]
        gib = max(int((FILL_TO * total - used) / GIB), 0)
        self.sim.control("POST", f"/_sim/storages/{storage}/usage", {"add_gib": gib})
        fill = Injected(len(self.fills) + 1, "storage_fill", time.time(),
                        f"{gib} GiB of backups written to {storage} ({100 * used / total:.1f} % -> "
                        f"{100 * (used + gib * GIB) / total:.1f} %)", node=storage, spec={"gib": gib})
        self.fills.append(fill)
        return fill
