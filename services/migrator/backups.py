"""Backups: no migration starts on a guest whose backup is about to start or running; the move waits.

What PVE says (pve-manager PVE/API2/Backup.pm, VZDump):
- `GET /cluster/backup` lists the backup jobs: `id`, `schedule` (a calendar event, in the nodes' local
  time), `enabled` (default 1), the guests (`all` 1 less the `exclude` vmid list, a `vmid` list
  "100,101", or every guest of `pool`) and `node` (the job runs only there, on the guests there).
  For each job with a schedule PVE computes `next-run` (epoch seconds), disabled jobs too.
- A job still in the old vzdump.cron has no `next-run`. pvebalance does not evaluate its schedule
  itself: it is in the nodes' time zone and in PVE's own calendar dialect, and a wrong guess is worse
  than none. Such a job is not guarded against (the log says so, once per job and worker).
- At its start a job runs a `vzdump` task on each node (its id the vmid when it backs up one guest,
  empty for several) that backs the guests up one after another, locking each in turn. A guest whose
  turn has not come is not locked yet, so a backup task running on the guest's node holds the move
  too, until it ends (a guest already locked by it is waited for by the pre-flight anyway).

So a move waits (the job is deferred, and tries again, as a job waiting for a slot does) while an
enabled job that backs the guest up, on its source or target node, starts within
`migrator.backup_guard_minutes`, or while a backup task runs on its source node: the backup ends and
the move goes on. An operator expects the backup to happen, and the move only a little later.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pvebalance.shared.jobs import MigrationJob
from pvebalance.shared.logging import get_logger
from pvebalance.shared.proxmox import MALFORMED, ProxmoxError

log = get_logger("pvebalance.migrator")

BACKUP_JOBS = "/cluster/backup"
# pvescheduler starts the jobs due once a minute: a job's task is there within a minute of its next-run.
SCHEDULER_SLACK = 60.0
RUNNING_RECHECK = 60.0  # while a backup task runs, look again this often
_unknown_logged: set[str] = set()


@dataclass(frozen=True)
class BackupJob:
    id: str
    enabled: bool
    next_run: float | None  # None: PVE gave none (a legacy vzdump.cron job)
    all: bool
    vmids: frozenset[int]
    exclude: frozenset[int]
    pool: str | None
    node: str | None

    def covers(self, vmid: int, nodes: tuple[str, ...], pool_members: Callable[[str], frozenset[int]]) -> bool:
        """Whether the job backs this guest up on one of `nodes` (where it is, and where it goes)."""
        if not self.enabled or (self.node is not None and self.node not in nodes):
            return False
        if self.all:
            return vmid not in self.exclude
        return vmid in self.vmids or (self.pool is not None and vmid in pool_members(self.pool))


def _vmid_list(value: Any, what: str) -> frozenset[int]:
    """PVE's pve-vmid-list: "100,101" (or separated by spaces or semicolons)."""
    if value in (None, ""):
        return frozenset()
    items = str(value).replace(";", ",").replace(" ", ",").split(",")
    if not all(i.strip().isdigit() for i in items if i.strip()):
        raise ProxmoxError(f"{BACKUP_JOBS}: {what} is not a list of vmids ({str(value)[:40]!r})", kind=MALFORMED)
    return frozenset(int(i) for i in items if i.strip())


def read_jobs(answer: Any) -> list[BackupJob]:
    if not isinstance(answer, list) or not all(isinstance(e, dict) for e in answer):
        raise ProxmoxError(f"{BACKUP_JOBS}: the answer is not a list of objects", kind=MALFORMED)
    jobs = []
    for e in answer:
        job_id = str(e.get("id") or "?")
        next_run = e.get("next-run")
        if next_run is not None and not isinstance(next_run, int | float):
            raise ProxmoxError(f"{BACKUP_JOBS}: next-run of job {job_id} is not a time ({next_run!r})", kind=MALFORMED)
        jobs.append(BackupJob(
            id=job_id, enabled=str(e.get("enabled", 1)).lower() not in ("0", "false"),
            next_run=float(next_run) if next_run is not None else None,
            all=str(e.get("all", 0)).lower() in ("1", "true"), vmids=_vmid_list(e.get("vmid"), f"vmid of job {job_id}"),
            exclude=_vmid_list(e.get("exclude"), f"exclude of job {job_id}"), pool=e.get("pool") or None,
            node=e.get("node") or None))
    return jobs


def _at(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def backup_wait(answer: Any, vmid_tasks: Any, job: MigrationJob, guard_minutes: float, now: float,
                pool_members: Callable[[str], frozenset[int]]) -> tuple[str, float] | None:
    """(why the move waits, until when at least) or None when no backup holds it.

    `answer` is /cluster/backup's, `vmid_tasks` the backup tasks running on the source
    (/nodes/SOURCE/tasks?typefilter=vzdump&source=active)."""
    nodes = (job.source, job.target)
    covering = [b for b in read_jobs(answer) if b.covers(job.vmid, nodes, pool_members)]
    running = _running(vmid_tasks, job.source)
    for task in running:
        # a backup of this guest alone, or of several guests by a job that backs this one up there
        if str(task.get("id") or "") == str(job.vmid) or (
                not task.get("id") and any(b.node in (None, job.source) for b in covering)):
            return (f"a backup runs on {job.source} (task {task.get('upid', '?')}): the move waits until it ends",
                    now + RUNNING_RECHECK)
    guard = guard_minutes * 60
    for b in sorted(covering, key=lambda b: b.next_run or 0):
        if b.next_run is None:
            if b.id not in _unknown_logged:
                _unknown_logged.add(b.id)
                log.warning("backup job has no next-run (a legacy vzdump.cron job?): migrations do not wait for it",
                            backup_job=b.id)
            continue
        if now <= b.next_run <= now + guard:
            return (f"backup job {b.id} of guest {job.vmid} starts at {_at(b.next_run)}, within "
                    f"migrator.backup_guard_minutes ({guard_minutes:g}): the move waits until it has run",
                    b.next_run + SCHEDULER_SLACK)
    return None


def _running(answer: Any, node: str) -> list[Mapping[str, Any]]:
    if not isinstance(answer, list) or not all(isinstance(t, dict) for t in answer):
        raise ProxmoxError(f"backup tasks of {node}: the answer is not a list of objects", kind=MALFORMED)
    return [t for t in answer if t.get("type") == "vzdump" and not t.get("endtime")]
