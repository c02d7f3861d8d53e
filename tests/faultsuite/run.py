"""One run of the fault suite: a rebalance of all-on-one, then a drain of pve1 (or, a disk-move run,
`storage`: storage balancing of storage-3, then again after a storage was filled by hand), with faults at
random moments from a seeded random.Random; then, everything healed, the cluster must settle and the
promise must hold."""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .harness import Harness, Limits
from .inject import Injector
from .inject_disks import DiskInjector
from .verify import Findings, check_cluster, check_jobs, check_secrets, diagnose, load_jobs, settle_state
from .verify_disks import Inventory, check_disk_jobs, check_disks, check_storages

# The figures that must all be zero.
FIGURES = ("lost", "ended_twice", "ended_early", "doubled", "limits_exceeded", "overloads", "misplaced",
           "services_exited", "secrets", "unexplained", "unsettled", "unbalanced")
HOLD_FOR_WORK = 5.0


@dataclass
class RunConfig:
    seed: int
    faults: int = 30  # cards in the deck: every kind once, the rest weighted
    gap: tuple[float, float] = (0.7, 3.0)  # seconds between faults
    outage: bool = True  # Redis down for outage_seconds, once
    outage_seconds: float = 60.0
    time_scale: float = 0.15  # all-on-one's migrations then take 0.4-1.4 s
    limits: Limits = field(default_factory=Limits)
    workers: int = 4
    rebalance_timeout: float = 150.0  # the drain starts when the rebalance settled, or after this
    fault_phase_max: float = 270.0  # faults stop when the drain settled, the deck is used up, or after this
    settle_timeout: float = 200.0  # after the faults are healed, the cluster must settle within this
    storage: bool = False  # a disk-move run: storage-3, storage balancing on, faults aimed at disk moves
    slot_ttl: float = 90.0  # migrator.slot_ttl: also how long a killed runner's lease keeps its job from others


@dataclass
class RunResult:
    seed: int
    figures: Counter[str]
    problems: list[str]
    faults: Counter[str]
    jobs: int
    states: Counter[str]
    migrations_ok: int
    task_posts: int
    duration: float
    workdir: Path
    features: str
    unused_faults: int = 0
    log_errors: Counter[str] = field(default_factory=Counter)
    disk_moves_ok: int = 0
    disk_posts: int = 0
    faults_in_copies: int = 0  # faults injected while the simulator copied a disk
    storage_end: str = ""  # a disk-move run: where the storages ended, and why if not balanced

    @property
    def ok(self) -> bool:
        return not any(self.figures[f] for f in FIGURES)

    def summary(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        states = ", ".join(f"{k} {v}" for k, v in sorted(self.states.items()))
        figures = ", ".join(f"{f.replace('_', ' ')} {self.figures[f]}" for f in FIGURES)
        disks = (f"ok disk moves {self.disk_moves_ok}, task-starting move POSTs {self.disk_posts}, "
                 f"{self.faults_in_copies} faults while a disk was copied; {self.storage_end}; ") \
            if self.storage_end else ""
        return (f"seed {self.seed}: faults {sum(self.faults.values())} ({faults}); jobs {self.jobs} ({states}); "
                f"ok migrations {self.migrations_ok}, task-starting POSTs {self.task_posts}; {disks}{figures}; "
                f"{self.unused_faults} faults unused; {self.duration:.0f} s")


def total_line(results: list[RunResult]) -> str:
    faults = sum((r.faults for r in results), Counter[str]())
    figures = sum((r.figures for r in results), Counter[str]())
    figure_text = ", ".join(f"{f.replace('_', ' ')} {figures[f]}" for f in FIGURES)
    return (f"total: {len(results)} runs, seeds {[r.seed for r in results]}, faults {sum(faults.values())} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(faults.items()))}); jobs {sum(r.jobs for r in results)}, "
            f"ok migrations {sum(r.migrations_ok for r in results)}, ok disk moves "
            f"{sum(r.disk_moves_ok for r in results)}; {figure_text}; "
            f"{sum(r.duration for r in results):.0f} s; {'PASS' if all(r.ok for r in results) else 'FAIL'}")


class Run:
    def __init__(self, cfg: RunConfig, workdir: Path, say: Callable[[str], None] = print) -> None:
        self.cfg, self.workdir, self._say = cfg, workdir, say
        self.rng = random.Random(cfg.seed)
        self.h = Harness(workdir, cfg.time_scale, cfg.limits, cfg.workers, slot_ttl=cfg.slot_ttl, storage=cfg.storage)
        self.start = Inventory.of(self.h) if cfg.storage else None  # the storages before anything moved
        self.storage_end = ""
        self.found = Findings()
        self.exited: list[str] = []
        self.t0 = time.time()
        self.lines: list[str] = []
        self._jobs_figures: tuple[int, Counter[str]] = (0, Counter())
        self.log_errors: Counter[str] = Counter()

    def say(self, line: str) -> None:
        line = f"[seed {self.cfg.seed}] {line}"
        self.lines.append(line)
        self._say(line)

    def rel(self) -> str:
        return f"t+{time.time() - self.t0:6.1f}s"

    # --- the run ----------------------------------------------------------------------------------

    def execute(self) -> RunResult:
        cfg, h = self.cfg, self.h
        what = "disk moves on storage-3" if cfg.storage else "migrations on all-on-one"
        self.say(f"fault suite run ({what}): seed {cfg.seed}, {cfg.faults} faults, gap {cfg.gap} s, redis outage "
                 f"{f'{cfg.outage_seconds:.0f} s' if cfg.outage else 'no'}, time_scale {cfg.time_scale}, "
                 f"{cfg.workers} workers, limits {asdict(cfg.limits)}, workdir {self.workdir}")
        started = time.time()
        inj = (DiskInjector if cfg.storage else Injector)(h, self.rng, self.t0, self.say, cfg.outage_seconds)
        self.say(f"simulator features used: {inj.features.describe()}")
        rebalance, drain = inj.deck(cfg.faults, cfg.outage)
        self.say(f"faults for the rebalance: {' '.join(rebalance)}")
        self.say(f"faults for the {'fill' if cfg.storage else 'drain'}: {' '.join(drain)}")
        unused = 0
        try:
            h.start()
            self.t0 = inj.t0 = time.time()
            unused = self._workload(inj, rebalance, drain)
            self.say(f"{self.rel()} healing: faults cleared, pending restarts/unlocks/nodes done, Redis up")
            inj.finish()
            self._watch_services(inj)
            self._settle(inj)
            self._check(inj)
        finally:
            h.stop()
        for line in self.found.problems:
            self.say(f"PROBLEM {line}")
        for event, n in self.log_errors.most_common(8):
            self.say(f"error lines in the service logs: {n} x {event}")
        stats = h.sim.cluster.stats.as_json()
        jobs = self._jobs_figures
        result = RunResult(
            seed=cfg.seed, figures=self.found.figures, problems=self.found.problems,
            faults=Counter(f.kind for f in inj.injected), jobs=jobs[0], states=jobs[1],
            migrations_ok=sum(1 for m in stats["migrations"] if m["ok"]),
            task_posts=sum(1 for r in stats.get("migrate_requests", []) if r.get("upid")),
            duration=time.time() - started, workdir=self.workdir, features=inj.features.describe(),
            unused_faults=unused, log_errors=self.log_errors,
            disk_moves_ok=sum(1 for m in stats["disk_moves"] if m["ok"]),
            disk_posts=sum(1 for r in stats["disk_move_requests"] if r.get("upid")), storage_end=self.storage_end,
            faults_in_copies=sum(1 for f in inj.injected
                                 if any(m["start"] <= f.at <= m["end"] for m in stats["disk_moves"])),
        )
        self.say(result.summary())
        report = {"summary": result.summary(), "problems": result.problems, "log": self.lines,
                  "faults": [asdict(f) for f in inj.injected], "skipped": inj.skipped,
                  "fills": [asdict(f) for f in getattr(inj, "fills", [])]}
        (self.workdir / "report.json").write_text(json.dumps(report, indent=1, default=str))
        return result

    def _workload(self, inj: Injector, rebalance: list[str], drain: list[str]) -> int:
        """Faults while the rebalance and then the drain run; returns how many were left unused."""
        cfg, h = self.cfg, self.h
        tries: dict[int, int] = {}
        cards = list(enumerate(rebalance))
        next_at = self.t0 + self.rng.uniform(2, 4)
        phase, since, last_check = "rebalance", None, 0.0
        while True:
            now = time.time()
            inj.run_due()
            self._watch_services(inj)
            if now - last_check >= 1.0:
                last_check = now
                done = self._settled(extra=phase == "drain")
                since = (since or now) if done else None
                steady = since is not None and now - since >= 2.0
                if phase == "rebalance" and (steady or now - self.t0 > cfg.rebalance_timeout):
                    why = "the rebalance settled" if steady else "rebalance timeout"
                    if isinstance(inj, DiskInjector):
                        self.say(f"{self.rel()} fill: {inj.fill().detail} ({why})")
                    else:
                        h.sim.control("POST", f"/_sim/nodes/{h.drained}/maintenance", {"enable": True})
                        inj.draining = True
                        self.say(f"{self.rel()} drain: {h.drained} into HA maintenance ({why})")
                    phase, since = "drain", None
                    # what the rebalance did not use carries over
                    cards += [(len(rebalance) + i, kind) for i, kind in enumerate(drain)]
                    next_at = time.time() + self.rng.uniform(*cfg.gap)
                elif phase == "drain" and steady:
                    self.say(f"{self.rel()} the {'fill' if cfg.storage else 'drain'} settled; {len(cards)} faults "
                             "left unused")
                    return len(cards)
            if now - self.t0 > cfg.fault_phase_max:
                self.say(f"{self.rel()} fault phase ends at its cap ({cfg.fault_phase_max:.0f} s), {phase}")
                return len(cards)
            # in the rebalance, a fault waits up to HOLD_FOR_WORK s for the work it aims at (a disk run's copy
            # in flight: seed 11 once met 3 copies with 8 faults); the second phase's few moves settle first
            held = phase == "rebalance" and not inj.work_in_flight() and now < next_at + HOLD_FOR_WORK
            if cards and now >= next_at and not held:
                i, kind = cards.pop(0)
                if inj.inject(kind) is None:
                    tries[i] = tries.get(i, 0) + 1
                    if tries[i] < 2:
                        cards.append((i, kind))  # not possible now (no horse, Redis down...): later
                    else:
                        inj.skipped.append(kind)
                        self.say(f"{self.rel()} fault {kind} not possible, skipped")
                next_at = time.time() + self.rng.uniform(*cfg.gap)
            time.sleep(0.1)

    def _settled(self, extra: bool) -> bool:
        try:
            ok, _, _ = settle_state(self.h.redis())
        except Exception:  # Redis away
            return False
        if ok and extra and self.h.drained:
            with self.h.sim.cluster.lock:
                return not any(g.node == self.h.drained for g in self.h.sim.cluster.guests.values())
        return ok

    def _watch_services(self, inj: Injector) -> None:
        """A service that exited without being killed is counted, and replaced, as systemd would."""
        for s in self.h.services:
            if s.name in inj.down or s.running() or s.proc is None:
                continue
            rc = s.proc.returncode
            self.found.add("services_exited", f"{s.name} (pid {s.pid}, {s.logs[-1].name}) exited by itself with "
                                              f"status {rc}; last lines:\n{s.log_tail()}")
            self.say(f"{self.rel()} {s.name} exited by itself ({rc}); replaced")
            s.start()

    def _settle(self, inj: Injector) -> None:
        deadline = time.time() + self.cfg.settle_timeout
        since: float | None = None
        why = ""
        while time.time() < deadline:
            self._watch_services(inj)
            try:
                ok, why, blocked = settle_state(self.h.redis())
            except Exception as exc:
                ok, why, blocked = False, f"Redis: {exc}", []
            now = time.time()
            since = (since or now) if ok else None
            if since is not None and now - since >= 2.0:
                self.say(f"{self.rel()} settled: {why}")
                for move in blocked:
                    self.found.add("unsettled", f"the latest plan keeps a move that is never enqueued: {move}")
                return
            time.sleep(0.5)
        self.found.add("unsettled", f"not settled {self.cfg.settle_timeout:.0f} s after the faults ended: {why}")
        try:
            for line in diagnose(self.h, self.h.redis()):
                self.found.note(line)
        except Exception as exc:  # the diagnosis is a help, not a check
            self.found.note(f"no diagnosis: {type(exc).__name__}: {exc}")

    def _check(self, inj: Injector) -> None:
        h = self.h
        for s in h.services:
            if not s.running():
                self.found.add("services_exited", f"{s.name} is not running at the end")
        r = h.redis()
        with h.sim.cluster.lock:
            stats = h.sim.cluster.stats.as_json()
        jobs = load_jobs(r)
        self._jobs_figures = (len(jobs), Counter(j.state.value if j.state else "none" for j in jobs.values()))
        now = time.time()
        check_jobs(jobs, stats, inj.injected, now, self.found, h.drained)
        check_cluster(h, stats, self.found)
        if isinstance(inj, DiskInjector) and self.start is not None:
            check_disk_jobs(jobs, stats, inj.injected, inj.fills, now, self.found)
            check_disks(h, self.start, stats, inj.injected, inj.fills, self.found)
            self.storage_end = check_storages(h, self.start, stats, r, self.found)
        state = {"jobs": {j.id: {"record": {k: v for k, v in j.record.items() if k != "payload"},
                                 "events": [e.model_dump(mode="json") for e in j.events]} for j in jobs.values()},
                 "stats": stats}
        (self.workdir / "state.json").write_text(json.dumps(state, indent=1, default=str))
        h.stop_services()
        check_secrets(h, r, jobs, self.found)
        self.log_errors = log_errors(h.logdir)


def log_errors(logdir: Path) -> Counter[str]:
    """The services' error lines by logger and event (not a figure that must be zero: for reading)."""
    found: Counter[str] = Counter()
    for path in logdir.glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                if "Traceback" in line or "Error" in line:
                    found[f"(not JSON) {line[:100]}"] += 1
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
                event = re.sub(r"migrator-\S+|migrate-plan-\S+|\d+", "*", str(entry.get("event", "")))[:110]
                exc = entry.get("exception")
                kind = exc[0].get("exc_type") if isinstance(exc, list) and exc and isinstance(exc[0], dict) else ""
                found[f"{entry.get('logger')}: {event}{f' [{kind}]' if kind else ''}"] += 1
    return found


def run_one(cfg: RunConfig, workdir: Path, say: Callable[[str], None] = print) -> RunResult:
    workdir.mkdir(parents=True, exist_ok=True)
    return Run(cfg, workdir, say).execute()
