"""Moving a guest's disk to another storage: `POST .../qemu/VMID/move_disk` and `.../lxc/VMID/move_volume`.

What PVE does, read in its API code (qemu-server e6352be, 2026-08, src/PVE/API2/Qemu.pm move_vm_disk;
pve-container 94f5585, 2026-06, src/PVE/API2/LXC.pm move_volume and PVE/LXC.pm copy_volume/alloc_disk;
pve-guest-common AbstractConfig.pm):
- VM (task `qmmove`): before forking, the handler checks `VM is locked (<lock>)`, `disk 'X' does not
  exist`, `disk 'X' has no associated volume`, `you can't move a cdrom`, `you can't move to the same
  storage with same format`, the storage (`storage 'S' does not exist`, `storage 'S' is not available
  on node 'N'`), a 400 on `storage` when it lacks content `images`, and `you can't move a disk with
  snapshots and delete the source`. A running VM's disk moves (drive-mirror), a template's too (the
  new volume becomes a base volume). The task runs inside the config's flock (lock_config, 10 s to
  get it) and sets NO `lock:` in the config: a migration of the VM meanwhile ends `migration aborted`
  (its log: `can't lock file '/var/lock/qemu-server/lock-ID.conf' - got timeout`) and so does a
  second move's task. Errors in the copy end `storage migration failed: ...`, after PVE freed the
  volumes it allocated; `cannot move TPM state while VM is running` is one of them.
- CT (task `move_volume`): the handler checks `CT is locked (<lock>)`, `cannot move volumes of a
  running container` (so a running CT's volume never moves), `cannot move volume 'unusedN', only
  configured volumes can be moved to another storage` and the snapshot rule, then sets `lock: disk`
  before forking; the task removes it. The storage is checked only in the task (`storage 'S' does
  not exist`, `content type 'rootdir' is not available or configured on storage 'S'`), and the same
  storage is not refused (the volume is copied to a new one there).
- Both: `delete=0` (the default) keeps the source as the first free `unusedN:` line; `delete=1`
  frees it only after the copy succeeded. New volumes are named as the storage plugins name them:
  `S:vm-ID-disk-N` on block storages, `S:ID/vm-ID-disk-N.FMT` on file storages (dir, NFS, CIFS...),
  N the lowest number free for that guest on that storage. `bwlimit` (KiB/s) caps the copy, else
  datacenter.cfg `bwlimit: move=...` or `default=...`. PVE also accepts `target-vmid` (giving a disk
  to another guest) and `target-disk`/`target-volume`/`target-digest`: not modelled, refused as a
  parameter error.

The simulator's model: the target volume is allocated (the storage's usage grows) when the copy
starts; the copy takes `MOVE_BASE_SECONDS` plus the size over the storages' throughput (each
storage `STORAGE_GBIT`, shared fairly by the moves using it, links.py), all times time_scale. A
target that cannot hold the disk fills up and the copy fails `No space left on device` there; a
`disk_error` fault (faults.py) fails the copy half way, or, added while the copy runs, at its end.
A failed copy frees the target volume and leaves the source and the config as they were.
Simplifications: a migration meeting a VM's held flock fails at once (PVE waits 10 s first); a second
move of the VM does wait, up to 10 s x time_scale.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from . import storages
from .api import Api, Request, route
from .cluster import ApiError, Cluster, Guest, _bytes
from .links import GIB, Links
from .storages import FORMATS
from .tasks import Task, TaskManager

STORAGE_GBIT = 10.0  # each storage's throughput for disk copies, as a 10 Gbit/s link carries it
MOVE_BASE_SECONDS = 1.0  # PVE's own part of a move at time scale 1: allocate, start and finish the copy
FLOCK_SECONDS = 10.0  # lock_config's timeout
VM_KEYS = ([f"ide{i}" for i in range(4)] + [f"sata{i}" for i in range(6)] + [f"scsi{i}" for i in range(31)]
           + [f"virtio{i}" for i in range(16)] + ["efidisk0", "tpmstate0"])
CT_KEYS = ["rootfs"] + [f"mp{i}" for i in range(256)]
UNUSED = [f"unused{i}" for i in range(256)]
NOT_MODELLED = ("target-vmid", "target-disk", "target-volume", "target-digest")


@dataclass
class DiskMove:
    task: Task
    guest: Guest
    node: str
    key: str  # the config key: scsi0, rootfs, mp1, unused0 ...
    line: str  # the config line as it was
    source: str  # storage ids
    target: str
    size: int  # bytes
    delete: bool
    fmt: str  # the new volume's format
    cap: float | None  # bytes a second at time scale 1 (bwlimit), or None
    asked: bool = False  # the format was the caller's
    started: float = field(default_factory=time.time)
    new_volid: str | None = None
    allocated: int = 0  # bytes of the new volume on the target storage

    @property
    def volid(self) -> str:
        return self.line.split(",", 1)[0]


class DiskMoves:
    """The running disk moves of one simulated cluster (all state under the cluster lock)."""

    def __init__(self, tasks: TaskManager, gbit: float = STORAGE_GBIT) -> None:
        self.tasks = tasks
        self.cluster: Cluster = tasks.cluster
        self.scale = tasks.time_scale
        self.io = Links(default_gbit=gbit, time_scale=tasks.time_scale)  # endpoints are storages here
        self.running: dict[str, DiskMove] = {}
        self.flocked: set[int] = set()  # VMs whose config flock a qmmove holds
        self.kept: dict[str, int] = {}  # sizes of the source volumes moves left as unusedN (no size= there)
        self.freed = threading.Condition(self.cluster.lock)
        tasks.guards.append(self.refuse_migration)

    # --- the POSTs -----------------------------------------------------------------------------

    def start(self, g: Guest, node: str, params: dict[str, Any], user: str, held: frozenset[str]) -> str:
        vm = g.type == "qemu"
        key_name = "disk" if vm else "volume"
        key, storage, delete = _checked_params(params, key_name, VM_KEYS if vm else CT_KEYS, vm)
        if "Datastore.AllocateSpace" not in held:
            raise ApiError(403, f"Permission check failed (/storage/{storage}, Datastore.AllocateSpace)")
        c = self.cluster
        kind = "VM" if vm else "CT"
        if g.lock:
            raise ApiError(500, f"{kind} is locked ({g.lock})")
        if not vm and g.running:
            raise ApiError(500, "cannot move volumes of a running container")
        if not vm and key.startswith("unused"):
            raise ApiError(500, f"cannot move volume '{key}', only configured volumes can be moved to another storage")
        if params.get("digest") and params["digest"] != c.config(g)["digest"]:
            raise ApiError(500, "detected modified configuration - file changed by other user? Try again.")
        line = g.config.get(key)
        if not isinstance(line, str) or not line:
            # (pve-container parses the missing volume as undef and Perl stops there)
            raise ApiError(500, f"disk '{key}' does not exist" if vm else
                           "Can't use an undefined value as a HASH reference")
        volid, *options = line.split(",")
        if vm and not volid:
            raise ApiError(500, f"disk '{key}' has no associated volume")
        if vm and ("media=cdrom" in options or volid in ("none", "cdrom")):
            raise ApiError(500, "you can't move a cdrom")
        source = volid.split(":", 1)[0] if ":" in volid else ""
        fmt = params.get("format") or storages.format_of(volid)
        if vm:
            if source == storage and (not params.get("format") or params["format"] == storages.format_of(volid)):
                raise ApiError(500, "you can't move to the same storage with same format")
            entry = storages.checked_entry(c, storage, node)  # storage_check_enabled: synchronous for a VM
            if not storages.holds(entry, "images"):
                raise ApiError(400, "Parameter verification failed.",
                               {"storage": f"storage '{storage}' does not support vm images"})
        if delete and g.config.get("parent"):  # a snapshot exists (the config's `parent`): it uses the volume
            what = "disk" if vm else "volume"
            raise ApiError(500, f"you can't move a {what} with snapshots and delete the source")
        kib = _move_limit_kib(c.options, params)
        task = self.tasks.new_task(node, "qmmove" if vm else "move_volume", str(g.vmid), user)
        size = next((_bytes(o[5:]) for o in options if o.startswith("size=")), 0)
        move = DiskMove(task, g, node, key, line, source, storage, size, delete, fmt, kib * 1024 if kib else None,
                        asked=bool(params.get("format")))
        if not vm:
            g.config["lock"] = "disk"  # set before the fork; the task removes it
        self.running[task.upid] = move
        threading.Thread(target=self._run, args=(move,), daemon=True, name=f"disk-move-{g.vmid}").start()
        return task.upid

    # --- the task ------------------------------------------------------------------------------

    def _run(self, m: DiskMove) -> None:
        c, g, task, vm = self.cluster, m.guest, m.task, m.guest.type == "qemu"
        fail_after: float | None = None  # bytes copied when the copy breaks off
        error_text = ""
        with c.lock:
            if vm:
                error = self._take_flock(m)
                if error:
                    self._end(m, error, flocked=False)
                    return
            error = self._in_task_checks(m)
            if error is None:
                task.say(f"copying volume '{m.volid}' from current storage '{m.source}' to target storage "
                         f"'{m.target}'" if vm else f"moving volume '{m.key}' of CT {g.vmid} to storage '{m.target}'")
                reserved = [mv.new_volid for mv in self.running.values() if mv.new_volid]
                m.new_volid = storages.next_volid(c, g, m.target, m.node, m.fmt if vm else "raw", reserved)
                if vm:
                    task.say(f"create full clone of drive {m.key} ({m.volid})")
                # a thin volume: what the copy can write before the storage is full
                m.allocated = min(m.size, storages.free_bytes(c, m.target, m.node))
                storages.add_usage(c, m.target, m.node, m.allocated)
                task.say(f"allocated target volume '{m.new_volid}'" if vm else
                         f"Formatting '{m.new_volid}' with size {_human(m.size)}")
                fault = self.tasks.faults.disk_error(g.vmid)
                if fault is not None:
                    fail_after, error_text = m.size / 2, fault
                elif m.allocated < m.size:
                    fail_after, error_text = float(m.allocated), self._no_space(m)
                c.stats.disk_move_started()
                self._note_parallel()
        if error is not None:
            with c.lock:
                self._end(m, error)
            return
        nbytes = m.size if fail_after is None else fail_after
        time.sleep(MOVE_BASE_SECONDS * self.scale)
        source, target = storages.endpoint(c, m.source, m.node), storages.endpoint(c, m.target, m.node)
        self.io.start(task.upid, source, target, nbytes, m.cap)
        self.io.wait(task.upid)
        with c.lock:
            late = self.tasks.faults.disk_error(g.vmid) if fail_after is None else None
            if late is not None:  # a disk_error fault added while this copy ran breaks it off
                self._end(m, late)
            elif fail_after is not None:
                self._end(m, error_text)
            elif c.guests.get(g.vmid) is not g:  # destroyed by hand meanwhile
                self._end(m, f"Configuration file 'nodes/{m.node}/{'qemu-server' if vm else 'lxc'}/{g.vmid}.conf' "
                             "does not exist")
            else:
                self._end(m, None)

    def _take_flock(self, m: DiskMove) -> str | None:
        """lock_config: wait for the VM's config flock up to 10 s (x time_scale), then hold it."""
        deadline = time.monotonic() + FLOCK_SECONDS * self.scale
        while m.guest.vmid in self.flocked:
            left = deadline - time.monotonic()
            if left <= 0:
                return f"can't lock file '/var/lock/qemu-server/lock-{m.guest.vmid}.conf' - got timeout"
            self.freed.wait(left)
        self.flocked.add(m.guest.vmid)
        return None

    def _in_task_checks(self, m: DiskMove) -> str | None:
        """What the task finds once it runs (for a VM, load_and_check_move again under the flock)."""
        g, vm = m.guest, m.guest.type == "qemu"
        line = g.config.get(m.key)
        if self.cluster.guests.get(g.vmid) is not g or not isinstance(line, str):
            return f"disk '{m.key}' does not exist" if vm else "Can't use an undefined value as a HASH reference"
        if vm and g.lock:
            return f"VM is locked ({g.lock})"
        if line != m.line:  # a move that waited for the flock moves the disk from where the one before left it
            m.line, m.source = line, line.split(",", 1)[0].partition(":")[0]
            m.size = next((_bytes(o[5:]) for o in line.split(",")[1:] if o.startswith("size=")), 0)
            if not m.asked:
                m.fmt = storages.format_of(m.volid)
            if vm and m.source == m.target and (not m.asked or m.fmt == storages.format_of(m.volid)):
                return "you can't move to the same storage with same format"
        try:
            entry = storages.checked_entry(self.cluster, m.target, m.node)
        except ApiError as exc:
            return exc.message
        if entry.get("status", "available") != "available":
            return f"storage '{m.target}' is not online"
        if not vm and not storages.holds(entry, "rootdir"):
            return f"content type 'rootdir' is not available or configured on storage '{m.target}'"
        if not vm and ":" not in m.volid:
            return "cannot copy volumes of type bind"
        if vm and m.key == "tpmstate0" and g.running:
            return "cannot move TPM state while VM is running"
        if vm and m.fmt not in storages.formats(entry):
            if m.asked:  # clone_disk warns only about a format the caller asked for
                m.task.warn(f"format '{m.fmt}' is not supported by the target storage '{m.target}' - "
                            "using 'raw' instead")
            m.fmt = "raw"
        return None

    def _end(self, m: DiskMove, error: str | None, flocked: bool = True) -> None:
        """Finish the task (cluster lock held): the config and the storages as PVE leaves them."""
        c, g, task, vm = self.cluster, m.guest, m.task, m.guest.type == "qemu"
        if error is None and m.new_volid is not None:
            options = [o for o in m.line.split(",")[1:] if not o.startswith("format=")]  # print_drive drops it
            g.config[m.key] = ",".join([m.new_volid, *options])
            if m.delete:
                task.say(f"removing source volume '{m.volid}' after successful copy")
                storages.add_usage(c, m.source, m.node, -m.size)
            else:
                unused = next(k for k in UNUSED if k not in g.config)
                g.config[unused] = m.volid
                self.kept[m.volid] = m.size
                task.say(f"adding source volume '{m.volid}' as '{unused}' to config")
        elif m.allocated:
            storages.add_usage(c, m.target, m.node, -m.allocated)  # PVE frees the volume it allocated
        if not vm and g.config.get("lock") == "disk":
            g.config.pop("lock", None)
        if vm and flocked:
            self.flocked.discard(g.vmid)
            self.freed.notify_all()
        if error is not None and vm and not error.startswith("can't lock file"):
            error = f"storage migration failed: {error}"
        task.finish(error or "OK")
        if m.new_volid is not None:  # its copy had started
            c.stats.disk_move_ended()
        self.running.pop(task.upid, None)
        self.io.cancel(task.upid)
        c.stats.disk_moves.append({
            "vmid": g.vmid, "type": task.type, "upid": task.upid, "user": task.user, "node": m.node,
            "disk": m.key, "from": m.source, "to": m.target, "volid": m.volid, "new_volid": m.new_volid,
            "delete": m.delete, "start": m.started, "end": time.time(), "ok": task.ok,
            "exitstatus": task.exitstatus, "gib": round(m.size / GIB, 3),
        })

    # --- what it refuses meanwhile ------------------------------------------------------------

    def refuse_migration(self, task: Task, g: Guest, target: str) -> bool:
        """A migration task of a VM whose config flock a move holds: it cannot get the flock
        (QemuMigrate lock_vm) and ends, as PVE ends it after 10 s (cluster lock held)."""
        if g.type != "qemu" or g.vmid not in self.flocked:
            return False
        task.say(f"migration aborted (duration 00:00:10): can't lock file '/var/lock/qemu-server/lock-{g.vmid}.conf'"
                 " - got timeout")
        task.finish("migration aborted")
        now = time.time()
        self.cluster.stats.ended({"vmid": g.vmid, "type": task.type, "upid": task.upid, "user": task.user,
                                  "source": g.node, "target": target, "start": now, "end": now, "ok": False,
                                  "exitstatus": task.exitstatus, "status": task.exitstatus}, False)
        return True

    def _no_space(self, m: DiskMove) -> str:
        if m.guest.type == "lxc":
            m.task.say(f"rsync: [receiver] write failed on \"/var/lib/lxc/{m.guest.vmid}/.copy-volume-1\": "
                       "No space left on device (28)")
            return ("command 'rsync --stats -X -A --numeric-ids -aH --whole-file --sparse --one-file-system "
                    f"/var/lib/lxc/{m.guest.vmid}/.copy-volume-2/ /var/lib/lxc/{m.guest.vmid}/.copy-volume-1' "
                    "failed: exit code 11")
        if m.guest.running:
            return f"mirroring error: drive-{m.key}: No space left on device (io-status: nospace)"
        return f"copy failed: qemu-img: error while writing at byte {m.allocated}: No space left on device"

    def _note_parallel(self) -> None:
        """The most moves at once that read from or wrote to each storage (cluster lock held)."""
        using: Counter[str] = Counter()
        for move in self.running.values():
            if move.new_volid is not None:
                using.update({move.source, move.target})
        peak = self.cluster.stats.max_disk_moves_per_storage
        for storage, n in using.items():
            peak[storage] = max(peak[storage], n)


def _checked_params(params: dict[str, Any], key_name: str, keys: list[str], vm: bool) -> tuple[str, str, bool]:
    """PVE's parameter checks, as 400 `Parameter verification failed.` with one error per field."""
    errors: dict[str, str] = {}
    for name in NOT_MODELLED:
        if params.get(name) not in (None, ""):
            errors[name] = "not modelled by the simulator (reassigning a disk to another guest)"
    key = str(params.get(key_name) or "")
    if not key:
        errors[key_name] = "property is missing and it is not optional"
    elif key not in keys + UNUSED:
        errors[key_name] = f"value '{key}' does not have a value in the enumeration '{', '.join(keys + UNUSED)}'"
    storage = str(params.get("storage") or "")
    if not storage and "target-vmid" not in errors:
        msg = "both 'storage' and 'target-vmid' missing, either needs to be set"
        errors.update({"target-vmid": msg, "storage": msg})
    delete = str(params.get("delete", "0"))
    if delete not in ("0", "1"):
        errors["delete"] = f"type check ('boolean') failed - got '{delete}'"
    if vm and params.get("format") not in (None, "", *FORMATS):
        errors["format"] = f"value '{params['format']}' does not have a value in the enumeration 'raw, qcow2, vmdk'"
    if not vm and params.get("format") not in (None, ""):
        errors["format"] = "property is not defined in schema and the schema does not allow additional properties"
    bwlimit = params.get("bwlimit")
    if bwlimit not in (None, ""):
        try:
            value = int(str(bwlimit)) if vm else float(str(bwlimit))
        except ValueError:
            errors["bwlimit"] = f"type check ('{'integer' if vm else 'number'}') failed - got '{bwlimit}'"
        else:
            if value < 0:
                errors["bwlimit"] = "value must have a minimum value of 0"
    if errors:
        raise ApiError(400, "Parameter verification failed.", errors)
    return key, storage, delete == "1"


def _move_limit_kib(options: dict[str, Any], params: dict[str, Any]) -> float | None:
    """PVE's get_bandwidth_limit('move'): the call's bwlimit (0: none), else datacenter.cfg's
    `bwlimit: move=N` or `default=N` (KiB/s); None: no cap."""
    if params.get("bwlimit") not in (None, ""):
        return float(params["bwlimit"]) or None
    raw = options.get("bwlimit")
    limits = dict(raw) if isinstance(raw, dict) else \
        dict(p.split("=", 1) for p in raw.split(",") if "=" in p) if isinstance(raw, str) else {}
    for name in ("move", "default"):
        if limits.get(name) not in (None, ""):
            return float(limits[name]) or None
    return None


def _human(nbytes: int) -> str:
    return f"{nbytes / GIB:.1f} GiB"


_MOVES: weakref.WeakKeyDictionary[TaskManager, DiskMoves] = weakref.WeakKeyDictionary()


def moves_of(tasks: TaskManager) -> DiskMoves:
    """The cluster's disk moves, made when first needed (cluster lock held)."""
    if tasks not in _MOVES:
        _MOVES[tasks] = DiskMoves(tasks)
    return _MOVES[tasks]


@route("POST", r"/nodes/(?P<node>[^/]+)/(?P<type>qemu)/(?P<vmid>\d+)/move_disk")
@route("POST", r"/nodes/(?P<node>[^/]+)/(?P<type>lxc)/(?P<vmid>\d+)/move_volume")
def move_disk(api: Api, req: Request, m: re.Match[str]) -> Any:
    held = api.privileges.of(req.user)
    if "VM.Config.Disk" not in held:  # the method's schema check, before anything else
        raise ApiError(403, f"Permission check failed (/vms/{m['vmid']}, VM.Config.Disk)")
    return moves_of(api.tasks).start(api._guest(m), m["node"], req.params, req.user, held)
