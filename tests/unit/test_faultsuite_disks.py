"""The fault suite's disk-move checks (tests/faultsuite/verify_disks.py) find what they say they find: each
case does something to the simulator's storage-3 through its API (a move, a copy left behind, a disk lost)
and fabricates the jobs the job store would hold, then counts the figures the checks add."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from proxmoxer import ProxmoxAPI

from pvebalance.shared.jobs import DiskMoveJob, JobState, JobStatusEvent
from pvebalance.shared.models import GuestType
from pvebalance.simulator import storages
from pvebalance.simulator.server import Simulator
from tests.faultsuite.harness import Harness, Limits
from tests.faultsuite.inject import Injected
from tests.faultsuite.verify import Findings, Job
from tests.faultsuite.verify_disks import DiskExplainer, Inventory, check_disk_jobs, check_disks, check_storages
from tests.helpers import SimFactory
from tests.unit.test_simulator import raw_api
from tests.unit.test_simulator_disks import GIB, QUIET, wait

VM = (106, "pve1", "scsi0")  # storage-3: vm106's 32 GiB disk on nfs-a


def a_job(state: JobState, target: str, began: float, upid: str | None = None, message: str = "",
          plan: str = "plan-x") -> Job:
    vmid, node, disk = VM
    job = DiskMoveJob(job_id=DiskMoveJob.id_for(plan, vmid, disk), plan_id=plan, vmid=vmid, name="vm106",
                      guest_type=GuestType.QEMU, source="nfs-a", target=target, node=node, disk=disk, size=32 * GIB)
    ended = time.time()
    record = {"payload": job.model_dump_json(), "state": state.value, "created_at": str(began),
              f"at_{state.value}": str(ended), "message": message, **({"upid": upid} if upid else {})}
    event = JobStatusEvent(job_id=job.job_id, plan_id=plan, vmid=vmid, action="move-disk", source="nfs-a",
                           target=target, state=state, upid=upid, message=message)
    return Job(job, record, [event])


def move(api: ProxmoxAPI, target: str = "nfs-c", delete: int = 1) -> str:
    upid: str = api.nodes("pve1").qemu(106).move_disk.post(disk="scsi0", storage=target, delete=delete)
    assert wait(api, upid)["exitstatus"] == "OK"
    return upid


def moved_with_a_job(sim: Simulator, api: ProxmoxAPI, began: float) -> list[Job]:
    return [a_job(JobState.SUCCEEDED, "nfs-c", began, move(api))]


def copy_left_behind(sim: Simulator, api: ProxmoxAPI, began: float) -> list[Job]:
    return [a_job(JobState.SUCCEEDED, "nfs-c", began, move(api, delete=0))]


def moved_by_no_job(sim: Simulator, api: ProxmoxAPI, began: float) -> list[Job]:
    move(api)
    return []


def succeeded_without_a_move(sim: Simulator, api: ProxmoxAPI, began: float) -> list[Job]:
    return [a_job(JobState.SUCCEEDED, "nfs-c", began)]


def failed_but_moved(sim: Simulator, api: ProxmoxAPI, began: float) -> list[Job]:
    return [a_job(JobState.FAILED, "nfs-c", began, move(api), message="storage migration failed: EIO")]


def disk_gone(sim: Simulator, api: ProxmoxAPI, began: float) -> list[Job]:
    with sim.cluster.lock:
        sim.cluster.guests[106].config.pop("scsi0")
    return []


def space_not_freed(sim: Simulator, api: ProxmoxAPI, began: float) -> list[Job]:
    with sim.cluster.lock:
        storages.add_usage(sim.cluster, "nfs-b", "pve1", GIB)
    return []


@pytest.mark.parametrize(("act", "figures"), [
    (moved_with_a_job, {}),
    (copy_left_behind, {"doubled": 2}),  # the unused0 line, and nfs-a holds 32 GiB more than its volumes
    # a move no job accounts for; a POST no job sent; more moves of the disk than succeeded jobs
    (moved_by_no_job, {"lost": 1, "doubled": 2}),
    (succeeded_without_a_move, {"lost": 1}),
    # it moved; more moves than succeeded jobs; no fault explains the reason
    (failed_but_moved, {"lost": 1, "doubled": 1, "unexplained": 1}),
    (disk_gone, {"lost": 1, "doubled": 1}),  # gone from its guest's config, its space still held on nfs-a
    (space_not_freed, {"doubled": 1}),
], ids=lambda x: getattr(x, "__name__", ""))
def test_the_disk_checks_count_what_happened(start_simulator: SimFactory, tmp_path: Path,
                                             act: Callable[[Simulator, ProxmoxAPI, float], list[Job]],
                                             figures: dict[str, int]) -> None:
    sim = start_simulator("storage-3", time_scale=0.002, **QUIET)
    h = cast(Harness, SimpleNamespace(sim=sim, nodes=tuple(sorted(sim.cluster.nodes))))
    start = Inventory.of(h)
    began = time.time()
    jobs = {j.id: j for j in act(sim, raw_api(sim), began)}
    found = Findings()
    stats = sim.cluster.stats.as_json()
    check_disk_jobs(jobs, stats, [], [], time.time(), found)
    check_disks(h, start, stats, [], [], found)
    assert found.figures == Counter(figures), found.problems


def stats_with(**record: Any) -> dict[str, Any]:
    return {"max_disk_moves_per_storage": {}, "max_moves_at_once": 0, "peak_storage_ratio": {}, **record}


@pytest.mark.parametrize(("stats", "figures"), [
    (stats_with(peak_storage_ratio={"pve1/nfs-b": 0.90, "pve1/nfs-a": 0.904}), {}),  # nfs-a began at 90.4 %
    (stats_with(peak_storage_ratio={"pve2/nfs-c": 0.9001}), {"overloads": 1}),
    (stats_with(peak_storage_ratio={"pve1/nfs-a": 0.91}), {"overloads": 1}),  # above max_usage and its start
    (stats_with(max_disk_moves_per_storage={"nfs-a": 3, "nfs-b": 2}), {"limits_exceeded": 1}),
    (stats_with(max_moves_at_once=3), {"limits_exceeded": 1}),
], ids=["at the limits", "above max_usage", "above its start", "per storage", "in the cluster"])
def test_the_storage_checks_hold_the_limits_and_max_usage(start_simulator: SimFactory, fake_redis: Any,
                                                          stats: dict[str, Any], figures: dict[str, int]) -> None:
    sim = start_simulator("storage-3", time_scale=0.002, **QUIET)
    h = cast(Harness, SimpleNamespace(sim=sim, nodes=tuple(sorted(sim.cluster.nodes)), limits=Limits(),
                                      max_usage=90.0, balanciness=100.0))
    found = Findings()
    words = check_storages(h, Inventory.of(h), stats, fake_redis, found)
    assert found.figures == Counter(figures), found.problems
    assert words.startswith("storages end 66.1 pp apart (nfs-a 90.4 %, nfs-b 50.6 %, nfs-c 24.4 %)")


def test_storages_left_apart_without_a_reason_from_the_planner_are_unbalanced(start_simulator: SimFactory,
                                                                               fake_redis: Any) -> None:
    sim = start_simulator("storage-3", time_scale=0.002, **QUIET)
    h = cast(Harness, SimpleNamespace(sim=sim, nodes=tuple(sorted(sim.cluster.nodes)), limits=Limits(),
                                      max_usage=90.0, balanciness=10.0))
    found = Findings()
    check_storages(h, Inventory.of(h), stats_with(), fake_redis, found)  # no plan at all
    assert found.figures == Counter({"unbalanced": 1}), found.problems


def node_offline(node: str, at: float) -> Injected:
    return Injected(9, "node_offline", at, f"node {node} offline", at + 6.0, node=node)


@pytest.mark.parametrize(("faults", "message", "explained"), [
    # the planner skips a disk move not yet started whose guest's node went offline (seed 11's run)
    ([node_offline("pve1", 0.0)], "node pve1 is offline since the plan was made", True),
    ([node_offline("pve1", 0.0)], "node pve1 is in maintenance since the plan was made", True),
    ([node_offline("pve2", 0.0)], "node pve1 is offline since the plan was made", False),  # another node
    ([], "node pve1 is offline since the plan was made", False),  # no node went offline
], ids=["offline", "maintenance", "another-node-offline", "no-fault"])
def test_a_disk_move_skipped_for_its_guests_node_is_explained_only_by_that_node_going_away(
        faults: list[Injected], message: str, explained: bool) -> None:
    now = time.time()
    for fault in faults:
        fault.at, fault.until = now - 3.0, now + 3.0
    job = a_job(JobState.SKIPPED, "nfs-c", now - 1.0, message=message)
    assert (DiskExplainer(faults, [], {job.id: job}).why_not(job, now) is None) is explained
