"""A disk-move job carried out by the job runner in this process: real proxmoxer over HTTPS against the
simulator's move_disk/move_volume, fakeredis for the job store. Where the disk is afterwards is read from
the simulator's own API (the config line and the storage's content), never through pvebalance's parsers.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from proxmoxer import ProxmoxAPI
from redis import Redis

from pvebalance.services.collector.collector import Collector
from pvebalance.services.migrator.runner import JobRunner
from pvebalance.services.migrator.slots import SlotRequest, Slots
from pvebalance.shared import keys
from pvebalance.shared.jobs import DiskMoveJob, JobState
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import GuestType
from pvebalance.shared.proxmox import ProxmoxClient
from pvebalance.simulator.server import Simulator
from tests.helpers import SimFactory, settings_for
from tests.unit.test_simulator import raw_api

GIB = 2**30
QUIET = {"figure_lag": 0, "host_variation": 0, "latency_ms": 0, "workers": 0, "switchover_pause": 0}
# storage-3: vm108 (running, on pve3) and ct139 (stopped, on pve1) each have a 400 GiB disk on nfs-a (90 %)
VM, CT = (108, "pve3", "scsi0", GuestType.QEMU), (139, "pve1", "rootfs", GuestType.LXC)


def setup(start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path,
          **sections: dict[str, Any]) -> tuple[Simulator, ProxmoxAPI, JobRunner, JobStore]:
    sim = start_simulator("storage-3", time_scale=0.002, **QUIET)
    settings = settings_for(sim, "redis://unused", tmp_path, **sections)
    store = JobStore(fake_redis)
    slots = Slots(fake_redis, settings.migrator, store, per_storage=settings.storage_balancing.max_parallel_per_storage)
    return sim, raw_api(sim), JobRunner(ProxmoxClient(settings.proxmox_api), store, slots, settings), store


def disk_job(store: JobStore, guest: tuple[int, str, str, GuestType], target: str = "nfs-b",
             plan_id: str = "plan-d") -> DiskMoveJob:
    vmid, node, disk, gtype = guest
    job = DiskMoveJob(job_id=DiskMoveJob.id_for(plan_id, vmid, disk), plan_id=plan_id, vmid=vmid, name=f"g{vmid}",
                      guest_type=gtype, source="nfs-a", target=target, node=node, disk=disk, size=400 * GIB)
    assert store.create(job)
    return job


def volume(api: ProxmoxAPI, guest: tuple[int, str, str, GuestType]) -> str:
    vmid, node, disk, gtype = guest
    line: str = getattr(api.nodes(node), gtype.value)(vmid).config.get()[disk]
    return line.split(",")[0]


def volumes_on(api: ProxmoxAPI, node: str, storage: str, vmid: int) -> set[str]:
    return {v["volid"] for v in api.nodes(node).storage(storage).content.get(vmid=vmid)}


def used(api: ProxmoxAPI, storage: str) -> int:
    return next(int(e["disk"]) for e in api.cluster.resources.get(type="storage") if e["storage"] == storage)


@pytest.mark.parametrize("guest, task", [(VM, "qmmove"), (CT, "move_volume")], ids=["vm move_disk", "ct move_volume"])
def test_a_disk_moves_to_its_target_storage_once_and_its_source_volume_is_freed(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path, guest: Any, task: str) -> None:
    sim, api, runner, store = setup(start_simulator, fake_redis, tmp_path)
    vmid, node, _, _ = guest
    source = volume(api, guest)
    job = disk_job(store, guest)
    assert runner.run(job) is JobState.SUCCEEDED
    assert volume(api, guest).startswith("nfs-b:")
    assert source not in volumes_on(api, node, "nfs-a", vmid), "delete=1: the source volume is gone"
    assert f":{task}:{vmid}:" in (store.load(job.job_id).upid or "")
    assert len(sim.cluster.stats.disk_move_requests) == 1
    events = [e for _, e in store.events() if e.job_id == job.job_id]
    assert [e.state for e in events] == [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]
    assert {(e.action, e.source, e.target) for e in events} == {("move-disk", "nfs-a", "nfs-b")}


def test_a_copy_that_breaks_off_fails_and_leaves_the_disk_and_the_storages_as_they_were(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path) -> None:
    sim, api, runner, store = setup(start_simulator, fake_redis, tmp_path)
    sim.faults.add({"kind": "disk_error", "vmid": VM[0], "message": "mirroring error: drive-scsi0: Input/output error"})
    source, before = volume(api, VM), (used(api, "nfs-a"), used(api, "nfs-b"))
    job = disk_job(store, VM)
    assert runner.run(job) is JobState.FAILED
    assert "Input/output error" in store.load(job.job_id).message
    assert volume(api, VM) == source and source in volumes_on(api, VM[1], "nfs-a", VM[0])
    assert (used(api, "nfs-a"), used(api, "nfs-b")) == before


@pytest.mark.parametrize("change, words", [
    (lambda sim: sim.cluster.guests[CT[0]].entry.update(status="running"), "runs"),
    (lambda sim: sim.cluster.guests[CT[0]].config.update(parent="before-upgrade"), "snapshots"),
], ids=["running container", "snapshots"])
def test_a_move_pve_would_refuse_is_skipped_without_a_request(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path, change: Any, words: str) -> None:
    sim, _, runner, store = setup(start_simulator, fake_redis, tmp_path)
    change(sim)
    job = disk_job(store, CT)
    assert runner.run(job) is JobState.SKIPPED
    assert words in store.load(job.job_id).message
    assert sim.cluster.stats.disk_move_requests == []


def test_a_disk_already_moved_by_hand_is_skipped(start_simulator: SimFactory, fake_redis: Redis,
                                                  tmp_path: Path) -> None:
    sim, api, runner, store = setup(start_simulator, fake_redis, tmp_path)
    vmid, node, disk, _ = VM
    upid = api.nodes(node).qemu(vmid).move_disk.post(disk=disk, storage="nfs-c", delete=1)
    while api.nodes(node).tasks(upid).status.get()["status"] != "stopped":
        pass
    job = disk_job(store, VM)
    assert runner.run(job) is JobState.SKIPPED
    assert "moved to nfs-c" in store.load(job.job_id).message
    assert len(sim.cluster.stats.disk_move_requests) == 1, "only the operator's own"


def test_a_target_that_would_pass_max_usage_is_skipped(start_simulator: SimFactory, fake_redis: Redis,
                                                      tmp_path: Path) -> None:
    # nfs-b: 9,000 GiB at 50.6 %; 400 GiB more is 55.0 %, above a max_usage of 54
    sim, _, runner, store = setup(start_simulator, fake_redis, tmp_path, storage_balancing={"max_usage": 54})
    job = disk_job(store, VM)
    assert runner.run(job) is JobState.SKIPPED
    assert "max_usage 54 %" in store.load(job.job_id).message
    assert sim.cluster.stats.disk_move_requests == []


def test_two_disk_moves_onto_one_storage_never_hold_its_slot_at_once(fake_redis: Redis, tmp_path: Path) -> None:
    from pvebalance.shared.config import MigratorSettings

    slots = Slots(fake_redis, MigratorSettings(max_parallel_cluster=4), per_storage=1)
    store = JobStore(fake_redis)
    first, second = disk_job(store, VM, "nfs-c", "plan-1"), disk_job(store, CT, "nfs-c", "plan-2")
    elsewhere = DiskMoveJob(job_id="move-disk-x", plan_id="x", vmid=1, name="x", guest_type=GuestType.QEMU,
                            source="nfs-b", target="nfs-d", node="pve1", disk="scsi0")
    assert keys.slots_storage("nfs-c") in SlotRequest.of(first).scopes
    assert slots.try_acquire(SlotRequest.of(first))
    assert not slots.try_acquire(SlotRequest.of(second)), "nfs-c takes part in one move at a time"
    assert slots.try_acquire(SlotRequest.of(elsewhere))
    store.transition(first, JobState.SUCCEEDED, "done")  # its end frees its slots
    assert slots.try_acquire(SlotRequest.of(second))


def test_the_next_snapshot_after_a_disk_move_shows_the_disk_on_its_new_storage(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path) -> None:
    """The collector keeps each guest's config while its /cluster/resources entry is unchanged, and a disk
    move changes nothing there: the job's end must make it read the config again."""
    sim, _, runner, store = setup(start_simulator, fake_redis, tmp_path)
    collector = Collector(ProxmoxClient(runner.settings.proxmox_api), fake_redis)

    def storage_of_disk() -> str:
        guest = next(g for g in collector.snapshot().guests if g.vmid == VM[0])
        return next(d.storage for d in guest.disks if d.key == VM[2])

    config = f"GET /nodes/{VM[1]}/qemu/{VM[0]}/config"
    assert storage_of_disk() == "nfs-a"
    assert storage_of_disk() == "nfs-a" and sim.cluster.stats.requests[config] == 1, "then from the cache"
    assert runner.run(disk_job(store, VM)) is JobState.SUCCEEDED
    reads = sim.cluster.stats.requests[config]
    assert storage_of_disk() == "nfs-b" and sim.cluster.stats.requests[config] == reads + 1


def test_a_garbled_content_answer_after_the_move_is_waited_out_and_the_job_succeeds(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path) -> None:
    """The fault suite's finding: the source volume is looked for once the task ended OK; an answer that is
    not a list (here `{"data": null}`, twice) must be read again, not end the job failed while its disk
    is on its target (the planner would plan the move again, and the move could be doubled)."""
    sim, api, runner, store = setup(start_simulator, fake_redis, tmp_path)
    sim.faults.add({"kind": "data", "method": "GET", "path": "/storage/nfs-a/content$", "data": None, "count": 2})
    job = disk_job(store, VM)
    assert runner.run(job) is JobState.SUCCEEDED, store.load(job.job_id).message
    assert volume(api, VM).startswith("nfs-b:")
    assert sim.faults.as_json() == []  # both garbled answers were read


def test_a_move_checked_while_another_onto_its_target_holds_the_slot_counts_that_one(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path) -> None:
    """The fault suite's finding (max_parallel_per_storage 2): two moves onto one storage checked at once,
    each before the other's POST, must not both pass when the storage has room for one (it went to 92 %)."""
    sim, _, runner, store = setup(start_simulator, fake_redis, tmp_path,
                                  storage_balancing={"max_parallel_per_storage": 2})
    for entry in sim.cluster.storages:  # nfs-c: 8,000 GiB at 83.75 %; one 400 GiB disk more is 88.75 %
        if entry["storage"] == "nfs-c":
            entry["disk"] = 6700 * GIB
    first, second = disk_job(store, VM, "nfs-c", "plan-1"), disk_job(store, CT, "nfs-c", "plan-2")
    assert runner.slots.try_acquire(SlotRequest.of(first)), "the first is being checked: it holds its slots"
    assert runner.run(second) is JobState.SKIPPED
    assert "nfs-c no longer has room" in store.load(second.job_id).message
    assert sim.cluster.stats.disk_move_requests == []


def test_a_server_error_on_the_task_status_read_is_waited_out_while_the_copy_runs(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path) -> None:
    """The fault suite's finding: a 500 carrying words PVE refuses a request with ("can't migrate VM"), on
    the read of a running task's status, ended the follow; the job was judged at once by the config (the
    disk still on its source) and ended failed, its slots freed, while the copy ran on and succeeded. Only
    a 4xx (PVE's 'no such task') says the task cannot be followed; a 5xx on a read is waited out."""
    sim, api, runner, store = setup(start_simulator, fake_redis, tmp_path)
    sim.faults.add({"kind": "http", "method": "GET", "path": "/tasks/[^/]+/status$", "status": 500,
                    "message": "can't migrate VM - simulated refusal", "count": 3})
    job = disk_job(store, VM)
    assert runner.run(job) is JobState.SUCCEEDED, store.load(job.job_id).message
    assert volume(api, VM).startswith("nfs-b:")
    [move] = sim.cluster.stats.disk_moves
    assert float(store.load(job.job_id).fields["at_succeeded"]) >= move["end"]


def test_a_server_error_on_the_reads_that_judge_an_ended_task_is_waited_out(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path) -> None:
    """After the task ended OK, the config read that says where the disk is meets a 500 with words PVE
    refuses requests with: the job reads again rather than end failed with its disk on its target."""
    sim, api, runner, store = setup(start_simulator, fake_redis, tmp_path)
    job = disk_job(store, VM).model_copy(update={"bwlimit_mib": 200.0})  # 400 GiB: 2048 s x 0.002 = 4 s
    ended: list[JobState] = []
    thread = threading.Thread(target=lambda: ended.append(runner.run(job)))
    thread.start()
    deadline = time.monotonic() + 10
    while not sim.cluster.stats.disk_move_requests and time.monotonic() < deadline:
        time.sleep(0.01)
    sim.faults.add({"kind": "http", "method": "GET", "path": "/qemu/108/config$", "status": 500,
                    "message": "can't migrate VM - simulated refusal", "count": 3})
    thread.join(30)
    assert ended == [JobState.SUCCEEDED], store.load(job.job_id).message
    assert volume(api, VM).startswith("nfs-b:") and sim.faults.as_json() == []
