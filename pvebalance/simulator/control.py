"""The /_sim control API: outside /api2/json, no auth. Tests drive faults and events through it
and read back what the simulator saw. Every answer is `{"data": ...}`; a bad request is a 400,
an unknown endpoint or guest a 404.

Endpoints (bodies are JSON, or form fields):
- GET    /_sim/stats                      the record (stats.py), see Stats.as_json
- DELETE /_sim/stats                      forget it (running migrations stay counted as running)
- GET    /_sim/realism                    how far it behaves like a busy cluster (realism.py)
- GET    /_sim/faults                     the active faults
- POST   /_sim/faults                     add one, see faults.py, e.g.
                                          {"kind": "http", "status": 503, "for_seconds": 20, "count": null}
- DELETE /_sim/faults                     remove all
- POST   /_sim/guests/VMID/lock           {"lock": "backup"} (default backup): set a config lock
- POST   /_sim/guests/VMID/unlock         remove the config lock
- POST   /_sim/guests/VMID/move           {"target": "pve3"}: moved by hand, outside the balancer
- POST   /_sim/guests/VMID/delete         destroyed by hand (as `--purge`): gone from
                                          /cluster/resources, its config and the HA resources, its
                                          volumes freed; a migration task of it ends in error (a disk
                                          move's when its copy ends). Answers {"vmid": 118, "deleted": 1,
                                          "aborted_tasks": ["UPID:..."], "freed_bytes": 34359738368}
- POST   /_sim/guests                     created by hand (`qm create` + `qm start`): {"vmid": 9001,
                                          "node": "pve2", "type": "qemu"|"lxc", "memory_mib": 2048,
                                          "cores": 2, "running": true}; no local disk; 400 when the
                                          vmid is taken or the node unknown
- POST   /_sim/guests/VMID/usage          its usage drifts: {"mem": bytes, "cpu": 0.35} (either; mem
                                          within 0..maxmem, cpu within 0..1 of its cores)
- POST   /_sim/nodes/NODE/status          {"online": false}: the node goes offline (or back online)
- POST   /_sim/nodes/NODE/maintenance     {"enable": true}: HA maintenance mode on/off
- POST   /_sim/storages/STORAGE/usage {"add_gib": 1800}: data that is no guest's volume (backups, ISO
                                          images) written to the storage, or with a negative number
                                          removed from it; its use as every node sees it (a local
                                          storage: add "node"). Answers the storage's entries
- POST   /_sim/options                    merge into datacenter.cfg, e.g. {"crs": {"ha": "static"}}

The guest and node endpoints answer the guest's /cluster/resources entry or the node's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import storages
from .cluster import ApiError, Cluster, Guest
from .disks import moves_of

if TYPE_CHECKING:
    from .server import Simulator


def flag(value: Any) -> bool:
    """JSON true/false, or a form field's "1"/"0"/"true"/"false"."""
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)


def control(sim: Simulator, method: str, path: str, body: dict[str, Any]) -> Any:
    c = sim.cluster
    parts = path.strip("/").split("/")[1:]
    with c.lock:
        if parts == ["stats"]:
            if method == "GET":
                return c.stats.as_json()
            if method == "DELETE":
                c.reset_stats()
                return None
        if parts == ["realism"] and method == "GET":
            return sim.realism.as_json()
        if parts == ["faults"]:
            if method == "POST":
                return sim.faults.add(body).as_json()
            if method == "DELETE":
                sim.faults.clear()
                return None
            if method == "GET":
                return sim.faults.as_json()
        if len(parts) == 3 and parts[0] == "guests" and parts[1].isdigit() and method == "POST":
            return guest_action(sim, int(parts[1]), parts[2], body)
        if parts == ["guests"] and method == "POST":
            return create_guest(sim, body)
        if len(parts) == 3 and parts[0] == "storages" and parts[2] == "usage" and method == "POST":
            return storage_usage(c, parts[1], body)
        if parts == ["options"] and method == "POST":  # datacenter.cfg, e.g. {"crs": {...}}
            c.options.update(body)
            return c.options
        if len(parts) == 3 and parts[0] == "nodes" and method == "POST" and parts[2] in ("status", "maintenance"):
            if parts[1] not in c.nodes:
                raise ApiError(404, f"no such node '{parts[1]}'")
            node = c.nodes[parts[1]]
            if parts[2] == "status":
                node.entry["status"] = "online" if flag(body.get("online", True)) else "offline"
            else:
                node.entry["hastate"] = "maintenance" if flag(body.get("enable", True)) else "online"
            return c.node_entry(node)
    raise ApiError(404, f"no control endpoint {method} {path}")


def guest_action(sim: Simulator, vmid: int, action: str, body: dict[str, Any]) -> Any:
    c = sim.cluster
    g: Guest | None = c.guests.get(vmid)
    if g is None:
        raise ApiError(404, f"no such guest {vmid}")
    if action == "lock":
        g.config["lock"] = body.get("lock", "backup")
    elif action == "unlock":
        g.config.pop("lock", None)
    elif action == "move":
        target = str(body.get("target", ""))
        if target not in c.nodes:
            raise ApiError(400, f"no such cluster node '{target}'")
        c.move_guest(g, target)
    elif action == "usage":
        set_usage(c, g, body)
    elif action == "delete":
        aborted = sim.tasks.abort_guest(vmid)
        freed = storages.free_guest_volumes(c, g, moves_of(sim.tasks).kept)
        c.delete_guest(vmid)
        return {"vmid": vmid, "deleted": 1, "aborted_tasks": aborted, "freed_bytes": freed}
    else:
        raise ApiError(404, f"no control endpoint POST /_sim/guests/{vmid}/{action}")
    return c.guest_entry(g)


def _number(body: dict[str, Any], key: str, low: float, high: float, default: float | None = None) -> float | None:
    value = body.get(key, default)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{key}: a number, got {value!r}") from None
    if not low <= number <= high:
        raise ApiError(400, f"{key}: {number:g} is outside {low:g}..{high:g}")
    return number


def create_guest(sim: Simulator, body: dict[str, Any]) -> Any:
    """A new guest, as `qm create` (or `pct create`) and a start leave it, without local disks."""
    c = sim.cluster
    if "vmid" not in body:
        raise ApiError(400, "vmid: required")
    vmid = int(_number(body, "vmid", 100, 999_999_999) or 0)
    node = str(body.get("node", ""))
    gtype = str(body.get("type", "qemu"))
    if vmid in c.guests:
        raise ApiError(400, f"VM {vmid} already exists")
    if node not in c.nodes:
        raise ApiError(400, f"no such cluster node '{node}'")
    if gtype not in ("qemu", "lxc"):
        raise ApiError(400, f"type: qemu or lxc, got {gtype!r}")
    mib = int(_number(body, "memory_mib", 16, 4 * 2**20, 2048) or 0)
    cores = int(_number(body, "cores", 1, 512, 2) or 1)
    running = flag(body.get("running", True))
    name = str(body.get("name") or f"{'vm' if gtype == 'qemu' else 'ct'}{vmid}")
    maxmem = mib * 2**20
    entry: dict[str, Any] = {"id": f"{gtype}/{vmid}", "type": gtype, "vmid": vmid, "name": name, "node": node,
                             "status": "running" if running else "stopped", "maxmem": maxmem,
                             "mem": maxmem // 2 if running else 0, "maxcpu": cores, "cpu": 0.1 if running else 0,
                             "maxdisk": 0, "disk": 0, "template": 0, "uptime": 1 if running else 0}
    config = {"name": name, "memory": str(mib), "cores": cores} if gtype == "qemu" else \
        {"hostname": name, "memory": mib, "cores": cores}
    c.guests[vmid] = Guest(entry=entry, config=config)
    c.note_mem()
    return c.guest_entry(c.guests[vmid])


def storage_usage(c: Cluster, storage: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Data outside the guests' volumes written to or removed from a storage (its use never below 0)."""
    entries = [s for s in c.storages if s["storage"] == storage]
    if not entries:
        raise ApiError(404, f"no such storage '{storage}'")
    node = str(body.get("node") or entries[0]["node"])
    if not any(s["node"] == node for s in entries):
        raise ApiError(400, f"storage '{storage}' is not on node '{node}'")
    gib = _number(body, "add_gib", -1e9, 1e9)
    if gib is None:
        raise ApiError(400, "add_gib: required")
    storages.add_usage(c, storage, node, int(gib * 2**30))
    return [dict(s) for s in c.storages if s["storage"] == storage]


def set_usage(c: Cluster, g: Guest, body: dict[str, Any]) -> None:
    """The guest uses more or less memory and CPU from now on (its node's figures follow, lagging)."""
    if not g.running:
        raise ApiError(400, f"guest {g.vmid} is not running")
    mem = _number(body, "mem", 0, int(g.entry.get("maxmem", 0)))
    cpu = _number(body, "cpu", 0, 1)
    if mem is not None:
        g.entry["mem"] = int(mem)
        g.entry.pop("memhost", None)  # derived from mem from now on (Guest.memhost)
    if cpu is not None:
        g.entry["cpu"] = cpu
    c.note_mem()
