"""JobRunner in this process: real proxmoxer against the simulator, fakeredis for state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from redis import Redis

from pvebalance.services.migrator.runner import JobRunner
from pvebalance.services.migrator.slots import Slots
from pvebalance.shared.jobs import JobState, MigrationJob
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import GuestType
from pvebalance.shared.proxmox import ProxmoxClient
from pvebalance.simulator.server import Simulator
from tests.helpers import SimFactory, settings_for


def runner(sim: Simulator, redis: Redis, tmp_path: Path) -> tuple[JobRunner, JobStore]:
    settings = settings_for(sim, "redis://unused", tmp_path)
    store = JobStore(redis)
    return JobRunner(ProxmoxClient(settings.proxmox_api), store, Slots(redis, settings.migrator),
                           settings), store


def make_job(store: JobStore, vmid: int, source: str = "pve1", target: str = "pve2") -> MigrationJob:
    job = MigrationJob(job_id=MigrationJob.id_for("plan-t", vmid), plan_id="plan-t", vmid=vmid, name=f"vm{vmid}",
                       guest_type=GuestType.QEMU, source=source, target=target, online=True)
    store.create(job)
    return job


def test_success_lands_the_guest_and_records_the_upid(start_simulator: SimFactory, fake_redis: Redis,
                                                       tmp_path: Path) -> None:
    sim = start_simulator()
    r, store = runner(sim, fake_redis, tmp_path)
    job = make_job(store, 118)
    assert r.run(job) is JobState.SUCCEEDED
    assert sim.cluster.guests[118].node == "pve2"
    record = store.load(job.job_id).fields
    assert ":qmigrate:118:" in record["upid"]
    assert [e.state for _, e in store.events()] == [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]


def test_failed_task_ends_failed_with_proxmox_text(start_simulator: SimFactory, fake_redis: Redis,
                                                   tmp_path: Path) -> None:
    sim = start_simulator()
    sim.faults.add({"kind": "task_error", "vmid": 118, "message": "migration aborted"})
    r, store = runner(sim, fake_redis, tmp_path)
    job = make_job(store, 118)
    assert r.run(job) is JobState.FAILED
    assert store.load(job.job_id).message == "migration aborted"
    assert sim.cluster.guests[118].node == "pve1"


def test_500_twice_then_success_is_retried(start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path) -> None:
    sim = start_simulator()
    sim.faults.add({"kind": "http", "method": "POST", "path": "/migrate$", "status": 500,
                    "message": "proxy loop detected", "count": 2})
    r, store = runner(sim, fake_redis, tmp_path)
    job = make_job(store, 118)
    assert r.run(job) is JobState.SUCCEEDED
    assert sim.cluster.stats.migrate_posts[118] == 1, "refused POSTs created no task; one migration ran"


def test_guest_moved_by_hand_is_skipped(start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path) -> None:
    sim = start_simulator()
    sim.cluster.guests[118].entry["node"] = "pve3"
    r, store = runner(sim, fake_redis, tmp_path)
    job = make_job(store, 118)
    assert r.run(job) is JobState.SKIPPED
    assert "moved to pve3" in store.load(job.job_id).message
    assert sim.cluster.stats.migrate_posts[118] == 0


def test_locked_guest_is_migrated_once_the_lock_goes(start_simulator: SimFactory, fake_redis: Redis,
                                                     tmp_path: Path) -> None:
    import threading

    sim = start_simulator()
    sim.cluster.guests[118].config["lock"] = "backup"
    threading.Timer(0.3, lambda: sim.cluster.guests[118].config.pop("lock")).start()
    r, store = runner(sim, fake_redis, tmp_path)
    job = make_job(store, 118)
    assert r.run(job) is JobState.SUCCEEDED
    assert sim.cluster.stats.migrate_posts[118] == 1


def test_resumed_job_polls_the_stored_upid_and_never_posts_again(start_simulator: SimFactory, fake_redis: Redis,
                                                                 tmp_path: Path) -> None:
    sim = start_simulator(time_scale=0.05)
    r, store = runner(sim, fake_redis, tmp_path)
    job = make_job(store, 118)
    # a first worker POSTed and stored the UPID, then died
    upid = r.client.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True)
    store.transition(job, JobState.RUNNING, upid=upid)
    assert r.run(job) is JobState.SUCCEEDED
    assert sim.cluster.stats.migrate_posts[118] == 1


def test_a_resumed_job_whose_task_ended_ok_succeeds_though_the_guest_moved_on_since(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path) -> None:
    """The fault suite's case: a worker POSTed and died; before the job was resumed the guest, already
    on its target, was moved on by hand. The migration happened once: the job succeeded."""
    import time

    sim = start_simulator(time_scale=0.01)
    r, store = runner(sim, fake_redis, tmp_path)
    job = make_job(store, 118)
    upid = r.client.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True)
    store.transition(job, JobState.RUNNING, upid=upid)
    while sim.cluster.guests[118].node != "pve2":
        time.sleep(0.02)
    sim.cluster.guests[118].entry["node"] = "pve3"  # moved on by hand

    assert r.run(job) is JobState.SUCCEEDED
    assert sim.cluster.stats.migrate_posts[118] == 1


def test_a_finished_job_is_not_run_again(start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path) -> None:
    sim = start_simulator()
    r, store = runner(sim, fake_redis, tmp_path)
    job = make_job(store, 118)
    assert r.run(job) is JobState.SUCCEEDED
    assert r.run(job) is JobState.SUCCEEDED
    assert sim.cluster.stats.migrate_posts[118] == 1


def test_ha_guest_is_followed_until_it_lands(start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path) -> None:
    sim = start_simulator("groups", time_scale=0.2)
    guest = sim.cluster.guests[123]
    assert sim.cluster.is_ha_managed(guest)
    r, store = runner(sim, fake_redis, tmp_path)
    target = next(n for n in ("pve5", "pve6") if n != guest.node)
    job = make_job(store, 123, source=guest.node, target=target)
    assert r.run(job) is JobState.SUCCEEDED
    record = store.load(job.job_id).fields
    assert ":hamigrate:" in record["upid"], "the POST only queued an HA request"
    assert sim.cluster.guests[123].node == target
    # the real move was a separate task, and the job did not end before it did
    migration = next(m for m in sim.cluster.stats.migrations if m["vmid"] == 123)
    assert float(record["at_succeeded"]) >= migration["end"]


def test_no_slot_within_the_wait_limit_ends_the_job_failed(start_simulator: SimFactory, fake_redis: Redis,
                                                           tmp_path: Path) -> None:
    from pvebalance.services.migrator.slots import SlotRequest

    sim = start_simulator()
    settings = settings_for(sim, "redis://unused", tmp_path,
                            migrator={"max_parallel_cluster": 1, "slot_wait_timeout": 0.3})
    store = JobStore(fake_redis)
    slots = Slots(fake_redis, settings.migrator)
    assert slots.try_acquire(SlotRequest.between("someone-else", "pve3", "pve4"))
    r = JobRunner(ProxmoxClient(settings.proxmox_api), store, slots, settings)
    job = make_job(store, 118)
    assert r.run(job) is JobState.FAILED
    assert "no migration slot" in store.load(job.job_id).message
    assert store.active_jobs() == set(), "the job is not left waiting forever"
    assert sim.cluster.stats.migrate_posts[118] == 0


def _delete_guest(sim: Simulator) -> None:
    sim.cluster.delete_guest(118)


def _fill_target(sim: Simulator) -> None:
    sim.cluster.nodes["pve2"].mem_overhead = int(sim.cluster.nodes["pve2"].entry["maxmem"] * 0.94)
    sim.cluster.note_mem()


@pytest.mark.parametrize(("change", "state", "message"), [
    # gone for good: skipped at once, not after the wait for a slot (which would end it failed here)
    (_delete_guest, JobState.SKIPPED, "guest 118 no longer exists"),
    # may change before a slot is free: it waits, and is checked again then
    (_fill_target, JobState.FAILED, "no migration slot free within 0 s"),
])
def test_a_job_that_must_wait_for_a_slot_is_skipped_at_once_only_when_its_move_is_gone_for_good(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path, change: Callable[[Simulator], None],
        state: JobState, message: str) -> None:
    from pvebalance.services.migrator.slots import SlotRequest

    sim = start_simulator(figure_lag=0, host_variation=0)
    settings = settings_for(sim, "redis://unused", tmp_path,
                            migrator={"max_parallel_cluster": 1, "slot_wait_timeout": 0.3})
    store = JobStore(fake_redis)
    slots = Slots(fake_redis, settings.migrator)
    assert slots.try_acquire(SlotRequest.between("someone-else", "pve3", "pve4"))
    change(sim)
    job = make_job(store, 118)
    r = JobRunner(ProxmoxClient(settings.proxmox_api), store, slots, settings)
    assert r.run(job) is state
    assert store.load(job.job_id).message == message
    assert sim.cluster.stats.migrate_posts[118] == 0


# --- answers to a task status read that are not a task status (issue 20, item 4) ---------------

NOT_A_TASK_STATUS = [None, [], [{"status": "stopped", "exitstatus": "OK"}], "OK", {"upid": "UPID:pve1:x"},
                     {"status": "stopped"}, {"status": "stopped", "exitstatus": ""}, {"status": None}]


@pytest.mark.parametrize("answer", NOT_A_TASK_STATUS, ids=repr)
def test_an_answer_that_is_not_a_task_status_is_waited_out_until_pve_ends_the_task(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path, answer: object) -> None:
    """Every task status read answers `{"data": <answer>}` (HTTP 200) for as long as the migration
    runs: the job neither ends nor frees its slots before PVE's own end of the task."""
    import threading
    import time

    sim = start_simulator(time_scale=0.05)  # vm118's migration takes a few tenths of a second
    path = r"^/nodes/pve1/tasks/[^/]+/status$"
    sim.faults.add({"kind": "data", "method": "GET", "path": path, "data": answer, "count": None})

    def heal_once_the_migration_ended() -> None:
        deadline = time.monotonic() + 30
        while not sim.cluster.stats.migrations and time.monotonic() < deadline:
            time.sleep(0.01)
        sim.faults.clear()

    healer = threading.Thread(target=heal_once_the_migration_ended, daemon=True)
    healer.start()
    settings = settings_for(sim, "redis://unused", tmp_path)
    store = JobStore(fake_redis)
    # the backoff between reads, cut short: how long it waits is not what is tested here
    r = JobRunner(ProxmoxClient(settings.proxmox_api), store, Slots(fake_redis, settings.migrator), settings,
                        sleep=lambda seconds: time.sleep(min(seconds, 0.02)))
    job = make_job(store, 118)
    assert r.run(job) is JobState.SUCCEEDED
    healer.join()
    record = store.load(job.job_id).fields
    migration = next(m for m in sim.cluster.stats.migrations if m["vmid"] == 118)
    assert migration["ok"] and sim.cluster.guests[118].node == "pve2"
    assert float(record["at_succeeded"]) >= migration["end"], "the job ended while its task ran"
    reads = sim.cluster.stats.requests[f"GET /nodes/pve1/tasks/{record['upid']}/status"]
    assert reads >= 2, "the bad answers were read (and waited out), then PVE's own end"
    assert sim.cluster.stats.migrate_posts[118] == 1


@pytest.mark.parametrize(("answer", "is_status"), [
    ({"status": "running", "upid": "UPID:pve1:x"}, True),
    ({"status": "stopped", "exitstatus": "OK"}, True),
    ({"status": "stopped", "exitstatus": "WARNINGS: 2"}, True),
    ({"status": "stopped", "exitstatus": "migration aborted"}, True),
    *[(bad, False) for bad in NOT_A_TASK_STATUS],
])
def test_a_task_status_is_running_or_stopped_with_an_exit_status(answer: object, is_status: bool) -> None:
    from pvebalance.services.migrator.runner import is_task_status

    assert is_task_status(answer) is is_status


def test_the_simulator_answers_a_data_fault_with_pve_s_envelope_around_it(start_simulator: SimFactory,
                                                                          tmp_path: Path) -> None:
    sim = start_simulator()
    sim.faults.add({"kind": "data", "path": "^/version$"})
    sim.faults.add({"kind": "data", "path": "^/version$", "data": ["a", 1]})
    client = ProxmoxClient(settings_for(sim, "redis://unused", tmp_path).proxmox_api)
    assert client.get("/version") is None
    assert client.get("/version") == ["a", 1]
    assert client.get("/version")["release"], "a counted fault is gone once used"
