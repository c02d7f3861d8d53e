"""After a run: is the cluster settled, and did the promise hold? Checked against the simulator's own
record (every migrate POST, every migration task, peak concurrency and memory) and Redis (the job
store and its event stream). A disk-move run's own checks are in verify_disks.py."""

from __future__ import annotations

import contextlib
import re
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from pvebalance.shared import keys
from pvebalance.shared.jobs import DiskMoveJob, JobState, JobStatusEvent, MigrationJob, actions_with_jobs, parse_job
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import Plan

from .harness import Harness
from .inject import API_FAULTS, PROCESS_FAULTS, Injected

SLACK = 2.0  # seconds around a job's window (clocks are one machine's, but writes are not instant)
# A job reads its task's end after the simulator recorded it; this only absorbs rounding in the records.
EARLY_SLACK = 0.5


@dataclass
class Job:
    job: MigrationJob | DiskMoveJob
    record: dict[str, str]
    events: list[JobStatusEvent] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.job.job_id)

    @property
    def state(self) -> JobState | None:
        return JobState(self.record["state"]) if self.record.get("state") else None

    @property
    def message(self) -> str:
        return self.record.get("message", "")

    @property
    def created(self) -> float:
        return float(self.record.get("created_at") or 0)

    @property
    def ended(self) -> float | None:
        state = self.state
        if state is None or not state.terminal:
            return None
        return float(self.record.get(f"at_{state.value}") or 0) or None

    def window(self, now: float) -> tuple[float, float]:
        return self.created - SLACK, (self.ended or now) + SLACK

    @property
    def subject(self) -> tuple[str, int, str]:
        """What it moves: (kind, guest, disk or ""). One job at a time per subject (the guest's claim)."""
        return self.job.action, self.job.vmid, self.job.disk if isinstance(self.job, DiskMoveJob) else ""

    def describe(self) -> str:
        keep = {k: v for k, v in self.record.items() if k != "payload"}
        disk = f" {self.job.disk}" if isinstance(self.job, DiskMoveJob) else ""
        return (f"{self.id} vmid {self.job.vmid}{disk} {self.job.source}->{self.job.target} {keep} "
                f"events {[(e.state.value, e.message[:80]) for e in self.events]}")


def load_jobs(r: Redis) -> dict[str, Job]:
    store = JobStore(r)
    jobs: dict[str, Job] = {}
    for key in r.scan_iter(match=keys.job("*"), count=1000):
        job_id = key.decode().removeprefix(keys.job(""))
        record = dict(store.load(job_id).fields)
        if record.get("payload"):
            jobs[job_id] = Job(parse_job(record["payload"]), record)
    after = "0-0"
    while True:
        batch = store.events(after=after, count=1000)
        if not batch:
            break
        for _, event in batch:
            if event.job_id in jobs:
                jobs[event.job_id].events.append(event)
        after = batch[-1][0]
    return jobs


def settle_state(r: Redis) -> tuple[bool, str, list[str]]:
    """(settled, why not / how, blocked moves): no active job, every job final, and the latest plan,
    made after the last job ended, has no move that was enqueued (left: moves that are blocked)."""
    store = JobStore(r)
    active = store.active_jobs()
    if active:
        return False, f"{len(active)} active jobs", []
    jobs = load_jobs(r)
    open_jobs = [j.id for j in jobs.values() if j.ended is None]
    if open_jobs:
        return False, f"jobs not final: {open_jobs[:3]}", []
    raw = r.get(keys.PLAN_LATEST)
    if not raw:
        return False, "no plan yet", []
    plan = Plan.model_validate_json(raw)
    last_end = max((j.ended or 0 for j in jobs.values()), default=0.0)
    if plan.created_at.timestamp() <= last_end:
        return False, "no plan since the last job ended", []
    enqueued = [a for a, job_id in actions_with_jobs(plan) if job_id in jobs]
    if enqueued:
        return False, f"plan {plan.plan_id} has {len(enqueued)} enqueued moves", []
    blocked = [f"{a.kind} {a.vmid} {a.source}->{a.target}" for a in plan.actions]
    return True, f"{len(jobs)} jobs final, latest plan {len(plan.actions)} moves (blocked)", blocked


@dataclass
class Findings:
    figures: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def add(self, figure: str, problem: str) -> None:
        self.figures[figure] += 1
        self.problems.append(f"[{figure}] {problem}")

    def note(self, text: str) -> None:
        """Context for a problem (not counted)."""
        self.problems.append(f"  {text}")


def diagnose(h: Harness, r: Redis) -> list[str]:
    """Where a cluster that does not settle stands: slot holders, queue, what each worker runs."""
    store = JobStore(r)
    lines = []
    for key in sorted(r.scan_iter(match=f"{keys.PREFIX}:slots:*", count=1000)):
        if r.type(key) == b"zset":
            holders = [(m.decode(), "pinned" if score == float("inf") else f"expires in {score - time.time():.0f} s")
                       for m, score in r.zrange(key, 0, -1, withscores=True)]
            lines.append(f"slots {key.decode()}: {holders}")
    queued = [j.decode() for j in r.lrange(f"rq:queue:{keys.MIGRATION_QUEUE}", 0, -1)]
    lines.append(f"rq queue ({len(queued)}): {queued[:12]}")
    for job_id in sorted(store.active_jobs()):
        rec = store.load(job_id).fields
        rq_job = {k.decode(): v.decode(errors="replace")[:60] for k, v in r.hgetall(f"rq:job:{job_id}").items()
                  if k in (b"status", b"worker_name")}
        lease = r.exists(keys.lease(job_id))
        lines.append(f"active {job_id}: {rec.get('state')} attempts {rec.get('attempts')} upid {rec.get('upid')} "
                     f"lease {'held' if lease else 'none'} rq {rq_job} '{rec.get('message', '')[:80]}'")
    for worker, horse, job in h.horses():
        lines.append(f"{worker.name} (pid {worker.pid}): work-horse {horse} runs {job}")
    return lines


# The node a reason says was away: a migration's target ("target node X is ..."), or the node of a disk
# move's guest ("node X is ... since the plan was made", the planner's skip); it must really have been away
_AWAY = r"\bnode (\S+) is (?:offline|in maintenance)"


class Explainer:
    """Does a failed or skipped job's reason name something that really happened to its guest?"""

    def __init__(self, faults: list[Injected], drained: str | None = None) -> None:
        self.faults = faults
        self.by_tag = {f.tag: f for f in faults}
        self.drained = drained

    def happened(self, kinds: tuple[str, ...], start: float, end: float, vmid: int | None = None,
             node: str | None = None) -> bool:
        return any(f.kind in kinds and f.active(start, end) and (vmid is None or f.vmid == vmid)
                   and (node is None or f.node == node) for f in self.faults)

    def why_not(self, job: Job, now: float) -> str | None:
        """None when the reason is explained, else what is missing."""
        msg = job.message
        tags = [t for t in re.findall(r"#\d+", msg) if t in self.by_tag]
        if tags:
            return None  # the reason carries the text of an injected fault
        start, end = job.window(now)
        for pattern, happened in self.checks(job, start, end):
            if re.search(pattern, msg):
                return None if happened else f"reason matches /{pattern}/ but no such fault hit it"
        return "no injected fault explains this reason"

    def checks(self, job: Job, start: float, end: float) -> list[tuple[str, bool]]:
        """(a pattern of the job's reason, whether a fault that causes it hit the job), first match counts."""
        vmid, target = job.job.vmid, job.job.target
        away = re.search(_AWAY, job.message)
        return [
            (r"guest \d+ no longer exists", self.happened(("guest_delete",), 0, end, vmid)),
            (r"is already on (\S+)", self.happened(("guest_move",), 0, end, vmid)),
            (r"was moved to \S+ since the plan", self.happened(("guest_move",), 0, end, vmid)),
            (_AWAY, away is not None and self._offline(away.group(1), start, end)),
            (r"Proxmox does not allow", self._offline(target, start, end)),
            (r"no longer has room", self.happened(("guest_move",), start, end, node=target)),
            (r"stayed locked|VM is locked \((backup|snapshot)\)|CT is locked",
             self.happened(("guest_lock",), start, end, vmid)),
            (r"is not online", self._offline(target, start, end)),
            (r"does not exist|but guest \d+ is on",
             self.happened(("guest_delete", "guest_move"), start, end, vmid)),
            (r"kept refusing the credentials", self.happened(("http_401",), start, end)),
            (r"given up after \d+ attempts", self.happened(PROCESS_FAULTS, start, end)),
            (r"the (migrate )?request failed \d+ times|timed out|not PVE's JSON|No route to host",
             self.happened((*API_FAULTS, "node_offline"), start, end)),
        ]

    def _offline(self, node: str, start: float, end: float) -> bool:
        # a snapshot or a pre-flight may see a node offline a few seconds after it came back
        return node == self.drained or self.happened(("node_offline",), start - 5, end, node=node)


def exclusive_windows(jobs: dict[str, Job], now: float) -> dict[str, tuple[float, float]]:
    """Each job's time span for attributing POSTs and tasks to it: its own window with SLACK, but
    never reaching into the next job of the same guest (a guest has one job at a time: the next is
    created only after this one ended and freed the guest's claim)."""
    by_subject: dict[tuple[str, int, str], list[Job]] = defaultdict(list)
    for job in jobs.values():
        by_subject[job.subject].append(job)
    out: dict[str, tuple[float, float]] = {}
    for same in by_subject.values():
        same.sort(key=lambda j: j.created)
        for i, job in enumerate(same):
            start, end = job.window(now)
            if i > 0:
                start = max(start, same[i - 1].ended or start)
            if i + 1 < len(same):
                end = min(end, same[i + 1].created)
            out[job.id] = (start, end)
    return out


def check_ending(job: Job, found: Findings) -> None:
    """It ended, once, and its hash and its event stream agree."""
    finals = [e for e in job.events if e.state.terminal]
    if job.ended is None:
        found.add("lost", f"job never ended: {job.describe()}")
    elif not finals:
        found.add("lost", f"job ended without a final event: {job.describe()}")
    if len(finals) > 1:
        found.add("ended_twice", f"{len(finals)} final events: {job.describe()}")
    elif finals and job.state is not finals[0].state:
        found.add("ended_twice", f"hash says {job.state}, event says {finals[0].state}: {job.describe()}")


def check_once(job: Job, posts: list[dict[str, Any]], ok_tasks: list[dict[str, Any]], task: dict[str, Any] | None,
               found: Findings, post: str, done: str, excused: bool = False) -> None:
    """What every kind of job owes: its POSTs started one task at most and one task of it ended ok at most
    (else `doubled`), and it did not end before its task (`ended_early`: its slots were freed while the task
    ran, so the limits no longer counted it) unless `excused`. `post` and `done` name its POST and an ok
    task in the findings ("migrate" / "migrations")."""
    if len(posts) > 1:
        found.add("doubled", f"{len(posts)} {post} POSTs started tasks {[r['upid'] for r in posts]}: {job.describe()}")
    if len(ok_tasks) > 1:
        found.add("doubled", f"{len(ok_tasks)} ok {done} {[m['upid'] for m in ok_tasks]}: {job.describe()}")
    if task is not None and job.ended is not None and job.ended < task["end"] - EARLY_SLACK and not excused:
        found.add("ended_early", f"{job.state.value if job.state else '?'} {job.ended - task['end']:.1f} s "
                                 f"before its task {task['upid']} ended: {job.describe()}")


def check_jobs(jobs: dict[str, Job], stats: dict[str, Any], faults: list[Injected], now: float,
               found: Findings, drained: str | None = None) -> None:
    migrations = stats["migrations"]
    by_upid = {m["upid"]: m for m in migrations if m.get("upid")}
    requests = stats.get("migrate_requests", [])
    explain = Explainer(faults, drained)
    windows = exclusive_windows(jobs, now)
    for job in sorted(jobs.values(), key=lambda j: j.created):
        if not isinstance(job.job, MigrationJob):
            continue  # a disk move: verify_disks.py
        vmid, target = job.job.vmid, job.job.target
        start, end = windows[job.id]
        check_ending(job, found)
        mine = [m for m in migrations if m["vmid"] == vmid and start <= m["start"] <= end]
        ok_mine = [m for m in mine if m["ok"]]
        posts = [r for r in requests if r["vmid"] == vmid and start <= r["time"] <= end and r.get("upid")]
        upid = job.record.get("upid")
        task = by_upid.get(upid) if upid else None
        check_once(job, posts, ok_mine, task, found, "migrate", "migrations",
                   excused="may still run" in job.message)
        if job.state is JobState.SUCCEEDED:
            landed = [m for m in ok_mine if m["target"] == target]
            if not landed:
                found.add("lost", f"succeeded, but the simulator has no ok migration to {target}: {job.describe()}")
            elif task is not None and not (task["ok"] and task["target"] == target):
                found.add("lost", f"succeeded, but its task {upid} ended {task['exitstatus']}: {job.describe()}")
        elif job.state is not None and job.state.terminal:
            moved = [m for m in ok_mine if m["target"] == target]
            if moved and not explain.happened(("guest_move", "guest_delete"), start, end, vmid) \
                    and "may still run" not in job.message:
                found.add("lost", f"{job.state.value}, but the simulator migrated the guest "
                                  f"({[m['upid'] for m in moved]}): {job.describe()}")
            why = explain.why_not(job, now)
            if why is not None:
                found.add("unexplained", f"{job.state.value} '{job.message}': {why}: {job.describe()}")
    # every ok migration belongs to exactly one job's window
    for m in migrations:
        if not m["ok"]:
            continue
        owners = [j for j in jobs.values() if isinstance(j.job, MigrationJob)
                  and j.job.vmid == m["vmid"] and windows[j.id][0] <= m["start"] <= windows[j.id][1]]
        if not owners:
            found.add("lost", f"migration {m['upid']} of {m['vmid']} to {m['target']} belongs to no job")
    migration_jobs = [j for j in jobs.values() if isinstance(j.job, MigrationJob)]
    succeeded = Counter(j.job.vmid for j in migration_jobs if j.state is JobState.SUCCEEDED)
    still_open = {j.job.vmid for j in migration_jobs if j.ended is None}  # counted as lost already
    for vmid, n in Counter(m["vmid"] for m in migrations if m["ok"]).items():
        if n > succeeded[vmid] and vmid not in still_open:
            found.add("doubled", f"guest {vmid}: {n} ok migrations for {succeeded[vmid]} succeeded jobs")


def check_cluster(h: Harness, stats: dict[str, Any], found: Findings) -> None:
    lim = h.limits
    if stats["max_concurrent"] > lim.cluster:
        found.add("limits_exceeded", f"{stats['max_concurrent']} migrations at once (limit {lim.cluster})")
    for scope, limit in (("max_per_source", lim.per_source), ("max_per_target", lim.per_target)):
        for node, n in stats[scope].items():
            if n > limit:
                found.add("limits_exceeded", f"{n} migrations at once {scope[4:]} {node} (limit {limit})")
    ceiling = h.max_node_usage / 100
    c = h.sim.cluster
    with c.lock:
        peaks = dict(stats.get("peak_mem_ratio") or c.mem_ratios())  # fallback: only the end state
        placement = {v: (g.node, g.running) for v, g in c.guests.items()}
        nodes = {n: (node.online, node.entry.get("hastate")) for n, node in c.nodes.items()}
        running = list(c.stats.running)
    for node, ratio in peaks.items():
        if ratio > ceiling:
            found.add("overloads", f"node {node} reached {ratio:.1%} memory (limit {ceiling:.0%})")
    for vmid, (node, _) in sorted(placement.items()):
        online, hastate = nodes[node]
        if not online or hastate == "maintenance":  # (every node is back online once healed)
            found.add("misplaced", f"guest {vmid} is on {node} ({'offline' if not online else 'maintenance'})")
    if running:
        found.add("misplaced", f"migration tasks still running at the end: {running}")


def redis_blobs(r: Redis) -> list[tuple[str, bytes]]:
    """Every value in Redis as bytes (compressed ones also unpacked: rq zlib-compresses job data)."""
    out: list[tuple[str, bytes]] = []
    for key in r.scan_iter(count=1000):
        name = key.decode(errors="replace")
        kind = r.type(key).decode()
        values: list[bytes] = [key]
        if kind == "string":
            values.append(r.get(key) or b"")
        elif kind == "hash":
            values += [x for kv in r.hgetall(key).items() for x in kv]
        elif kind == "list":
            values += r.lrange(key, 0, -1)
        elif kind == "set":
            values += list(r.smembers(key))
        elif kind == "zset":
            values += [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            values += [x for _, fields in r.xrange(key) for kv in fields.items() for x in kv]
        for v in values:
            out.append((name, v))
            with contextlib.suppress(zlib.error):
                out.append((name + " (zlib)", zlib.decompress(v)))
    return out


def check_secrets(h: Harness, r: Redis, jobs: dict[str, Job], found: Findings) -> None:
    needles = {"the API token secret": h.token_secret.encode(), "the password": h.password.encode()}
    for path in sorted(h.logdir.glob("*.log")):
        data = path.read_bytes()
        for what, needle in needles.items():
            if needle in data:
                line = next(ln for ln in data.splitlines() if needle in ln)
                found.add("secrets", f"{what} in {path.name}: {line.replace(needle, b'<SECRET>')[:300]!r}")
    for name, blob in redis_blobs(r):
        for what, needle in needles.items():
            if needle in blob:
                found.add("secrets", f"{what} in Redis key {name}")
    for job in jobs.values():
        texts = [job.message] + [e.message for e in job.events]
        for what, needle in needles.items():
            if any(needle.decode() in t for t in texts):
                found.add("secrets", f"{what} in a message of job {job.id}")
