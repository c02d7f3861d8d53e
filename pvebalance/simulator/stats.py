"""What the simulator saw, kept so a test can check a whole run against it afterwards.

Everything is written with the cluster lock held (the record of a migrate POST, a task starting or
ending, a guest landing), so one snapshot of it is always consistent.

Concurrency counts a migration task from the moment it holds the guest (its `lock: migrate` is
set) until it ends: an HA request (`hamigrate`) does not count, the qmigrate/vzmigrate the HA
stack starts later does, and a task that fails before it gets the guest (a CT that is already
locked) never counted as a running migration.

`disk_moves` are the disk move tasks that ended (disks.py: vmid, disk, from, to, start, end, ok,
gib, ...), `disk_move_requests` every move_disk/move_volume POST and what answered it (as
`migrate_requests` for migrate POSTs), `max_disk_moves_per_storage` the most moves at once that
read from or wrote to each storage, `max_disk_moves` the most copying at once in the cluster and
`max_moves_at_once` the most migrations and disk copies at once (a balancer's cluster-wide limit counts
both). A disk move counts from the moment its target volume is allocated until its task ends.

`peak_storage_ratio` is each storage's highest use (per node that sees it, `node/storage`), noted whenever
a volume grows it: a copy's target volume, a migration's local disks, data written by hand (control.py).

`links` (links.py) records each node's migration link: the seconds it carried any migration's data
(`busy_s`) and the GiB it sent and received; forgetting the stats forgets those too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .links import Links


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    migrate_posts: Counter[int] = field(default_factory=Counter)  # POSTs that got a UPID, per vmid
    migrate_requests: list[dict[str, Any]] = field(default_factory=list)  # every migrate POST
    ha_requests: list[dict[str, Any]] = field(default_factory=list)  # what the HA stack did with one
    running: list[tuple[int, str, str]] = field(default_factory=list)
    max_concurrent: int = 0
    max_per_source: Counter[str] = field(default_factory=Counter)
    max_per_target: Counter[str] = field(default_factory=Counter)
    migrations: list[dict[str, Any]] = field(default_factory=list)
    disk_moves: list[dict[str, Any]] = field(default_factory=list)  # ended move_disk/move_volume tasks
    disk_move_requests: list[dict[str, Any]] = field(default_factory=list)  # every move_disk/move_volume POST
    max_disk_moves_per_storage: Counter[str] = field(default_factory=Counter)
    disks_moving: int = 0  # disk moves copying now
    max_disk_moves: int = 0
    max_moves_at_once: int = 0  # migrations holding their guest plus disk moves copying
    peak_mem_ratio: dict[str, float] = field(default_factory=dict)  # incl. memory held by live migrations
    peak_storage_ratio: dict[str, float] = field(default_factory=dict)  # "node/storage" -> used / size, peak
    requests_waited: int = 0  # requests that waited for a free worker of their node
    links: Links | None = None  # the nodes' migration links (set by the task manager)

    def reset(self, mem_ratios: dict[str, float]) -> None:
        """Forget the past, in place (callers may hold this object). Running migrations stay
        running: they end later and must still find themselves in `running`."""
        running, links, moving = list(self.running), self.links, self.disks_moving
        self.__init__()  # type: ignore[misc]
        self.links = links
        for _ in range(moving):
            self.disk_move_started()
        if links is not None:
            links.reset()
        for vmid, source, target in running:
            self.started(vmid, source, target)
        self.note_mem(mem_ratios)

    def started(self, vmid: int, source: str, target: str) -> None:
        self.running.append((vmid, source, target))
        self.max_concurrent = max(self.max_concurrent, len(self.running))
        src = sum(1 for _, s, _ in self.running if s == source)
        dst = sum(1 for _, _, t in self.running if t == target)
        self.max_per_source[source] = max(self.max_per_source[source], src)
        self.max_per_target[target] = max(self.max_per_target[target], dst)
        self._note_at_once()

    def disk_move_started(self) -> None:
        """A disk move's copy starts (its target volume is allocated)."""
        self.disks_moving += 1
        self.max_disk_moves = max(self.max_disk_moves, self.disks_moving)
        self._note_at_once()

    def disk_move_ended(self) -> None:
        """A disk move whose copy had started ended."""
        self.disks_moving = max(self.disks_moving - 1, 0)

    def _note_at_once(self) -> None:
        self.max_moves_at_once = max(self.max_moves_at_once, len(self.running) + self.disks_moving)

    def ended(self, record: dict[str, Any], counted: bool) -> None:
        """A migration task ended; `counted` if it was in `running` (it held the guest)."""
        if counted:
            self.running.remove((record["vmid"], record["source"], record["target"]))
        self.migrations.append(record)

    def note_storage(self, key: str, ratio: float) -> None:
        self.peak_storage_ratio[key] = max(ratio, self.peak_storage_ratio.get(key, 0.0))

    def note_mem(self, ratios: dict[str, float]) -> None:
        for node, ratio in ratios.items():
            if ratio > self.peak_mem_ratio.get(node, -1.0):
                self.peak_mem_ratio[node] = ratio

    def migrate_request(self, **record: Any) -> None:
        self.migrate_requests.append(record)

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "requests_total": sum(self.requests.values()),
            "migrate_posts": {str(k): v for k, v in self.migrate_posts.items()},
            "migrate_requests": [dict(r) for r in self.migrate_requests],
            "ha_requests": [dict(r) for r in self.ha_requests],
            "running": [list(r) for r in self.running],
            "max_concurrent": self.max_concurrent,
            "max_per_source": dict(self.max_per_source),
            "max_per_target": dict(self.max_per_target),
            "migrations": [dict(m) for m in self.migrations],
            "disk_moves": [dict(m) for m in self.disk_moves],
            "disk_move_requests": [dict(r) for r in self.disk_move_requests],
            "max_disk_moves_per_storage": dict(self.max_disk_moves_per_storage),
            "disks_moving": self.disks_moving,
            "max_disk_moves": self.max_disk_moves,
            "max_moves_at_once": self.max_moves_at_once,
            "peak_mem_ratio": dict(self.peak_mem_ratio),
            "peak_storage_ratio": dict(self.peak_storage_ratio),
            "requests_waited": self.requests_waited,
            "links": self.links.as_json() if self.links is not None else {},
        }
