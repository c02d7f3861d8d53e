"""`move-disk`: one disk of a guest to another storage, on the node the guest is on: a VM's through
`POST /nodes/{node}/qemu/{vmid}/move_disk` (task `qmmove`; a running VM's disk moves online), a
container's through `.../lxc/{vmid}/move_volume` (task `move_volume`; PVE refuses a running
container's volume, so the plan never moves one and the check skips one that runs now). Always with
`delete=1`: PVE frees the source volume only after the copy succeeded, so a failure anywhere leaves the
disk where it was.

The check reads the guest's config on its node (still there, not locked, no snapshots, the disk still
on its source storage) and the node's storages (the target active, holding the content, and with room:
its use plus this disk plus the other disk moves onto it, in flight or holding its slot, at most
`storage_balancing.max_usage` %).
After the task the config must name the target storage for the disk and the source volume must be gone
from the source storage's content.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, computed_field, model_validator

from pvebalance.shared import keys
from pvebalance.shared.logging import get_logger
from pvebalance.shared.message import GuestType, MigrationReason, guest_id
from pvebalance.shared.proxmox_errors import MALFORMED, ProxmoxError

from .base import ActionBase, Cleared, Executor, Failed, Gone, Job, Kind, Skip, config_missing

if TYPE_CHECKING:
    from pvebalance.shared.config import Settings
    from pvebalance.shared.jobrecord import JobRecord

log = get_logger("pvebalance.migrator")

MOVE_TASKS = ("qmmove", "move_volume")


def volume_of(line: Any) -> str | None:
    """The volume id a config's disk line names (`nfs1:100/vm-100-disk-0.qcow2,size=32G` -> its first part)."""
    if not isinstance(line, str) or ":" not in line.split(",", 1)[0]:
        return None
    return line.split(",", 1)[0]


def storage_of(volume: str) -> str:
    return volume.split(":", 1)[0]


class DiskMove(ActionBase):
    """A plan's action of kind `move-disk`: one disk to another storage, `POST /nodes/{node}/qemu/{vmid}/move_disk`
    (disk, storage) for a VM, `.../lxc/{vmid}/move_volume` (volume, storage) for a container."""

    kind: Literal["move-disk"] = "move-disk"
    vmid: int
    guest_type: GuestType
    name: str = ""
    node: str = Field(description="the node the guest is on: PVE runs the move there")
    disk: str = Field(description="the config key: scsi0, efidisk0, rootfs, mp1, ...")
    source: str = Field(description="storage id it is on")
    target: str = Field(description="storage id it moves to")
    size: int = Field(description="bytes: the config's size=, what the target must hold")
    batch: int = Field(0, ge=0, description="moves of one batch may run at once; a batch starts when the one "
                       "before it has ended (the source's space counts as free only then)")
    after: list[int] = Field(default_factory=list, description="the plan's actions (their indexes) it waits for: "
                             "the disk moves of the batch before its own, its guest's earlier action")

    noun: ClassVar[str] = "disk move"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def target_storage(self) -> str:
        """`target` under the name a reader of a plan's JSON looks for (the storage the disk moves to)."""
        return self.target

    @model_validator(mode="before")
    @classmethod
    def _target_storage_is_target(cls, data: Any) -> Any:
        """A move read back carries `target_storage` (the name above): it is `target`, not a field of its own."""
        if isinstance(data, dict) and "target_storage" in data:
            data = dict(data)
            named = data.pop("target_storage")
            data.setdefault("target", named)
        return data

    def guest(self) -> str:
        return guest_id(self.guest_type, self.vmid)

    def describe(self) -> str:
        return f"guest {self.vmid} ({self.name}) disk {self.disk} {self.source} -> {self.target}"

    @property
    def gib(self) -> float:
        return self.size / 2**30


class DiskMoveJob(Job):
    """One disk of a guest to another storage (`source` and `target` are storage ids), on `node`."""

    action: ClassVar[str] = "move-disk"
    changes_config: ClassVar[bool] = True
    kind: Literal["disk-move-job"] = "disk-move-job"
    reason: MigrationReason = MigrationReason.STORAGE
    node: str
    disk: str
    size: int = Field(0, description="bytes the target must hold")
    bwlimit_mib: float | None = Field(None, description="MiB/s passed to PVE (storage_balancing.bwlimit)")

    @staticmethod
    def id_for(plan_id: str, vmid: int, disk: str) -> str:
        return f"move-disk-{plan_id}-{vmid}-{disk}"

    @classmethod
    def id_of(cls, plan_id: str, action: DiskMove, step: int) -> str:
        return cls.id_for(plan_id, action.vmid, action.disk)

    @classmethod
    def of(cls, plan_id: str, action: DiskMove, step: int, settings: Settings) -> DiskMoveJob:
        d = action
        return cls(job_id=cls.id_for(plan_id, d.vmid, d.disk), plan_id=plan_id, vmid=d.vmid, name=d.name,
                   guest_type=d.guest_type, source=d.source, target=d.target, node=d.node, disk=d.disk,
                   size=d.size, bwlimit_mib=settings.storage_balancing.bwlimit)

    def slot_scopes(self) -> list[str]:
        # the cluster-wide limit counts every job; each storage takes part in at most so many moves
        return [keys.SLOTS_CLUSTER, keys.slots_storage(self.source), keys.slots_storage(self.target)]

    def copied_bytes(self) -> int:
        return self.size

    @property
    def needs_node(self) -> str:
        return self.node  # PVE moves the disk on the node the guest is on

    def describe(self) -> str:
        return f"move {self.guest_type.value} {self.vmid} {self.disk} {self.source} -> {self.target}"

    metric_stem: ClassVar[str] = "disk_move"
    metric_labels: ClassVar[tuple[str, ...]] = ("node", "disk", "storage", "target")

    def metric_values(self) -> list[str]:
        return [self.node, self.disk, self.source, self.target]


class MoveDisk(Executor[DiskMoveJob]):
    def _guest_path(self, job: DiskMoveJob) -> str:
        return f"/nodes/{job.node}/{job.guest_type.value}/{job.vmid}"

    def _config(self, job: DiskMoveJob) -> dict[str, Any]:
        path = f"{self._guest_path(job)}/config"
        try:
            config = self.client.get(path)
        except ProxmoxError as exc:
            if config_missing(exc):
                raise Gone(f"guest {job.vmid} is no longer on {job.node}") from None
            raise
        if not isinstance(config, dict):
            raise ProxmoxError(f"{path}: the answer is not an object", kind=MALFORMED)
        return config

    def _source_volume(self, job: DiskMoveJob, config: dict[str, Any]) -> str:
        volume = volume_of(config.get(job.disk))
        if volume is None:
            raise Gone(f"guest {job.vmid} has no disk {job.disk} any more")
        where = storage_of(volume)
        if where == job.target:
            raise Gone(f"disk {job.disk} of {job.vmid} is already on {job.target}")
        if where != job.source:
            raise Gone(f"disk {job.disk} of {job.vmid} was moved to {where} since the plan was made")
        return volume

    def look_ahead(self, job: DiskMoveJob) -> None:
        try:
            self._source_volume(job, self.ctx.api(lambda: self._config(job), 0.0))
        except Gone:
            raise
        except (Skip, Failed, ProxmoxError) as exc:
            log.debug("look-ahead check: checked again once a slot is free", reason=str(exc))

    def check(self, job: DiskMoveJob, patience: float, resumed: bool = False) -> Cleared:
        deadline = time.monotonic() + self.settings.migrator.task_timeout_base
        while True:
            checked: tuple[Cleared, str | None] = self.ctx.api(lambda: self._checked(job), patience)
            cleared, lock = checked
            if not lock:
                return cleared
            if time.monotonic() > deadline:
                raise Failed(f"guest {job.vmid} stayed locked ({lock})")
            log.info("guest is locked by another task, waiting", lock=lock)
            self.ctx.sleep(self.settings.migrator.poll_interval)

    def _checked(self, job: DiskMoveJob) -> tuple[Cleared, str | None]:
        config = self._config(job)
        volume = self._source_volume(job, config)
        if config.get("parent"):
            raise Skip(f"guest {job.vmid} has snapshots: PVE moves no disk a snapshot uses with delete=1")
        if job.guest_type is GuestType.LXC:
            status = self.client.get(f"{self._guest_path(job)}/status/current")
            if isinstance(status, dict) and status.get("status") == "running":
                raise Skip(f"container {job.vmid} runs: PVE moves no volume of a running container")
        self._target_room(job)
        params: dict[str, Any] = {"storage": job.target, "delete": 1}
        params["disk" if job.guest_type is GuestType.QEMU else "volume"] = job.disk
        if job.bwlimit_mib:
            params["bwlimit"] = int(job.bwlimit_mib * 1024)  # PVE takes KiB/s
        known = {str(t["upid"]) for t in self.tasks(job)}
        lock = config.get("lock")
        return Cleared(params, known, keep={"source_volume": volume}), str(lock) if lock else None

    def _target_room(self, job: DiskMoveJob) -> None:
        path = f"/nodes/{job.node}/storage"
        answer = self.client.get(path)
        if not isinstance(answer, list):
            raise ProxmoxError(f"{path}: the answer is not a list", kind=MALFORMED)
        entry = next((s for s in answer if isinstance(s, dict) and s.get("storage") == job.target), None)
        if entry is None:
            raise Gone(f"storage {job.target} is not on {job.node} any more")
        content = str(entry.get("content", "")).split(",")
        wanted = "images" if job.guest_type is GuestType.QEMU else "rootdir"
        if not entry.get("active", 1) or wanted not in content:
            raise Skip(f"storage {job.target} is not active on {job.node} or holds no {wanted}")
        try:
            total, used = int(entry["total"]), int(entry["used"])
        except (KeyError, TypeError, ValueError):
            raise ProxmoxError(f"{path}: storage {job.target} has no usable figures", kind=MALFORMED) from None
        arriving = self.ctx.redis(lambda: self._arriving(job))
        limit = self.settings.storage_balancing.max_usage
        if total <= 0 or 100.0 * (used + arriving + job.size) / total > limit:
            raise Skip(f"storage {job.target} no longer has room for {job.disk} of {job.vmid} "
                       f"(it would be above max_usage {limit:g} %)")

    def _arriving(self, job: DiskMoveJob) -> int:
        """Bytes on their way onto the job's target: the other moves in flight there, and those that hold a
        place in its slot set without having POSTed yet (checked, or being checked, now: two moves checked at
        once must each count the other, or both pass where there is room for one). Each counts in full (a
        copy allocates its volume when it starts: counted twice at worst, which errs on the safe side)."""
        store = self.ctx.store
        moves = {(m.vmid, m.disk): m.size for m in store.in_flight_disk_moves(job.job_id) if m.target == job.target}
        holders = {h.decode() if isinstance(h, bytes) else str(h)
                   for h in store.redis.zrangebyscore(keys.slots_storage(job.target), time.time(), "+inf")}
        for record in store.load_many(sorted(holders - {job.job_id})):
            other = record.job
            if record.live and isinstance(other, DiskMoveJob) and other.target == job.target:
                moves[other.vmid, other.disk] = other.size
        return sum(moves.values())

    def path(self, job: DiskMoveJob) -> str:
        return f"{self._guest_path(job)}/{'move_disk' if job.guest_type is GuestType.QEMU else 'move_volume'}"

    def tasks(self, job: DiskMoveJob) -> list[dict[str, Any]]:
        answer = self.client.get(f"/nodes/{job.node}/tasks", vmid=job.vmid, source="all", limit=50)
        if not isinstance(answer, list):
            raise ProxmoxError(f"task list of {job.node}: the answer is not a list", kind=MALFORMED)
        ours = [t for t in answer if isinstance(t, dict) and t.get("type") in MOVE_TASKS
                and str(t.get("id")) == str(job.vmid) and t.get("upid")]
        return sorted(ours, key=lambda t: float(t.get("starttime", 0)))

    def _on(self, job: DiskMoveJob) -> str | None:
        volume = volume_of(self.ctx.api(lambda: self._config(job)).get(job.disk))
        return storage_of(volume) if volume else None

    def done(self, job: DiskMoveJob) -> bool:
        return self._on(job) == job.target

    def verify(self, job: DiskMoveJob, upid: str, ok: bool, exitstatus: str, record: JobRecord) -> str | None:
        try:
            where = self._on(job)
        except Gone:
            raise Failed(f"guest {job.vmid} is no longer on {job.node}; its disk {job.disk} was not seen "
                         f"on {job.target}") from None
        if where != job.target:
            if not ok:
                raise Failed(exitstatus or "task ended without an exit status")
            raise Failed(f"task {upid} ended {exitstatus} but disk {job.disk} of {job.vmid} is on {where}")
        if not ok:
            log.warning("task did not end OK but the disk is on its target", exitstatus=exitstatus)
        source = record.fields.get("source_volume")
        return self._source_note(job, source) if source else None

    def _source_note(self, job: DiskMoveJob, volume: str) -> str | None:
        """What to say of the source volume once the disk is on its target: nothing when it is gone. A
        garbled answer is read again (within the patience before a POST); never a reason to fail a job
        whose disk has moved."""
        path = f"/nodes/{job.node}/storage/{job.source}/content"

        def content() -> list[Any]:
            answer = self.client.get(path, vmid=job.vmid)
            if not isinstance(answer, list):
                raise ProxmoxError(f"{path}: the answer is not a list", kind=MALFORMED)
            return answer

        try:
            answer = self.ctx.api(content, self.settings.migrator.task_timeout_base)
        except ProxmoxError as exc:
            log.warning("the source volume could not be looked for", volume=volume, error=exc.message)
            return f"the source volume {volume} on {job.source} was not looked for: {exc.message}"
        if any(isinstance(v, dict) and v.get("volid") == volume for v in answer):
            log.warning("the source volume was not freed", volume=volume)
            return f"the source volume {volume} is still on {job.source}: PVE did not free it"
        return None

    def succeeded(self, job: DiskMoveJob) -> str:
        return f"disk {job.disk} of {job.name or job.vmid} is on {job.target}"


KIND = Kind(action=DiskMove, job=DiskMoveJob, executor=MoveDisk)
