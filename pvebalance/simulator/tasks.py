"""Proxmox tasks, and migrations as real tasks: a UPID, a lock, a duration, then the guest moves.

A migration takes PVE's fixed `BASE_SECONDS` (the tunnel, the target's QEMU, the config move), then
copies the memory of a live migration and the local disks over the source's and the target's
migration links, shared with the migrations using them at that moment (links.py), so its duration
follows what else runs; all of it is multiplied by `time_scale` so tests and demos run fast. A
migration task's checks follow qemu-server and pve-container: which are synchronous (an HTTP
error, no task) and which surface in the task (TASK ERROR).

Locks, as PVE takes them:
- qemu: the POST checks the lock (500 `VM is locked (<lock>)`, no task) and the simulator sets
  `lock: migrate` there too, so a second POST for a migrating VM is refused synchronously.
- lxc: the POST never checks the lock; it always forks a `vzmigrate` task, and the task ends
  `TASK ERROR: CT is locked (<lock>)` if the CT is locked, otherwise it sets `lock: migrate` for
  its duration. (Real PVE first waits up to 10 s for the pve-migrate-<vmid> flock a running
  migration holds; the simulator skips that wait and checks the lock at once.)
- HA-managed guests: the POST forks a `hamigrate` task that runs `ha-manager migrate`: it ends
  in error when an HA resource in negative affinity is on the target, or the guest's own
  node-affinity rule keeps it off the target (ha.py), otherwise it queues the request; a CRM
  round later the real qmigrate/vzmigrate is started on the source node as root@pam, for the
  guest and for its positive-affinity partners, unless the CRM ignores the request (guest gone,
  target offline or already current, service already migrating). The CRM's own moves (a
  resource back to its node-affinity rule's top group) are crm.py's.

A live migration (a running VM, online) holds the guest's memory on the target from the start of
the copy and on the source until the end, and pauses the guest at the switch-over (realism.py). A
stopped VM asked to migrate online is migrated offline and its task ends `WARNINGS: 1`.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import ha
from .cluster import ApiError, Cluster, Guest
from .crm import Crm
from .faults import Faults
from .links import DEFAULT_GBIT, Links, bwlimit_kib, link_rate

GIB = 2**30
BASE_SECONDS = 2.0  # PVE's own part of a migration, beside the copy: the tunnel, the target's QEMU, the config move


@dataclass
class Task:
    upid: str
    node: str
    type: str
    id: str
    user: str
    pid: int
    pstart: int
    starttime: int
    log: list[str] = field(default_factory=list)
    exitstatus: str | None = None
    endtime: int | None = None
    warnings: int = 0  # a task that succeeds with warnings ends WARNINGS: n

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "upid": self.upid, "node": self.node, "pid": self.pid, "pstart": self.pstart,
            "starttime": self.starttime, "type": self.type, "id": self.id, "user": self.user,
            "status": "running" if self.exitstatus is None else "stopped",
        }
        # Tasks.pm convert_token_task: a token's task shows user and tokenid apart (the UPID keeps both)
        if "!" in self.user:
            out["user"], out["tokenid"] = self.user.split("!", 1)
        if self.exitstatus is not None:
            out["exitstatus"] = self.exitstatus
        return out

    def list_entry(self) -> dict[str, Any]:
        """A /nodes/{node}/tasks row: a running task (from the active list) has status RUNNING."""
        out = {k: v for k, v in self.status().items() if k not in ("status", "exitstatus")}
        if self.exitstatus is None:
            out["status"] = "RUNNING"
        else:
            out.update(endtime=self.endtime, status=self.exitstatus)
        return out

    @property
    def ok(self) -> bool:
        """UPID.pm status_is_error: OK and WARNINGS: n are success."""
        return self.exitstatus is not None and (
            self.exitstatus == "OK" or self.exitstatus.startswith("WARNINGS:")
        )

    def say(self, line: str) -> None:
        self.log.append(f"{datetime.now():%Y-%m-%d %H:%M:%S} {line}")

    def warn(self, line: str) -> None:
        self.say(f"WARN: {line}")
        self.warnings += 1

    def finish(self, exitstatus: str) -> None:
        if exitstatus == "OK" and self.warnings:
            exitstatus = f"WARNINGS: {self.warnings}"
        ok = exitstatus == "OK" or exitstatus.startswith("WARNINGS: ")
        self.log.append(f"TASK {exitstatus}" if ok else f"TASK ERROR: {exitstatus}")
        self.endtime = int(time.time())
        self.exitstatus = exitstatus


@dataclass
class Migration:
    """A running qmigrate/vzmigrate task and the guest it moves."""

    task: Task
    guest: Guest
    source: str
    target: str
    params: dict[str, Any]
    ha: bool  # started by the HA stack
    started: float = field(default_factory=time.time)
    holding: bool = False  # it set the guest's lock: counted as a running migration
    copied: bool = False  # its local disks' volumes were allocated on the target
    wake: threading.Event = field(default_factory=threading.Event)  # ends the sleep early


def migration_bytes(g: Guest, local_disk_bytes: int, online: bool) -> int:
    """What a migration sends over the links: the memory of a live one, and the local disks."""
    return (int(g.entry.get("mem", 0)) if online else 0) + local_disk_bytes


def migration_seconds(g: Guest, local_disk_bytes: int, online: bool, gbit: float = DEFAULT_GBIT) -> float:
    """How long a migration takes alone on links of `gbit` Gbit/s, at time scale 1."""
    return BASE_SECONDS + migration_bytes(g, local_disk_bytes, online) / link_rate(gbit)


class TaskManager:
    def __init__(self, cluster: Cluster, faults: Faults, time_scale: float = 1.0, links: Links | None = None) -> None:
        self.cluster = cluster
        self.faults = faults
        self.time_scale = time_scale
        self.links = links if links is not None else Links(time_scale=time_scale)
        cluster.stats.links = self.links  # /_sim/stats shows each link's busy time
        self.tasks: dict[str, Task] = {}
        self.migrations: dict[str, Migration] = {}  # running ones, by UPID
        self._pids = itertools.count(os.getpid() * 16 + 1000)
        self._pstart = int(time.monotonic() * 100) & 0xFFFFFFF
        self.crm = Crm(self)  # the HA CRM's own moves (crm.py)
        # `hamigrate` requests waiting for their `ha-manager migrate`, taken in the order they came
        # (PVE queues CRM commands in order): a request made second never overtakes the first
        self.ha_queue: deque[tuple[Task, Guest, dict[str, Any]]] = deque()
        # asked before a migration task starts: True when a guard ended the task itself (disks.py)
        self.guards: list[Callable[[Task, Guest, str], bool]] = []

    def new_task(self, node: str, ttype: str, tid: str, user: str) -> Task:
        pid = next(self._pids) & 0xFFFFFFFF
        start = int(time.time())
        upid = f"UPID:{node}:{pid:08X}:{self._pstart:08X}:{start:08X}:{ttype}:{tid}:{user}:"
        task = Task(upid, node, ttype, tid, user, pid, self._pstart, start)
        self.tasks[upid] = task
        return task

    def task(self, node: str, upid: str) -> Task:
        from pvebalance.shared.proxmox import UPID_RE

        if not UPID_RE.match(upid):
            raise ApiError(400, "Parameter verification failed.", {"upid": "unable to parse worker upid"})
        task = self.tasks.get(upid)
        if task is None or task.node != node:
            raise ApiError(400, "Parameter verification failed.", {"upid": "no such task"})
        return task

    # --- migration -----------------------------------------------------------------------------

    def start_migration(self, g: Guest, params: dict[str, Any], user: str) -> str:
        """Synchronous checks, then a task; called with the cluster lock held."""
        c = self.cluster
        target = params.get("target", "")
        if not target:
            missing = {"target": "property is missing and it is not optional"}
            raise ApiError(400, "Parameter verification failed.", missing)
        if target == g.node:
            raise ApiError(400, "Parameter verification failed.", {"target": "target is local node."})
        c.node(target, require_online=False)
        if g.type == "qemu":
            if g.lock:
                raise ApiError(500, f"VM is locked ({g.lock})")
            if g.running and not params.get("online"):
                raise ApiError(500, "can't migrate running VM without --online")
        elif g.running and not (params.get("online") or params.get("restart")):
            raise ApiError(500, "can't migrate running container without --online or --restart")
        c.stats.migrate_posts[g.vmid] += 1
        if c.is_ha_managed(g):
            task = self.new_task(g.node, "hamigrate", str(g.vmid), user)
            kind = "VM" if g.type == "qemu" else "CT"
            task.say(f"Requesting HA migration for {kind} {g.vmid} to node {target}")
            self.ha_queue.append((task, g, dict(params)))
            threading.Thread(target=self._ha_request, daemon=True).start()
            return task.upid
        task = self.new_task(g.node, "qmigrate" if g.type == "qemu" else "vzmigrate", str(g.vmid), user)
        params = dict(params)
        if g.type == "qemu" and not g.running and params.get("online"):
            task.warn("VM isn't running. Doing offline migration instead.")
            params["online"] = False
        self._launch(task, g, params, ha=False)
        return task.upid

    def migrating_to(self) -> dict[int, str]:
        """Guests with a migration task running, and where to."""
        return {m.guest.vmid: m.target for m in self.migrations.values()}

    def _launch(self, task: Task, g: Guest, params: dict[str, Any], ha: bool) -> None:
        """Start a migration task (cluster lock held). A VM's lock is taken here, where the API
        checked it; a CT's task takes its lock itself once it runs."""
        if any(guard(task, g, str(params["target"])) for guard in self.guards):
            if ha:  # the LRM's migration failed: the CRM keeps the service where it is
                g.entry["hastate"] = "started"
                self.crm.moved(g.vmid)
            return
        m = Migration(task, g, g.node, str(params["target"]), params, ha)
        self.migrations[task.upid] = m
        if g.type == "qemu":
            g.config["lock"] = "migrate"
            self._hold(m)
        threading.Thread(target=self._run, args=(m,), daemon=True).start()

    def _hold(self, m: Migration) -> None:
        m.holding = True
        self.cluster.stats.started(m.guest.vmid, m.source, m.target)

    def _ha_request(self) -> None:
        """The oldest waiting `hamigrate` request runs `ha-manager migrate` (one thread per request)."""
        time.sleep(min(0.5, 0.5 * self.time_scale))
        c = self.cluster
        with c.lock:
            request, g, params = self.ha_queue.popleft()
            target = str(params["target"])
            sid = ha.sid_of(g)
            dependent, blocking = ha.motion_info(c, g, self.migrating_to())
            if blocking.get(target):  # `ha-manager migrate` refuses it and dies
                for line in ha.refusal_lines(sid, target, blocking[target]):
                    request.say(line)
                request.finish(ha.command_failed(sid, target))
                causes = sorted({"negative resource affinity" if b["cause"] == "resource-affinity" else "node affinity"
                                 for b in blocking[target]})
                c.stats.ha_requests.append({"vmid": g.vmid, "request_upid": request.upid, "target": target,
                                            "time": time.time(), "outcome": f"refused: {', '.join(causes)}",
                                            "upid": None, "blocking": [b["sid"] for b in blocking[target]]})
                return
            for p in dependent:
                request.say(f"also migrate resource '{p}' in positive affinity with resource '{sid}' "
                            f"to target node '{target}'")
            request.finish("OK")
            self.crm.command(g, target, params, request.upid, dependent)

    def ha_migrate(self, g: Guest, params: dict[str, Any]) -> str:
        """The HA LRM does the real move, as its own task on the source node, by root@pam."""
        task = self.new_task(g.node, "qmigrate" if g.type == "qemu" else "vzmigrate", str(g.vmid), "root@pam")
        g.entry["hastate"] = "migrate"
        # the HA resource agents migrate a running VM live and a running CT in restart mode
        mode = {"online": g.running} if g.type == "qemu" else {"online": False, "restart": g.running}
        self._launch(task, g, {**params, **mode}, ha=True)
        return task.upid

    def _run(self, m: Migration) -> None:
        c, g, task = self.cluster, m.guest, m.task
        error: str | None = None
        setup, pause, online, nbytes = 0.0, 0.0, False, 0
        disks: list[dict[str, Any]] = []
        with c.lock:
            if task.exitstatus is not None:  # ended before it ran (the guest was deleted)
                return
            task.say(f"starting migration of {'VM' if g.type == 'qemu' else 'CT'} {g.vmid} to node '{m.target}'")
            if not m.holding:
                error = self._take_guest(m)
            if error is None:
                disks = c.local_disks(g)
                error = self._precheck_in_task(g, m.params, disks, m.target)
                online = bool(m.params.get("online")) and g.running
                nbytes = migration_bytes(g, sum(d["size"] for d in disks), online)
            if error is None and disks:
                error = c.copy_disks(g, m.target)  # the target's volumes are allocated before the copy
                m.copied = error is None
            if error is None and online and g.type == "qemu":
                # the target QEMU starts first, with the guest's memory: both nodes hold it until the end
                task.say(f"starting VM {g.vmid} on remote node '{m.target}'")
                task.say(f"starting online/live migration on unix:/run/qemu-server/{g.vmid}.migrate")
                c.start_incoming(g, m.target)
                pause = c.realism.switchover_pause * self.time_scale
            # PVE's fixed part, then the copy over the links; the switch-over pause ends the fixed part
            setup = max(BASE_SECONDS * self.time_scale - pause, 0.0)
        if error is None and not m.wake.wait(setup):
            with c.lock:  # not for a task ended meanwhile (aborted): its flow would hold the links for nothing
                copying = task.exitstatus is None
                if copying and nbytes:
                    kib = bwlimit_kib(c.options, m.params)
                    self.links.start(task.upid, m.source, m.target, nbytes, kib * 1024 if kib else None)
            copied = copying and (not nbytes or self.links.wait(task.upid))  # False: aborted meanwhile
            if copied and pause and not m.wake.is_set():
                with c.lock:
                    if task.exitstatus is None:
                        g.paused = True  # the switch-over: the source stops, the target takes over
                m.wake.wait(pause)
        with c.lock:
            if task.exitstatus is not None:
                return
            if error is None:
                error = self.faults.task_error(g.vmid)
            self._end(m, error)

    def _take_guest(self, m: Migration) -> str | None:
        """A CT migration task's first steps (pve-container Migrate.pm prepare, phase1)."""
        g = m.guest
        if self.cluster.guests.get(g.vmid) is not g or g.node != m.source:
            return f"Configuration file 'nodes/{m.source}/lxc/{g.vmid}.conf' does not exist"
        if g.lock:
            return f"CT is locked ({g.lock})"
        g.config["lock"] = "migrate"
        self._hold(m)
        return None

    def _end(self, m: Migration, error: str | None) -> None:
        """Finish a migration task (cluster lock held): move the guest or not, release, record."""
        c, g, task = self.cluster, m.guest, m.task
        g.paused = False
        if error is None:
            if m.copied:
                c.release_disks(g, m.source)  # the source volumes go once the target's are in use
            c.move_guest(g, m.target)
            task.say(f"migration finished successfully (duration {time.time() - m.started:.1f}s)")
        else:
            if m.copied:
                c.release_disks(g, m.target)  # PVE removes the volumes it allocated on the target
            c.end_incoming(g)
            task.say(f"migration aborted: {error}")
        if m.holding:  # only the task that set the lock removes it
            g.config.pop("lock", None)
        if m.ha:
            g.entry["hastate"] = "started"
            self.crm.moved(g.vmid)
        task.finish(error or "OK")
        self.migrations.pop(task.upid, None)
        self.links.cancel(task.upid)  # an aborted copy stops using the links (a finished one is gone already)
        m.wake.set()
        c.stats.ended({"vmid": g.vmid, "type": task.type, "upid": task.upid, "user": task.user,
                       "source": m.source, "target": m.target, "start": m.started, "end": time.time(),
                       "ok": task.ok, "exitstatus": task.exitstatus, "status": task.exitstatus}, m.holding)

    def abort_guest(self, vmid: int) -> list[str]:
        """The guest was deleted by hand: its migration tasks end in error now. Their UPIDs."""
        ended = []
        for m in list(self.migrations.values()):
            if m.guest.vmid == vmid:
                kind = "qemu-server" if m.guest.type == "qemu" else "lxc"
                self._end(m, f"Configuration file 'nodes/{m.source}/{kind}/{vmid}.conf' does not exist")
                ended.append(m.task.upid)
        return ended

    def _precheck_in_task(self, g: Guest, params: dict[str, Any], disks: list[Any], target: str) -> str | None:
        c = self.cluster
        if not c.nodes[target].online:
            return f"migration aborted: target node '{target}' is not online (ssh tunnel failed)"
        if missing := c.unavailable_storages(g, target):
            return f"storage '{missing[0]}' is not available on node '{target}'"
        if g.type == "lxc":
            if g.running and params.get("online"):  # Migrate.pm prepare, even with restart
                return "lxc live migration is currently not implemented"
            return None
        local = [k for k in g.config if k.startswith(("hostpci", "usb")) and "spice" not in str(g.config[k])]
        if local and g.running:
            return f"can't migrate VM which uses local devices: {', '.join(sorted(local))}"
        if disks and not params.get("with-local-disks"):
            return "can't migrate VM - check log"
        return None

    def precondition(self, g: Guest, target: str | None) -> dict[str, Any]:
        """GET .../migrate: which nodes may take the guest, and what would be copied."""
        c = self.cluster
        if g.lock:  # both check_lock first (the CT precondition too, unlike the CT migrate POST)
            raise ApiError(500, f"{'VM' if g.type == 'qemu' else 'CT'} is locked ({g.lock})")
        not_allowed: dict[str, Any] = {}
        allowed = []
        for name, node in c.nodes.items():
            if name == g.node:
                continue
            reasons: dict[str, Any] = {}
            if not node.online:
                reasons["unavailable"] = 1
            if missing := c.unavailable_storages(g, name):  # qemu-server and pve-container both say so
                reasons["unavailable_storages"] = missing
            not_allowed[name] = reasons
            if not reasons:
                allowed.append(name)
        dependent: list[str] | None = None
        if c.is_ha_managed(g):  # HA resources in negative affinity bar their nodes (qemu-server, pve-container)
            dependent, blocking = ha.motion_info(c, g, self.migrating_to())
            for name, blockers in blocking.items():
                if name in not_allowed:
                    not_allowed[name]["blocking-ha-resources"] = blockers
                    if name in allowed:
                        allowed.remove(name)
        if g.type == "lxc":
            out = {"running": int(g.running), "allowed-nodes": allowed,
                   "not-allowed-nodes": {k: v for k, v in not_allowed.items() if v}}
        else:
            local_res = [k for k in sorted(g.config) if k.startswith(("hostpci", "usb"))]
            out = {
                "running": int(g.running), "allowed_nodes": allowed, "not_allowed_nodes": not_allowed,
                "local_disks": c.local_disks(g), "local_resources": local_res,
                "mapped-resources": [], "mapped-resource-info": {}, "has-dbus-vmstate": 1,
            }
        if dependent is not None:
            out["dependent-ha-resources"] = dependent
        return out
