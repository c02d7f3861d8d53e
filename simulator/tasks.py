"""Proxmox tasks, and migrations as real tasks: a UPID, a lock, a duration, then the guest moves.

Duration grows with the memory copied by a live migration and the local disks copied, and is
multiplied by `time_scale` so tests and demos run fast. A migration task's checks follow
qemu-server and pve-container: which are synchronous (an HTTP error, no task) and which surface in
the task (TASK ERROR).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .cluster import ApiError, Cluster, Guest
from .faults import Faults

GIB = 2**30
BASE_SECONDS = 2.0
MEM_SECONDS_PER_GIB = 1.0  # about 10 GbE for the VM state
DISK_SECONDS_PER_GIB = 5.0  # local disks copied over the migration network


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

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "upid": self.upid, "node": self.node, "pid": self.pid, "pstart": self.pstart,
            "starttime": self.starttime, "type": self.type, "id": self.id, "user": self.user,
            "status": "running" if self.exitstatus is None else "stopped",
        }
        if self.exitstatus is not None:
            out["exitstatus"] = self.exitstatus
        return out

    def list_entry(self) -> dict[str, Any]:
        out = {k: v for k, v in self.status().items() if k not in ("status", "exitstatus")}
        if self.exitstatus is not None:
            out.update(endtime=self.endtime, status=self.exitstatus)
        return out

    def say(self, line: str) -> None:
        self.log.append(f"{datetime.now():%Y-%m-%d %H:%M:%S} {line}")

    def finish(self, exitstatus: str) -> None:
        self.log.append("TASK OK" if exitstatus == "OK" else f"TASK ERROR: {exitstatus}")
        self.endtime = int(time.time())
        self.exitstatus = exitstatus


def migration_seconds(g: Guest, local_disk_bytes: int, online: bool) -> float:
    mem = int(g.entry.get("mem", 0)) if online else 0
    return BASE_SECONDS + MEM_SECONDS_PER_GIB * mem / GIB + DISK_SECONDS_PER_GIB * local_disk_bytes / GIB


class TaskManager:
    def __init__(self, cluster: Cluster, faults: Faults, time_scale: float = 1.0) -> None:
        self.cluster = cluster
        self.faults = faults
        self.time_scale = time_scale
        self.tasks: dict[str, Task] = {}
        self._pids = itertools.count(os.getpid() * 16 + 1000)
        self._pstart = int(time.monotonic() * 100) & 0xFFFFFFF

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
            task.say(f"Requesting HA migration for VM {g.vmid} to node {target}")
            threading.Thread(target=self._ha_request, args=(task, g, dict(params)), daemon=True).start()
            return task.upid
        ttype = "qmigrate" if g.type == "qemu" else "vzmigrate"
        task = self.new_task(g.node, ttype, str(g.vmid), user)
        if g.type == "qemu":
            g.config["lock"] = "migrate"
        threading.Thread(target=self._migrate, args=(task, g, dict(params)), daemon=True).start()
        return task.upid

    def _ha_request(self, request: Task, g: Guest, params: dict[str, Any]) -> None:
        time.sleep(min(0.5, 0.5 * self.time_scale))
        with self.cluster.lock:
            request.finish("OK")
            # The HA LRM does the real move later, as its own task started by root@pam.
            task = self.new_task(g.node, "qmigrate" if g.type == "qemu" else "vzmigrate", str(g.vmid), "root@pam")
            g.entry["hastate"] = "migrate"
            if g.type == "qemu":
                g.config["lock"] = "migrate"
        self._migrate(task, g, {**params, "online": g.running, "restart": 1})

    def _migrate(self, task: Task, g: Guest, params: dict[str, Any]) -> None:
        c = self.cluster
        source, target = g.node, str(params["target"])
        online = bool(params.get("online")) and g.running
        disks = c.local_disks(g)
        started = time.time()
        with c.lock:
            c.stats.started(g.vmid, source, target)
            task.say(f"starting migration of {'VM' if g.type == 'qemu' else 'CT'} {g.vmid} to node '{target}'")
        error = self._precheck_in_task(g, params, disks, target)
        if error is None:
            seconds = migration_seconds(g, sum(d["size"] for d in disks), online) * self.time_scale
            time.sleep(seconds)
            error = self.faults.task_error(g.vmid)
        with c.lock:
            if error is None:
                g.entry["node"] = target
                task.say(f"migration finished successfully (duration {time.time() - started:.1f}s)")
            else:
                task.say(f"migration aborted: {error}")
            g.config.pop("lock", None)
            if "hastate" in g.entry:
                g.entry["hastate"] = "started"
            task.finish(error or "OK")
            c.stats.ended(g.vmid, source, target, started, error is None, task.exitstatus or "")

    def _precheck_in_task(self, g: Guest, params: dict[str, Any], disks: list[Any], target: str) -> str | None:
        c = self.cluster
        if not c.nodes[target].online:
            return f"migration aborted: target node '{target}' is not online (ssh tunnel failed)"
        if g.type == "lxc":
            if g.lock:
                return f"CT is locked ({g.lock})"
            if params.get("online") and not params.get("restart"):
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
        if g.type == "qemu" and g.lock:
            raise ApiError(500, f"VM is locked ({g.lock})")
        not_allowed: dict[str, Any] = {}
        allowed = []
        for name, node in c.nodes.items():
            if name == g.node:
                continue
            reasons: dict[str, Any] = {}
            if not node.online:
                reasons["unavailable"] = 1
            not_allowed[name] = reasons
            if not reasons:
                allowed.append(name)
        if g.type == "lxc":
            return {"running": int(g.running), "allowed-nodes": allowed,
                    "not-allowed-nodes": {k: v for k, v in not_allowed.items() if v}}
        local_res = [k for k in sorted(g.config) if k.startswith(("hostpci", "usb"))]
        out: dict[str, Any] = {
            "running": int(g.running), "allowed_nodes": allowed, "not_allowed_nodes": not_allowed,
            "local_disks": c.local_disks(g), "local_resources": local_res,
            "mapped-resources": [], "mapped-resource-info": {}, "has-dbus-vmstate": 1,
        }
        if c.is_ha_managed(g):
            out["dependent-ha-resources"] = []
        return out
