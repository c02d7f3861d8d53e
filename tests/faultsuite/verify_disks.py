"""A disk-move run's own checks, in verify.py's figures, against the simulator's own state and record
(its guests' configs, its storages' use and content as its API lists them, every move_disk/move_volume
POST and disk move task, the peak use of each storage, the most moves at once) and Redis (the jobs and
their events); never through pvebalance's parsers.

- lost: a job that never ended; a succeeded job whose disk the simulator did not move there; a failed or
  skipped one whose disk it did move; a disk move no job accounts for; a disk missing from its guest, on
  another storage than its last move took it to, or not listed in that storage's content; a storage
  holding less than its volumes.
- doubled: two task-starting POSTs or two moves for one job; more moves of a disk than succeeded jobs; a
  task-starting POST no job sent; a volume twice, a copy left behind (`unusedN`), a volume that no config
  names, a storage holding more than its volumes.
- ended_early: a job that ended before its task did. limits_exceeded: more moves at once per storage than
  `max_parallel_per_storage`, or moves and migrations at once in the cluster than `max_parallel_cluster`.
- overloads: a storage above `max_usage` at any moment, unless it began above it (then: above its start).
- unbalanced: the storages end further apart than `balanciness` and the planner's latest plan, made on
  the end state, gives no reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from redis import Redis

from pvebalance.shared import keys
from pvebalance.shared.jobs import DiskMoveJob, JobState, MigrationJob
from pvebalance.shared.models import Plan
from pvebalance.simulator import storages
from pvebalance.simulator.api import Request
from pvebalance.simulator.disks import moves_of

from .harness import STORAGE_GROUP, Harness
from .inject import Injected
from .inject_disks import group_use
from .verify import Explainer, Findings, Job, check_ending, check_once, exclusive_windows

EPSILON = 1e-9  # ratios are exact quotients of byte counts: only rounding is forgiven


@dataclass(frozen=True)
class Inventory:
    """What the storages held at the start: each guest's disks (key -> volid, storage, bytes) and each
    balanced storage's use (bytes used, bytes total)."""

    disks: dict[int, dict[str, tuple[str, str, int]]]
    use: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, h: Harness) -> Inventory:
        c = h.sim.cluster
        with c.lock:
            disks = {vmid: {key: (volid, storage, size) for key, storage, volid, size in c.volumes(g)}
                     for vmid, g in c.guests.items()}
        return cls(disks, group_use(h.sim))

    def ratio(self, storage: str) -> float:
        used, total = self.use[storage]
        return used / total


class DiskExplainer(Explainer):
    """A disk move's reasons; a fill of its target explains a lack of room, a migration or a hand move
    of its guest that it is not on its node any more."""

    def __init__(self, faults: list[Injected], fills: list[Injected], jobs: dict[str, Job]) -> None:
        super().__init__(faults)
        self.fills = fills
        self.jobs = jobs

    def migrated(self, vmid: int, end: float) -> bool:
        return any(isinstance(j.job, MigrationJob) and j.job.vmid == vmid and j.state is JobState.SUCCEEDED
                   and (j.ended or end) <= end for j in self.jobs.values())

    def checks(self, job: Job, start: float, end: float) -> list[tuple[str, bool]]:
        vmid, target = job.job.vmid, job.job.target
        filled = any(f.node == target and start <= f.at <= end for f in self.fills)
        elsewhere = self.happened(("guest_move", "guest_delete"), 0, end, vmid) or self.migrated(vmid, end)
        return [
            (r"guest \d+ is no longer on \S+", elsewhere),
            (r"has no disk \S+ any more", self.happened(("guest_delete",), 0, end, vmid)),
            (r"no longer has room", filled),
            # nothing but pvebalance moves disks: a disk found moved means a plan on stale configs
            (r"is already on \S+|was moved to \S+ since the plan", False),
            *[(p, ok) for p, ok in super().checks(job, start, end) if "already on" not in p and "room" not in p],
        ]


def subject_of(record: dict[str, Any]) -> tuple[str, int, str]:
    return "move-disk", int(record["vmid"]), str(record["disk"])


def check_disk_jobs(jobs: dict[str, Job], stats: dict[str, Any], faults: list[Injected], fills: list[Injected],
                    now: float, found: Findings) -> None:
    moves = stats["disk_moves"]
    requests = [r for r in stats["disk_move_requests"] if r.get("upid")]
    by_upid = {m["upid"]: m for m in moves}
    explain = DiskExplainer(faults, fills, jobs)
    windows = exclusive_windows(jobs, now)
    disk_jobs = sorted((j for j in jobs.values() if isinstance(j.job, DiskMoveJob)), key=lambda j: j.created)

    def within(job: Job, at: float) -> bool:
        return windows[job.id][0] <= at <= windows[job.id][1]

    for job in disk_jobs:
        target = job.job.target
        check_ending(job, found)
        ok_mine = [m for m in moves if m["ok"] and subject_of(m) == job.subject and within(job, m["start"])]
        posts = [r for r in requests if subject_of(r) == job.subject and within(job, r["time"])]
        upid = job.record.get("upid")
        task = by_upid.get(upid) if upid else None
        check_once(job, posts, ok_mine, task, found, "move", "disk moves")
        landed = [m for m in ok_mine if m["to"] == target]
        if job.state is JobState.SUCCEEDED:
            if not landed:
                found.add("lost", f"succeeded, but the simulator has no ok move to {target}: {job.describe()}")
            elif task is not None and not (task["ok"] and task["to"] == target):
                found.add("lost", f"succeeded, but its task {upid} ended {task['exitstatus']}: {job.describe()}")
        elif job.state is not None and job.state.terminal:
            if landed:
                found.add("lost", f"{job.state.value}, but the simulator moved the disk "
                                  f"({[m['upid'] for m in landed]}): {job.describe()}")
            why = explain.why_not(job, now)
            if why is not None:
                found.add("unexplained", f"{job.state.value} '{job.message}': {why}: {job.describe()}")
    for m in moves:
        if m["ok"] and not [j for j in disk_jobs if j.subject == subject_of(m) and within(j, m["start"])]:
            found.add("lost", f"disk move {m['upid']} of {m['vmid']} {m['disk']} to {m['to']} belongs to no job")
    for r in requests:
        if not [j for j in disk_jobs if j.subject == subject_of(r) and within(j, r["time"])]:
            found.add("doubled", f"move POST of {r['vmid']} {r['disk']} to {r['storage']} ({r['upid']}) "
                                 "was sent by no job")
    succeeded = Counter(j.subject for j in disk_jobs if j.state is JobState.SUCCEEDED)
    still_open = {j.subject for j in disk_jobs if j.ended is None}  # counted as lost already
    for subject, n in Counter(subject_of(m) for m in moves if m["ok"]).items():
        if n > succeeded[subject] and subject not in still_open:
            found.add("doubled", f"guest {subject[1]} {subject[2]}: {n} ok disk moves for {succeeded[subject]} "
                                 "succeeded jobs")


def listed(h: Harness, storage: str) -> list[str]:
    """The volumes the storage's content lists, as the simulator's API answers (a shared storage: one node)."""
    node = h.nodes[0]
    answer = h.sim.api.handle(Request("GET", f"/nodes/{node}/storage/{storage}/content", {}, "root@pam"))
    return [str(v["volid"]) for v in answer]


def check_disks(h: Harness, start: Inventory, stats: dict[str, Any], faults: list[Injected],
                fills: list[Injected], found: Findings) -> None:
    """Every disk of every guest exists once, where its last move took it, listed by its storage; every
    storage holds exactly its volumes (no copy left, none freed twice)."""
    c = h.sim.cluster
    deleted = {f.vmid for f in faults if f.kind == "guest_delete"}
    with c.lock:
        now = {vmid: {key: (volid, storage, size) for key, storage, volid, size in c.volumes(g)}
               for vmid, g in c.guests.items()}
        volumes = [(vmid, key, volid) for vmid, g in c.guests.items() for key, volid in storages.config_volumes(g)]
        running = [f"{m.guest.vmid} {m.key} ({upid})" for upid, m in moves_of(h.sim.tasks).running.items()]
    if running:
        found.add("misplaced", f"disk move tasks still running at the end: {running}")
    went = {subject_of(m)[1:]: m["to"] for m in sorted(stats["disk_moves"], key=lambda m: m["end"]) if m["ok"]}
    for vmid, disks in sorted(start.disks.items()):
        if vmid in deleted:
            continue
        for key, (volid, storage, size) in sorted(disks.items()):
            have = now.get(vmid, {}).get(key)
            expected = went.get((vmid, key), storage)
            if have is None:
                found.add("lost", f"disk {key} of guest {vmid} ({volid}, {size / 2**30:.0f} GiB) is gone")
            elif have[1:] != (expected, size):
                found.add("lost", f"disk {key} of guest {vmid} is {have[0]} ({have[2] / 2**30:.0f} GiB); its last "
                                  f"move took it to {expected} ({size / 2**30:.0f} GiB)")
    for vmid, key, volid in volumes:
        if key.startswith("unused"):
            found.add("doubled", f"guest {vmid} keeps a copy of a disk: {key} {volid}")
    for volid, n in Counter(volid for _, _, volid in volumes).items():
        if n > 1:
            found.add("doubled", f"volume {volid} is named {n} times in the guests' configs")
    named = {volid for _, _, volid in volumes}
    for storage in STORAGE_GROUP:
        shown = Counter(listed(h, storage))
        for vmid, key, volid in volumes:
            if volid.startswith(f"{storage}:") and shown[volid] != 1:
                found.add("lost" if not shown[volid] else "doubled",
                          f"disk {key} of guest {vmid} ({volid}) is listed {shown[volid]} times in {storage}'s content")
        for volid in sorted(set(shown) - named):
            found.add("doubled", f"{storage}'s content lists {volid}, which no guest's config names")
    check_use(h, start, now, fills, found)


def check_use(h: Harness, start: Inventory, now: dict[int, dict[str, tuple[str, str, int]]],
              fills: list[Injected], found: Findings) -> None:
    """Each storage's use moved exactly with its volumes (and the data written to it by hand)."""
    use = group_use(h.sim)

    def held(disks: dict[int, dict[str, tuple[str, str, int]]], storage: str) -> int:
        return sum(size for guest in disks.values() for _, where, size in guest.values() if where == storage)

    for storage in STORAGE_GROUP:
        written = sum(int(f.spec["gib"]) * 2**30 for f in fills if f.node == storage)
        expected = start.use[storage][0] + held(now, storage) - held(start.disks, storage) + written
        actual = use[storage][0]
        if actual != expected:
            found.add("doubled" if actual > expected else "lost",
                      f"{storage} holds {(actual - expected) / 2**30:+.1f} GiB more than its volumes and the data "
                      "written to it by hand")


def check_storages(h: Harness, start: Inventory, stats: dict[str, Any], r: Redis, found: Findings) -> str:
    """The limits, each storage's peak use, the end's spread; returns the end state in words."""
    lim = h.limits
    for storage, n in sorted(stats["max_disk_moves_per_storage"].items()):
        if n > lim.per_storage:
            found.add("limits_exceeded", f"{n} disk moves at once from or to {storage} (limit {lim.per_storage})")
    if stats["max_moves_at_once"] > lim.cluster:
        found.add("limits_exceeded", f"{stats['max_moves_at_once']} disk moves and migrations at once "
                                     f"(limit {lim.cluster})")
    for key, peak in sorted(stats["peak_storage_ratio"].items()):
        storage = key.split("/", 1)[1]
        if storage not in start.use:
            continue
        allowed = max(h.max_usage / 100, start.ratio(storage))
        if peak > allowed + EPSILON:
            found.add("overloads", f"storage {key} reached {peak:.2%} (max_usage {h.max_usage:g} %, "
                                   f"{start.ratio(storage):.2%} at the start)")
    use = group_use(h.sim)
    percent = {s: 100 * used / total for s, (used, total) in use.items()}
    spread = max(percent.values()) - min(percent.values())
    words = f"storages end {spread:.1f} pp apart ({', '.join(f'{s} {p:.1f} %' for s, p in sorted(percent.items()))})"
    if spread <= h.balanciness:
        return words
    raw = r.get(keys.PLAN_LATEST)
    plan = Plan.model_validate_json(raw) if raw else None
    reasons = [] if plan is None else [*(plan.storage.stays if plan.storage else []), plan.outcome_reason,
                                       *plan.notes, *[u.reason for u in plan.unmet]]
    reasons = [x for x in reasons if x]
    if not reasons:
        found.add("unbalanced", f"{words}, more than balanciness {h.balanciness:g} pp, and the latest plan says "
                                f"nothing of why ({plan.plan_id if plan else 'no plan'})")
        return words
    return f"{words}; the planner says: {'; '.join(reasons)[:300]}"
