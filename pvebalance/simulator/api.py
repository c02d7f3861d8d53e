"""The /api2/json routes the simulator answers, in PVE 9's shapes (see shared notes, proxmox-api.md).

Each handler takes the request and returns the `data` payload or raises ApiError. The transport
(TLS, auth, status lines) lives in server.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import backups, ha
from .cluster import ApiError, Cluster, Guest
from .crm import motion_answer
from .permissions import Denied, Privileges
from .tasks import Task, TaskManager

BOOL_PARAMS = {"online", "with-local-disks", "restart", "force", "full", "with-conntrack-state", "errors"}


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, Any]
    user: str


@dataclass
class WithTotal:
    """A payload PVE sends with `total` beside `data` (task lists and logs)."""

    data: Any
    total: int


Handler = Callable[["Api", Request, re.Match[str]], Any]
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = []


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        ROUTES.append((method, re.compile(f"^{pattern}$"), fn))
        return fn

    return register


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """PVE takes only '0'/'1' for booleans: a 'True' is refused with a 400, as PVE does."""
    errors = {}
    out = dict(params)
    for key in BOOL_PARAMS & set(params):
        value = str(params[key])
        if value not in ("0", "1"):
            errors[key] = f"type check ('boolean') failed - got '{value}'"
        else:
            out[key] = value == "1"
    if errors:
        raise ApiError(400, "Parameter verification failed.", errors)
    return out


class Api:
    def __init__(self, cluster: Cluster, tasks: TaskManager, version: str = "9.0.10",
                 privileges: Privileges | None = None) -> None:
        self.cluster = cluster
        self.tasks = tasks
        self.version = version
        self.privileges = privileges or Privileges()  # who may do what (permissions.py); root: everything

    def handle(self, req: Request) -> Any:
        allowed_methods = []
        for method, pattern, fn in ROUTES:
            m = pattern.match(req.path)
            if m:
                if method == req.method:
                    req.params = check_params(req.params)
                    try:  # before anything is done, as PVE's handlers check
                        self.privileges.check(req.user, req.method, req.path, req.params)
                    except Denied as exc:
                        raise ApiError(403, str(exc)) from None
                    with self.cluster.lock:
                        self.tasks.crm.tick()  # the HA CRM's rounds that came due (crm.py)
                        return self.privileges.filtered(req.user, req.method, req.path, fn(self, req, m))
                allowed_methods.append(method)
        raise ApiError(501, f"Method '{req.method} {req.path}' not implemented")

    def _guest(self, m: re.Match[str]) -> Guest:
        c = self.cluster
        c.node(m["node"])
        return c.guest(int(m["vmid"]), m["node"], m["type"])


@route("GET", r"/version")
def version(api: Api, req: Request, m: re.Match[str]) -> Any:
    return {"version": api.version, "release": api.version.rsplit(".", 1)[0], "repoid": "5f1c0ffee0d15ea5"}


@route("GET", r"/access/permissions")
def permissions(api: Api, req: Request, m: re.Match[str]) -> Any:
    if req.params.get("userid") not in (None, req.user):
        raise ApiError(403, "Permission check failed (/access, Sys.Audit)")  # another's: not ours to see
    effective = api.privileges.effective(req.user)
    path = req.params.get("path")
    return effective if path is None else {path: effective.get("/", {})} if effective else {}


@route("GET", r"/cluster/status")
def cluster_status(api: Api, req: Request, m: re.Match[str]) -> Any:
    c = api.cluster
    out: list[dict[str, Any]] = [
        {"type": "cluster", "id": "cluster", "name": c.name, "nodes": len(c.nodes), "version": 5, "quorate": 1}
    ]
    for i, n in enumerate(c.nodes.values(), 1):
        out.append({"type": "node", "id": f"node/{n.name}", "name": n.name, "nodeid": i,
                    "ip": f"10.0.0.{i}", "local": int(i == 1), "online": int(n.online), "level": ""})
    return out


@route("GET", r"/cluster/resources")
def cluster_resources(api: Api, req: Request, m: re.Match[str]) -> Any:
    rtype = req.params.get("type")
    if rtype not in (None, "vm", "node", "storage", "pool", "sdn"):
        enum = "value '{}' does not have a value in the enumeration 'vm, storage, node, sdn'"
        raise ApiError(400, "Parameter verification failed.", {"type": enum.format(rtype)})
    return api.cluster.resources(rtype)


@route("GET", r"/cluster/backup")
def backup_jobs(api: Api, req: Request, m: re.Match[str]) -> Any:
    return backups.listing(api.cluster.backups)


@route("GET", r"/cluster/options")
def cluster_options(api: Api, req: Request, m: re.Match[str]) -> Any:
    return api.cluster.options


@route("GET", r"/cluster/ha/rules")
def ha_rules(api: Api, req: Request, m: re.Match[str]) -> Any:
    rtype = req.params.get("type")
    return [r for r in api.cluster.ha_rules if rtype in (None, r.get("type"))]


@route("GET", r"/cluster/ha/resources")
def ha_resources(api: Api, req: Request, m: re.Match[str]) -> Any:
    return api.cluster.ha_resources


@route("POST", r"/cluster/ha/resources/(?P<sid>[^/]+)/migrate")
def ha_resource_migrate(api: Api, req: Request, m: re.Match[str]) -> Any:
    """Queue a CRM `migrate SID NODE` and answer what blocks or comes along (no task, no error:
    a blocked request is dropped by the CRM)."""
    c = api.cluster
    target = req.params.get("node")
    if not target:
        raise ApiError(400, "Parameter verification failed.", {"node": "property is missing and it is not optional"})
    sid = m["sid"]
    if sid.isdigit():  # a bare vmid: its type decides
        g = c.guests.get(int(sid))
        if g is None:
            raise ApiError(500, f"unable to detect SID from VMID - VM/CT {sid} does not exist")
        sid = ha.sid_of(g)
    elif ":" not in sid:
        raise ApiError(500, f"unable to parse service id '{sid}'")
    guest = ha.guest_by_sid(c, sid)
    if guest is None or not c.is_ha_managed(guest):
        raise ApiError(500, f"resource '{sid}' is not HA managed")
    dependent, blocking = ha.motion_info(c, guest, api.tasks.migrating_to())
    if not blocking.get(target):
        api.tasks.crm.request(guest, str(target), dependent)
    return motion_answer(sid, str(target), dependent, blocking.get(target, []))


@route("GET", r"/cluster/ha/groups")
def ha_groups(api: Api, req: Request, m: re.Match[str]) -> Any:
    raise ApiError(500, "cannot index groups: ha groups have been migrated to rules")


@route("GET", r"/cluster/ha/status/current")
def ha_status(api: Api, req: Request, m: re.Match[str]) -> Any:
    c = api.cluster
    first = next(iter(c.nodes))
    out: list[dict[str, Any]] = [
        {"id": "quorum", "type": "quorum", "node": first, "status": "OK", "quorate": 1},
        {"id": "master", "type": "master", "node": first, "status": f"{first} (active)", "timestamp": int(time.time())},
        # pve-ha-manager 5.1.3+: the HA stack's armed state (the simulator's is never disarmed)
        {"id": "fencing", "type": "fencing", "node": first, "status": "armed (CRM watchdog active)",
         "armed-state": "armed"},
    ]
    for n in c.nodes.values():
        mode = "maintenance mode" if n.entry.get("hastate") == "maintenance" else "active"
        out.append({"id": f"lrm:{n.name}", "type": "lrm", "node": n.name,
                    "status": f"{n.name} ({mode}, {time.ctime()})", "timestamp": int(time.time())})
    for r in c.ha_resources:
        vmid = int(str(r["sid"]).split(":")[1])
        g = c.guests.get(vmid)
        if g:
            state = g.entry.get("hastate", "started")
            # the resource's config with PVE's defaults filled in (read_and_check_resources_config)
            flags = {"failback": 1, "auto-rebalance": 1, "max_relocate": 1, "max_restart": 1}
            flags.update({k: r[k] for k in (*flags, "comment") if k in r})
            out.append({"id": f"service:{r['sid']}", "type": "service", "sid": r["sid"], "node": g.node,
                        "crm_state": state, "state": state, "request_state": r.get("state", "started"),
                        "status": f"{r['sid']} ({g.node}, {state})", **flags})
    return out


@route("GET", r"/cluster/ha/status/manager_status")
def ha_manager_status(api: Api, req: Request, m: re.Match[str]) -> Any:
    return ha.manager_status(api.cluster, api.tasks.migrating_to())


@route("GET", r"/pools")
def pools(api: Api, req: Request, m: re.Match[str]) -> Any:
    poolid = req.params.get("poolid")
    if poolid:
        return [pool_detail(api, req, {"poolid": poolid})]  # type: ignore[arg-type]
    return [dict(p) for p in api.cluster.pools.values()]


@route("GET", r"/pools/(?P<poolid>[^/]+)")
def pool_detail(api: Api, req: Request, m: re.Match[str]) -> Any:
    c = api.cluster
    poolid = m["poolid"]
    if poolid not in c.pools:
        raise ApiError(500, f"pool '{poolid}' does not exist")
    members = [c.guest_entry(g) for g in c.guests.values() if g.entry.get("pool") == poolid]
    return {**c.pools[poolid], "members": members}


@route("GET", r"/nodes")
def nodes(api: Api, req: Request, m: re.Match[str]) -> Any:
    out = []
    usage = api.cluster.shown_usage()
    for n in api.cluster.nodes.values():
        e = api.cluster.node_entry(n, usage)
        e.pop("hastate", None)
        e.pop("cgroup-mode", None)
        e["ssl_fingerprint"] = "AB:CD:EF:" + ":".join(["00"] * 29)
        out.append(e)
    return out


@route("GET", r"/nodes/(?P<node>[^/]+)/status")
def node_status(api: Api, req: Request, m: re.Match[str]) -> Any:
    n = api.cluster.node(m["node"])
    e = api.cluster.node_entry(n)
    total, used = int(e["maxmem"]), int(e["mem"])
    return {
        "uptime": e.get("uptime", 0), "idle": 0, "cpu": e["cpu"], "wait": 0.0004,
        "loadavg": [f"{e['cpu'] * e['maxcpu']:.2f}"] * 3,
        "cpuinfo": {"cpus": e["maxcpu"], "cores": max(e["maxcpu"] // 2, 1), "sockets": 1,
                    "model": "Simulated CPU", "mhz": "3000.000", "hvm": "1", "user_hz": 100, "flags": "fpu",
                    **api.cluster.node_status.get(n.name, {}).get("cpuinfo", {})},
        "memory": {"total": total, "used": used, "free": total - used, "available": total - used},
        "swap": {"total": 0, "used": 0, "free": 0}, "ksm": {"shared": 0},
        "rootfs": {"total": e.get("maxdisk", 0), "used": e.get("disk", 0),
                   "free": e.get("maxdisk", 0) - e.get("disk", 0), "avail": e.get("maxdisk", 0) - e.get("disk", 0)},
        "kversion": "Linux 6.14.8-2-pve", "pveversion": f"pve-manager/{api.version}/5f1c0ffee0d15ea5",
        "boot-info": {"mode": "efi", "secureboot": 0},
    }


@route("GET", r"/nodes/(?P<node>[^/]+)/version")
def node_version(api: Api, req: Request, m: re.Match[str]) -> Any:
    api.cluster.node(m["node"])
    return version(api, req, m)


@route("GET", r"/nodes/(?P<node>[^/]+)/rrddata")
def node_rrd(api: Api, req: Request, m: re.Match[str]) -> Any:
    e = api.cluster.node_entry(api.cluster.node(m["node"]))
    varying = {"cpu": e["cpu"], "memused": e["mem"], "loadavg": e["cpu"] * e["maxcpu"],
               "pressurecpusome": 0.01, "pressureiosome": 0.005, "pressureiofull": 0.002,
               "pressurememorysome": 0.0, "pressurememoryfull": 0.0, "netin": 1e5, "netout": 1e5}
    fixed = {"maxcpu": e["maxcpu"], "memtotal": e["maxmem"], "memavailable": e["maxmem"] - e["mem"],
             "roottotal": e.get("maxdisk", 0), "rootused": e.get("disk", 0), "iowait": 0.0004,
             "swaptotal": 0, "swapused": 0, "arcsize": 0}
    return api.cluster.rrd_rows(varying, fixed, req.params.get("cf", "AVERAGE"), req.params.get("timeframe", "hour"))


@route("GET", r"/nodes/(?P<node>[^/]+)/(?P<type>qemu|lxc)")
def guest_list(api: Api, req: Request, m: re.Match[str]) -> Any:
    api.cluster.node(m["node"])
    out = []
    for g in api.cluster.guests.values():
        if g.node == m["node"] and g.type == m["type"]:
            out.append(guest_status(api.cluster, g))
    return out


def guest_status(c: Cluster, g: Guest) -> dict[str, Any]:
    e = c.guest_entry(g)
    out = {k: v for k, v in e.items() if k not in ("id", "node", "type", "hastate", "pool")}
    out["cpus"] = e.get("maxcpu", 1)
    if g.type == "qemu" and g.running:  # PVE 9 reports a running VM's pressure (avg10) here
        out.update(pressurecpusome=0.01, pressurecpufull=0.0, pressureiosome=0.0, pressureiofull=0.0,
                   pressurememorysome=0.0, pressurememoryfull=0.0)
    if g.type == "lxc":
        out["vmid"] = str(g.vmid)  # PVE quirk: a string in the lxc list
        out["type"] = "lxc"
    return out


@route("GET", r"/nodes/(?P<node>[^/]+)/(?P<type>qemu|lxc)/(?P<vmid>\d+)/status/current")
def guest_current(api: Api, req: Request, m: re.Match[str]) -> Any:
    g = api._guest(m)
    out = guest_status(api.cluster, g)
    out["vmid"] = g.vmid
    managed = api.cluster.is_ha_managed(g)
    out["ha"] = {"managed": 1, "state": g.entry.get("hastate", "started")} if managed else {"managed": 0}
    if g.type == "qemu":  # paused at a live migration's switch-over
        out["qmpstatus"] = "paused" if g.paused and g.running else g.entry.get("status")
    return out


@route("GET", r"/nodes/(?P<node>[^/]+)/(?P<type>qemu|lxc)/(?P<vmid>\d+)/config")
def guest_config(api: Api, req: Request, m: re.Match[str]) -> Any:
    return api.cluster.config(api._guest(m))


@route("GET", r"/nodes/(?P<node>[^/]+)/(?P<type>qemu|lxc)/(?P<vmid>\d+)/rrddata")
def guest_rrd(api: Api, req: Request, m: re.Match[str]) -> Any:
    e = api.cluster.guest_entry(api._guest(m))
    varying = {"cpu": e.get("cpu", 0.0), "mem": e.get("mem", 0), "netin": 1e4, "netout": 1e4,
               "diskread": 1e4, "diskwrite": 1e4, "pressurecpusome": 0.01, "pressurecpufull": 0.0,
               "pressureiosome": 0.0, "pressureiofull": 0.0, "pressurememorysome": 0.0, "pressurememoryfull": 0.0}
    fixed = {"maxcpu": e.get("maxcpu", 1), "maxmem": e.get("maxmem", 0), "disk": e.get("disk", 0),
             "maxdisk": e.get("maxdisk", 0)}
    return api.cluster.rrd_rows(varying, fixed, req.params.get("cf", "AVERAGE"), req.params.get("timeframe", "hour"))


@route("GET", r"/nodes/(?P<node>[^/]+)/(?P<type>qemu|lxc)/(?P<vmid>\d+)/migrate")
def migrate_check(api: Api, req: Request, m: re.Match[str]) -> Any:
    return api.tasks.precondition(api._guest(m), req.params.get("target"))


@route("POST", r"/nodes/(?P<node>[^/]+)/(?P<type>qemu|lxc)/(?P<vmid>\d+)/migrate")
def migrate(api: Api, req: Request, m: re.Match[str]) -> Any:
    return api.tasks.start_migration(api._guest(m), req.params, req.user)


TASK_SOURCES = ("archive", "active", "all")
TASK_STATES = ("ok", "warning", "error", "unknown")


def status_type(status: str | None) -> str:
    """PVE::UPID normalize_status_type: a running task (no status yet) is 'unknown'."""
    if not status or status == "unexpected status":
        return "unknown"
    if status == "OK":
        return "ok"
    return "warning" if re.fullmatch(r"WARNINGS: \d+", status) else "error"


@route("GET", r"/nodes/(?P<node>[^/]+)/tasks")
def task_list(api: Api, req: Request, m: re.Match[str]) -> Any:
    """Tasks.pm node_tasks: running tasks first (source active|all, status RUNNING), then finished
    ones newest first (source archive|all); `total` counts every match before start/limit."""
    api.cluster.node(m["node"])
    p = req.params
    source = p.get("source", "archive")
    if source not in TASK_SOURCES:
        enum = f"value '{source}' does not have a value in the enumeration '{', '.join(TASK_SOURCES)}'"
        raise ApiError(400, "Parameter verification failed.", {"source": enum})
    wanted = set(TASK_STATES)
    if p.get("statusfilter") and not p.get("errors"):
        wanted = {s.strip().lower() for s in re.split(r"[,;\s]+", str(p["statusfilter"])) if s.strip()}
    elif p.get("errors"):
        wanted.discard("ok")
    userfilter = str(p.get("userfilter") or "").lower()
    since, until = p.get("since"), p.get("until")

    def keep(t: Task) -> bool:
        e = t.list_entry()
        return not (
            (userfilter and userfilter not in str(e["user"]).lower())
            or (p.get("typefilter") and t.type != p["typefilter"])
            or (p.get("vmid") and t.id != str(p["vmid"]))
            or (since is not None and t.starttime < int(since))
            or (until is not None and t.starttime > int(until))
            or status_type(t.exitstatus) not in wanted
        )

    # newest first; tasks started in the same second keep the order they were created in
    on_node = [t for t in reversed(list(api.tasks.tasks.values())) if t.node == m["node"]]
    active = sorted((t for t in on_node if t.exitstatus is None), key=lambda t: -t.starttime)
    archive = sorted((t for t in on_node if t.exitstatus is not None), key=lambda t: -(t.endtime or 0))
    listed = (active if source != "archive" else []) + (archive if source != "active" else [])
    matches = [t.list_entry() for t in listed if keep(t)]
    start, limit = int(p.get("start", 0)), int(p.get("limit", 50))
    return WithTotal(matches[start : start + limit], len(matches))


@route("GET", r"/nodes/(?P<node>[^/]+)/tasks/(?P<upid>[^/]+)/status")
def task_status(api: Api, req: Request, m: re.Match[str]) -> Any:
    api.cluster.node(m["node"])  # proxied to the node: an offline one is a 595
    return api.tasks.task(m["node"], m["upid"]).status()


@route("GET", r"/nodes/(?P<node>[^/]+)/tasks/(?P<upid>[^/]+)/log")
def task_log(api: Api, req: Request, m: re.Match[str]) -> Any:
    api.cluster.node(m["node"])
    task = api.tasks.task(m["node"], m["upid"])
    start, limit = int(req.params.get("start", 0)), int(req.params.get("limit", 50))
    lines = [{"n": i + 1, "t": t} for i, t in enumerate(task.log)]
    return WithTotal(lines[start : start + limit], len(lines))
