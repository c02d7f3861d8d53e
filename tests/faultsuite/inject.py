"""Faults at random moments from a seeded random.Random. Every fault is printed with its time and
recorded (what, when, until when, which guest or node, and a tag `#n` that any message it makes
Proxmox answer carries), so a failing run can be replayed and the checks can tell a job's reason
from the fault behind it."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pvebalance.simulator import faults as sim_faults
from pvebalance.simulator.cluster import Guest
from pvebalance.simulator.server import Simulator

from .harness import Harness, alive, ours

KINDS = (
    "worker_kill", "horse_kill", "planner_kill", "collector_kill", "redis_restart", "redis_outage",
    "http_500", "http_503", "http_401", "malformed", "task_answer", "timeout", "slow", "task_error",
    "guest_lock", "guest_move", "node_offline", "guest_delete",
)
# Beyond one of each kind, faults are drawn with these weights (cheap, frequent ones first).
EXTRA = {
    "http_503": 3, "http_500": 2, "timeout": 2, "malformed": 2, "task_answer": 2, "task_error": 2, "guest_lock": 2,
    "guest_move": 2, "slow": 1, "http_401": 1, "node_offline": 1, "horse_kill": 1, "worker_kill": 1,
    "redis_restart": 1, "planner_kill": 1, "collector_kill": 1,
}
PROCESS_FAULTS = ("worker_kill", "horse_kill", "planner_kill", "collector_kill", "redis_restart", "redis_outage")
API_FAULTS = ("http_500", "http_503", "http_401", "malformed", "task_answer", "timeout", "slow")
# What a task status read may answer instead of a task status (HTTP 200, PVE's envelope): seen live as
# {"data": null}; the others are the shapes a proxy, a PVE bug or a half-written task file could give.
NOT_A_TASK_STATUS: tuple[Any, ...] = (None, None, [], "", {"upid": "?"}, {"status": "stopped"})


@dataclass
class Features:
    """What the simulator offers now (another engineer adds some of it); the suite falls back."""

    for_seconds: bool
    malformed: bool
    data: bool
    delay_after: bool
    delete: bool
    peak_mem_ratio: bool
    migrate_requests: bool

    @classmethod
    def of(cls, sim: Simulator) -> Features:
        fault_fields = set(getattr(sim_faults.Fault, "__dataclass_fields__", {}))
        kinds = set(getattr(sim_faults, "KINDS", ()))
        return cls(for_seconds="for_seconds" in fault_fields, malformed="malformed" in kinds, data="data" in kinds,
                   delay_after="when" in fault_fields, delete=hasattr(sim.tasks, "abort_guest"),
                   peak_mem_ratio=hasattr(sim.cluster.stats, "peak_mem_ratio"),
                   migrate_requests=hasattr(sim.cluster.stats, "migrate_requests"))

    def describe(self) -> str:
        return ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in vars(self).items())


@dataclass
class Injected:
    n: int
    kind: str
    at: float  # time.time()
    detail: str
    until: float | None = None  # when its effect ends; None: at once
    vmid: int | None = None
    node: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return f"#{self.n}"

    def active(self, start: float, end: float) -> bool:
        """Did its effect overlap [start, end]?"""
        return self.at <= end and (self.until or self.at) >= start


class Injector:
    """A migration run's faults; a disk-move run's (inject_disks.py) aim at disk moves instead."""

    kinds: tuple[str, ...] = KINDS
    extra: dict[str, int] = EXTRA
    post_path = "/migrate$"  # the task-starting POST that API faults stand in front of

    def __init__(self, h: Harness, rng: random.Random, t0: float, say: Callable[[str], None],
                 outage_seconds: float = 60.0) -> None:
        self.h, self.sim, self.rng, self.t0, self.say = h, h.sim, rng, t0, say
        self.features = Features.of(h.sim)
        self.outage_seconds = outage_seconds
        self.injected: list[Injected] = []
        self.skipped: list[str] = []
        self.pending: list[tuple[float, int, str, Callable[[], object]]] = []
        self._seq = itertools.count()
        self.down: set[str] = set()  # services killed by us, waiting for their replacement
        self.locked: dict[int, str] = {}
        self.offline: set[str] = set()
        self.deletes = 0
        self.outages = 0
        self.draining = False

    # --- the deck, and time -----------------------------------------------------------------------

    def deck(self, n: int, outage: bool) -> tuple[list[str], list[str]]:
        """The faults of the rebalance and of the drain: every kind once (as far as the simulator
        offers it), then weighted extras, shuffled and dealt out about evenly; the 60 s Redis
        outage, at most once, early in the drain, when most of its jobs are queued or in flight."""
        kinds = [k for k in self.kinds if k != "redis_outage" and self.offered(k)]
        extra = [k for k in self.extra if self.offered(k)]
        cards = kinds + self.rng.choices(extra, [self.extra[k] for k in extra], k=max(n - len(kinds), 0))
        self.rng.shuffle(cards)
        split = round(len(cards) * 0.45)
        first, second = cards[:split], cards[split:]
        if outage:
            second.insert(self.rng.randint(1, min(4, len(second))), "redis_outage")
        return first, second

    def offered(self, kind: str) -> bool:
        return {"malformed": self.features.malformed, "task_answer": self.features.data,
                "guest_delete": self.features.delete}.get(kind, True)

    def work_in_flight(self) -> bool:
        """Whether the work the faults aim at is under way now; a migration run does not wait for it."""
        return True

    def rel(self, t: float | None = None) -> str:
        return f"t+{(t if t is not None else time.time()) - self.t0:6.1f}s"

    def later(self, delay: float, label: str, fn: Callable[[], object]) -> None:
        heapq.heappush(self.pending, (time.time() + delay, next(self._seq), label, fn))

    def run_due(self, everything: bool = False) -> None:
        while self.pending and (everything or self.pending[0][0] <= time.time()):
            _, _, label, fn = heapq.heappop(self.pending)
            try:
                said = fn()
                self.say(f"{self.rel()}   {label}{said if isinstance(said, str) else ''}")
            except Exception as exc:  # keep the run going; say what could not be undone
                self.say(f"{self.rel()}   {label} FAILED: {type(exc).__name__}: {exc}")
                if everything:
                    raise

    def finish(self) -> None:
        """Undo everything: faults cleared, pending restarts/unlocks/nodes back done now."""
        self.sim.faults.clear()
        self.run_due(everything=True)
        for node in list(self.offline):
            self.sim.control("POST", f"/_sim/nodes/{node}/status", {"online": True})
        self.h.redis_start()

    # --- injecting --------------------------------------------------------------------------------

    def inject(self, kind: str) -> Injected | None:
        n = len(self.injected) + 1
        fault: Injected | None = getattr(self, f"_{kind}")(n)
        if fault is None:
            return None
        self.injected.append(fault)
        until = f" until {self.rel(fault.until)}" if fault.until else ""
        self.say(f"{self.rel(fault.at)} fault #{n} {kind}: {fault.detail}{until}")
        return fault

    def _lifetime(self, seconds: float, count_instead: int) -> dict[str, Any]:
        if self.features.for_seconds:
            return {"for_seconds": round(seconds, 2), "count": None}
        return {"count": count_instead}

    def _target(self) -> tuple[str | None, str | None]:
        """Which requests an API fault stands in front of: (method, path regex)."""
        choice = self.rng.choice(["all", "migrate", "migrate", "resources", "tasks", "cluster", "ticket"])
        return {
            "all": (None, None),
            "migrate": (self.rng.choice([None, "GET", "POST"]), self.post_path),
            "resources": ("GET", "^/cluster/resources$"),
            "tasks": ("GET", "/tasks"),
            "cluster": ("GET", "^/cluster/(status|options|ha/)"),
            "ticket": ("POST", "^/access/ticket$"),
        }[choice]

    def _api_fault(self, n: int, kind: str, spec: dict[str, Any], seconds: float | None) -> Injected:
        method, path = spec.get("method"), spec.get("path")
        self.sim.faults.add(spec)
        now = time.time()
        # without for_seconds a counted fault may linger until its count is used up
        until = now + seconds if seconds is not None and self.features.for_seconds else now + 30
        where = f"{method or 'ANY'} {path or '(every path)'}"
        shown = {k: v for k, v in spec.items() if k not in ("kind", "method", "path")}
        return Injected(n, kind, now, f"{where} {shown}", until, spec=spec)

    def _http(self, n: int, status: int, message: str, seconds: float) -> Injected:
        method, path = self._target()
        spec = {"kind": "http", "status": status, "message": message, "method": method, "path": path,
                **self._lifetime(seconds, self.rng.randint(3, 30))}
        return self._api_fault(n, f"http_{status}", {k: v for k, v in spec.items() if v is not None or k == "count"},
                               seconds)

    def _http_500(self, n: int) -> Injected:
        refusal = self.rng.random() < 0.3  # a refusal PVE means (no retry changes it), else transient
        message = f"can't migrate VM - simulated refusal #{n}" if refusal else f"simulated failure #{n}"
        return self._http(n, 500, message, self.rng.uniform(2, 8))

    def _http_503(self, n: int) -> Injected:
        return self._http(n, 503, f"simulated unavailable #{n}", self.rng.uniform(2, 10))

    def _http_401(self, n: int) -> Injected:
        return self._http(n, 401, f"Authentication failed! #{n}", self.rng.uniform(1, 4))

    def _malformed(self, n: int) -> Injected | None:
        variant = self.rng.choice(["html", "html", "truncate", "json"])
        seconds = self.rng.uniform(2, 6)
        if variant == "truncate":  # the POST is carried out, its answer breaks off half way
            spec: dict[str, Any] = {"kind": "malformed", "method": "POST", "path": self.post_path, "truncate": True,
                                    "count": self.rng.randint(1, 2)}
            return self._api_fault(n, "malformed", spec, None)
        method, path = self._target()
        body = None if variant == "html" else '{"data": [{"vmid": 1'
        spec = {"kind": "malformed", "method": method, "path": path, "body": body,
                **self._lifetime(seconds, self.rng.randint(2, 20))}
        return self._api_fault(n, "malformed", {k: v for k, v in spec.items() if v is not None or k == "count"},
                               seconds)

    def _task_answer(self, n: int) -> Injected:
        """Task status reads answered `{"data": <not a task status>}` for a few seconds: the migrations
        run on meanwhile, and their jobs must wait them out (no job may end, no slot be freed)."""
        seconds = self.rng.uniform(2, 10)
        spec = {"kind": "data", "method": "GET", "path": r"^/nodes/[^/]+/tasks/[^/]+/status$",
                "data": self.rng.choice(NOT_A_TASK_STATUS), **self._lifetime(seconds, self.rng.randint(5, 40))}
        return self._api_fault(n, "task_answer", spec, seconds)

    def _timeout(self, n: int) -> Injected | None:
        seconds = round(self.h.api_timeout + self.rng.uniform(0.5, 2.5), 2)
        if self.features.delay_after and self.rng.random() < 0.5:
            # the migration starts, but its answer comes after the client gave up
            spec: dict[str, Any] = {"kind": "delay", "method": "POST", "path": self.post_path, "seconds": seconds,
                                    "when": "after", "count": 1}
        else:
            method, path = self._target()
            spec = {"kind": "delay", "method": method, "path": path, "seconds": seconds,
                    "count": self.rng.randint(1, 4)}
            spec = {k: v for k, v in spec.items() if v is not None}
        return self._api_fault(n, "timeout", spec, None)

    def _slow(self, n: int) -> Injected:
        seconds = self.rng.uniform(3, 10)
        spec = {"kind": "delay", "seconds": round(self.rng.uniform(0.2, 1.0), 2),
                **self._lifetime(seconds, self.rng.randint(10, 40))}
        return self._api_fault(n, "slow", spec, seconds)

    def _task_error(self, n: int) -> Injected:
        with self.sim.cluster.lock:
            migrating = sorted(g.vmid for g in self.sim.cluster.guests.values() if g.lock == "migrate")
        return self._failing_task(n, "task_error", migrating, f"migration aborted (simulated task error #{n})",
                                  "migrating now", "the next migration task to end")

    def _failing_task(self, n: int, kind: str, busy: list[int], message: str, busy_words: str,
                      next_words: str) -> Injected:
        """A task that ends in error with `message`: mostly one of the `busy` guests' running now, else the
        next of its kind to end."""
        vmid = self.rng.choice(busy) if busy and self.rng.random() < 0.6 else None
        self.sim.faults.add({"kind": kind, "vmid": vmid, "message": message})
        what = f"guest {vmid} ({busy_words})" if vmid else next_words
        return Injected(n, kind, time.time(), f"{what}: {message!r}", time.time() + 60, vmid=vmid,
                        spec={"message": message})

    # --- the cluster ------------------------------------------------------------------------------

    def _guests(self, prefer: float) -> list[int]:
        """Unlocked guests, mostly those the next jobs move (cluster lock held)."""
        guests = [g for g in self.sim.cluster.guests.values() if not g.lock]
        next_ones = self.next_moved(guests)
        pool = next_ones if next_ones and self.rng.random() < prefer else guests
        return sorted(g.vmid for g in pool)

    def next_moved(self, guests: list[Guest]) -> list[Guest]:
        """Of these guests, those the planner moves next: the ones on the node it moves guests off."""
        return [g for g in guests if g.node == self.h.drained]

    def _guest_lock(self, n: int) -> Injected | None:
        c = self.sim.cluster
        with c.lock:
            candidates = self._guests(0.8)
            if not candidates:
                return None
            vmid = self.rng.choice(candidates)
            lock = self.rng.choice(["backup", "backup", "snapshot"])
            self.sim.control("POST", f"/_sim/guests/{vmid}/lock", {"lock": lock})
            self.locked[vmid] = lock
        hold = self.rng.uniform(1, 10)

        def unlock() -> None:
            with c.lock:
                g = c.guests.get(vmid)
                if g is not None and g.lock == lock:
                    self.sim.control("POST", f"/_sim/guests/{vmid}/unlock", {})
            self.locked.pop(vmid, None)

        self.later(hold, f"guest {vmid} unlocked (fault #{n})", unlock)
        return Injected(n, "guest_lock", time.time(), f"guest {vmid} locked ({lock}) as by a backup",
                        time.time() + hold, vmid=vmid)

    def _guest_move(self, n: int) -> Injected | None:
        c = self.sim.cluster
        with c.lock:
            candidates = self._guests(0.7)
            if not candidates:
                return None
            vmid = self.rng.choice(candidates)
            source = c.guests[vmid].node
            targets = [x for x in self.h.nodes if x != source and c.nodes[x].online
                       and not (self.draining and x == self.h.drained)]
            if not targets:
                return None
            target = self.rng.choice(targets)
            self.sim.control("POST", f"/_sim/guests/{vmid}/move", {"target": target})
        return Injected(n, "guest_move", time.time(), f"guest {vmid} moved by hand {source} -> {target}",
                        vmid=vmid, node=target, spec={"source": source})

    def _guest_delete(self, n: int) -> Injected | None:
        if self.deletes >= 1:
            return None
        c = self.sim.cluster
        with c.lock:
            pool = sorted(g.vmid for g in self.next_moved(list(c.guests.values()))) or sorted(c.guests)
            vmid = self.rng.choice(pool)
            state = c.guests[vmid].lock or "idle"
            answer = self.sim.control("POST", f"/_sim/guests/{vmid}/delete", {})
        self.deletes += 1
        return Injected(n, "guest_delete", time.time(), f"guest {vmid} ({state}) destroyed by hand: {answer}",
                        vmid=vmid)

    def _node_offline(self, n: int) -> Injected | None:
        if self.offline:
            return None
        node = self.rng.choices(self.h.nodes, [1 if x == self.h.drained else 3 for x in self.h.nodes])[0]
        self.sim.control("POST", f"/_sim/nodes/{node}/status", {"online": False})
        self.offline.add(node)
        back = self.rng.uniform(3, 12)

        def online() -> None:
            self.sim.control("POST", f"/_sim/nodes/{node}/status", {"online": True})
            self.offline.discard(node)

        self.later(back, f"node {node} back online (fault #{n})", online)
        return Injected(n, "node_offline", time.time(), f"node {node} offline", time.time() + back, node=node)

    # --- processes --------------------------------------------------------------------------------

    def _restart_later(self, n: int, name: str) -> None:
        self.down.add(name)
        service = self.h.service(name)

        def restart() -> str:
            service.start()
            self.down.discard(name)
            return f", pid {service.pid}"

        self.later(self.rng.uniform(0.5, 2.0), f"{name} replaced (fault #{n})", restart)

    def _kill_service(self, n: int, kind: str, name: str) -> Injected | None:
        service = self.h.service(name)
        if not service.running():
            return None
        pid = service.pid
        service.kill()
        self._restart_later(n, name)
        return Injected(n, kind, time.time(), f"SIGKILL {name} pid {pid}")

    def _planner_kill(self, n: int) -> Injected | None:
        return self._kill_service(n, "planner_kill", "planner")

    def _collector_kill(self, n: int) -> Injected | None:
        return self._kill_service(n, "collector_kill", "collector")

    def _worker_kill(self, n: int) -> Injected | None:
        running = [w for w in self.h.migrators() if w.running() and w.name not in self.down]
        if not running:
            return None
        busy = {w.name: (h, job) for w, h, job in self.h.horses()}
        # mostly a busy worker: that is where a kill can lose or double a migration
        pool = [w for w in running if w.name in busy] if busy and self.rng.random() < 0.8 else running
        worker = self.rng.choice(pool)
        # 'cgroup': the worker and its work-horse die together (a crash; systemd kills the unit's
        # cgroup); 'alone': only the worker (the OOM killer), its work-horse carries on orphaned.
        mode = self.rng.choice(["cgroup", "cgroup", "alone"])
        horse, job = busy.get(worker.name, (None, None))
        pid = worker.pid
        worker.kill()
        if horse is not None:
            if mode == "cgroup":
                with contextlib.suppress(OSError):
                    os.kill(horse, signal.SIGKILL)
            else:
                self.h.orphans.add(horse)
        self._restart_later(n, worker.name)
        doing = f", its work-horse {horse} running {job or 'a job'}" if horse else ", idle"
        return Injected(n, "worker_kill", time.time(), f"SIGKILL {worker.name} pid {pid} ({mode}){doing}")

    def _horse_kill(self, n: int) -> Injected | None:
        deadline = time.time() + 3
        while True:
            horses = [(w, h, job) for w, h, job in self.h.horses() if w.name not in self.down]
            in_flight = [x for x in horses if x[2] and self._job_state(x[2]) == "running"]
            if in_flight or (horses and time.time() > deadline - 1.5):
                break
            if time.time() > deadline:
                return None
            time.sleep(0.1)
        worker, horse, job = self.rng.choice(in_flight or horses)
        state = self._job_state(job) if job else None
        if not (alive(horse) and ours(horse)):
            return None
        os.kill(horse, signal.SIGKILL)
        return Injected(n, "horse_kill", time.time(),
                        f"SIGKILL work-horse {horse} of {worker.name} running {job or 'a job'} ({state or '?'})")

    def _job_state(self, job_id: str) -> str | None:
        try:
            raw = self.h.redis().hget(f"pvebalance:job:{job_id}", "state")
        except Exception:
            return None
        return raw.decode() if raw else None

    def _redis_restart(self, n: int) -> Injected | None:
        if not self.h.redis_up():
            return None
        hard = self.rng.random() < 0.5
        self.h.redis_kill(hard)
        gap = self.rng.uniform(0.3, 2.0)
        self.later(gap, f"redis-server started again from its append-only file (fault #{n})", self.h.redis_start)
        how = "SIGKILL" if hard else "SIGTERM"
        return Injected(n, "redis_restart", time.time(), f"redis-server stopped ({how})", time.time() + gap)

    def _redis_outage(self, n: int) -> Injected | None:
        if not self.h.redis_up() or self.outages:
            return None
        self.outages += 1
        self.h.redis_kill(hard=False)
        self.later(self.outage_seconds, f"redis-server back after {self.outage_seconds:.0f} s (fault #{n})",
                   self.h.redis_start)
        return Injected(n, "redis_outage", time.time(), f"redis-server down for {self.outage_seconds:.0f} s",
                        time.time() + self.outage_seconds)
