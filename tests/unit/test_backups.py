"""Backups (issue 20): no migration starts on a guest whose backup job starts within
`migrator.backup_guard_minutes`, nor while a backup runs on its node: the job waits and goes on after.

The simulator serves /cluster/backup with `next-run` computed from each job's schedule; the expected
times below are worked out by hand from the schedule, not by the code under test."""

from __future__ import annotations

import calendar
import time
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from pvebalance.actions import Deferred
from pvebalance.services.migrator.preflight import Preflight
from pvebalance.services.migrator.runner import JobRunner
from pvebalance.services.migrator.slots import SlotRequest, Slots
from pvebalance.shared.jobs import JobState, MigrationJob
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import GuestType
from pvebalance.shared.proxmox import ProxmoxClient
from pvebalance.simulator import backups as sim_backups
from pvebalance.simulator.server import Simulator
from tests.helpers import SimFactory, settings_for

# --- the simulator's next-run -------------------------------------------------------------------

WED = calendar.timegm((2026, 12, 2, 10, 7, 30, 0, 0, 0))  # Wednesday 2026-12-02 10:07:30 UTC


def utc(day: int, hour: int, minute: int) -> int:
    return calendar.timegm((2026, 12, day, hour, minute, 0, 0, 0, 0))


@pytest.mark.parametrize(("schedule", "due"), [
    ("21:00", utc(2, 21, 0)),
    ("02:30", utc(3, 2, 30)),
    ("10:07", utc(3, 10, 7)),  # the minute now has begun: the next one is tomorrow's
    ("mon..fri 02:30", utc(3, 2, 30)),
    ("sat,sun 22:00", utc(5, 22, 0)),
    ("mon 01:00", utc(7, 1, 0)),
    ("*:0/15", utc(2, 10, 15)),
    ("*/6:00", utc(2, 12, 0)),
    ("daily", utc(3, 0, 0)),
    ("hourly", utc(2, 11, 0)),
    ("weekly", utc(7, 0, 0)),
    ("2026-12-24 10:00", None),  # a date: outside the simulator's subset, so no next-run at all
    ("monthly", None),
])
def test_the_simulator_computes_next_run_from_the_schedule(schedule: str, due: int | None) -> None:
    assert sim_backups.next_run(schedule, WED) == due


def test_the_simulator_lists_the_recorded_jobs_with_a_fresh_next_run() -> None:
    recorded = [{"id": "backup-a", "schedule": "21:00", "enabled": 1, "all": 1, "next-run": 1},
                {"id": "backup-b", "schedule": "2026-12-24 10:00", "enabled": 1, "vmid": "100", "next-run": 1}]
    assert sim_backups.listing(recorded, WED) == [
        {"id": "backup-a", "schedule": "21:00", "enabled": 1, "all": 1, "next-run": utc(2, 21, 0)},
        {"id": "backup-b", "schedule": "2026-12-24 10:00", "enabled": 1, "vmid": "100"},
    ]


# --- the pre-flight -------------------------------------------------------------------------------

def in_minutes(minutes: int) -> str:
    """A schedule due `minutes` from now (to the minute), as the simulated nodes' clock reads it (UTC)."""
    t = time.gmtime(time.time() + minutes * 60)
    return f"{t.tm_hour:02d}:{t.tm_min:02d}"


def backup_job(minutes: int = 5, **fields: Any) -> dict[str, Any]:
    return {"id": "backup-nightly", "type": "vzdump", "schedule": in_minutes(minutes), "enabled": 1,
            "storage": "pbs", "mode": "snapshot", "vmid": "117,118", **fields}


def job118() -> MigrationJob:
    return MigrationJob(job_id=MigrationJob.id_for("plan-b", 118), plan_id="plan-b", vmid=118, name="vm118",
                        guest_type=GuestType.QEMU, source="pve1", target="pve2", online=True)


def preflight(sim: Simulator, tmp_path: Path, **migrator: Any) -> Preflight:
    settings = settings_for(sim, "redis://unused", tmp_path, migrator=migrator)
    return Preflight(ProxmoxClient(settings.proxmox_api), settings, api=lambda fn, patience=None: fn())


def _in_pool(sim: Simulator) -> None:
    sim.cluster.pools["db"] = {"poolid": "db"}
    sim.cluster.guests[118].entry["pool"] = "db"


@pytest.mark.parametrize("fields", [
    {},
    {"vmid": None, "all": 1, "exclude": "100"},
    {"vmid": None, "pool": "db"},
    {"node": "pve2"},  # where the guest goes
    {"enabled": None},  # PVE's default: enabled
], ids=["vmid-list", "all", "pool", "on-target", "enabled-by-default"])
def test_a_move_whose_guest_is_backed_up_within_the_guard_is_deferred_until_the_backup_started(
        start_simulator: SimFactory, tmp_path: Path, fields: dict[str, Any]) -> None:
    made = time.time()  # the schedule is to the minute: due 4-5 minutes after it was written
    job = backup_job(**fields)  # due in 5 minutes from now, not from when the tests were collected
    sim = start_simulator()
    _in_pool(sim)
    sim.cluster.backups.append({k: v for k, v in job.items() if v is not None})
    with pytest.raises(Deferred) as deferred:
        preflight(sim, tmp_path).clear(job118(), patience=5)
    due = sim_backups.next_run(job["schedule"], time.time())
    assert due is not None and 4 * 60 <= due - made <= 6 * 60  # from then: the simulator's start takes seconds
    at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(due))
    assert str(deferred.value) == (f"backup job backup-nightly of guest 118 starts at {at}, within "
                                   "migrator.backup_guard_minutes (10): the move waits until it has run")
    assert deferred.value.until == due + 60, "looked at again once pvescheduler has started it"


@pytest.mark.parametrize("fields", [
    {"minutes": 20},
    {"enabled": 0},
    {"vmid": "117,119"},
    {"vmid": None, "all": 1, "exclude": "118"},
    {"vmid": None, "pool": "web"},
    {"node": "pve3"},  # runs on pve3 only: never on the guest, where it is or goes
], ids=["later", "disabled", "other-guests", "excluded", "other-pool", "other-node"])
def test_a_backup_job_that_does_not_back_the_guest_up_soon_leaves_the_move_alone(
        start_simulator: SimFactory, tmp_path: Path, fields: dict[str, Any]) -> None:
    job = backup_job(**fields)  # timed from now, not from when the tests were collected
    sim = start_simulator()
    _in_pool(sim)
    sim.cluster.pools["web"] = {"poolid": "web"}
    sim.cluster.backups.append(job)
    assert preflight(sim, tmp_path).clear(job118(), patience=5).params["target"] == "pve2"


def test_with_the_guard_off_backups_are_not_even_read(start_simulator: SimFactory, tmp_path: Path) -> None:
    sim = start_simulator()
    sim.cluster.backups.append(backup_job())
    assert preflight(sim, tmp_path, backup_guard_minutes=0).clear(job118(), patience=5).params["target"] == "pve2"
    assert sim.cluster.stats.requests["GET /cluster/backup"] == 0


@pytest.mark.parametrize("tid", ["", "118"])  # a job of several guests, or of this one
def test_a_backup_running_on_the_source_defers_the_move_until_it_ends(start_simulator: SimFactory, tmp_path: Path,
                                                                      tid: str) -> None:
    sim = start_simulator()
    sim.cluster.backups.append(backup_job(minutes=60 * 20))  # its next run is far: this one started already
    task = sim.tasks.new_task("pve1", "vzdump", tid, "root@pam")
    pf = preflight(sim, tmp_path)
    with pytest.raises(Deferred, match=rf"^a backup runs on pve1 \(task {task.upid}\): the move waits until it ends$"):
        pf.clear(job118(), patience=5)
    task.finish("OK")
    assert pf.clear(job118(), patience=5).params["target"] == "pve2"


# --- the runner: the job waits, its slots free for others, and goes on -----------------------------

def test_a_deferred_job_waits_without_its_slots_and_migrates_once_the_backup_has_run(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path) -> None:
    sim = start_simulator()
    sim.cluster.backups.append(backup_job())
    settings = settings_for(sim, "redis://unused", tmp_path)
    store, slots = JobStore(fake_redis), Slots(fake_redis, settings.migrator)
    seen: list[tuple[str, str, bool, int]] = []

    def sleep(seconds: float) -> None:
        record = store.load(job.job_id).fields
        if record["state"] != "waiting":
            return  # a wait of the migration in flight (its task's status), not the deferral's
        other = SlotRequest.between("another-job", "pve1", "pve2")
        free = slots.try_acquire(other)  # the same source and target: only if this job holds no slot
        if free:
            slots.release(other)
        seen.append((record["state"], record["message"], free, sim.cluster.stats.migrate_posts[118]))
        if len(seen) == 2:
            sim.cluster.backups.clear()  # the backup has run: its next run is tomorrow, far outside the guard

    r = JobRunner(ProxmoxClient(settings.proxmox_api), store, slots, settings, sleep=sleep)
    job = job118()
    store.create(job)
    assert r.run(job) is JobState.SUCCEEDED
    assert sim.cluster.guests[118].node == "pve2" and sim.cluster.stats.migrate_posts[118] == 1
    assert len(seen) == 2 and all(state == "waiting" and msg.startswith("deferred: backup job backup-nightly of "
                                                                        "guest 118 starts at ") and free and posts == 0
                                  for state, msg, free, posts in seen)
    states = [e.state for _, e in store.events()]
    assert states == [JobState.QUEUED, JobState.WAITING, JobState.RUNNING, JobState.SUCCEEDED], \
        "one event for the deferral, not one per look"


def test_a_job_deferred_longer_than_the_slot_wait_is_skipped_with_the_reason(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path) -> None:
    sim = start_simulator()
    sim.cluster.backups.append(backup_job())
    settings = settings_for(sim, "redis://unused", tmp_path, migrator={"slot_wait_timeout": 0.2})
    store = JobStore(fake_redis)
    r = JobRunner(ProxmoxClient(settings.proxmox_api), store, Slots(fake_redis, settings.migrator), settings)
    job = job118()
    store.create(job)
    assert r.run(job) is JobState.SKIPPED
    message = store.load(job.job_id).message
    assert message.startswith("backup job backup-nightly of guest 118 starts at ")
    assert message.endswith("(still so after waiting 0 s: the next plan decides again)")
    assert sim.cluster.stats.migrate_posts[118] == 0


def test_a_deferred_job_gives_its_worker_up_when_other_jobs_wait_and_goes_on_later_without_a_second_event(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path) -> None:
    from pvebalance.services.migrator.slots import SlotYield
    from pvebalance.shared import keys

    sim = start_simulator()
    sim.cluster.backups.append(backup_job())
    settings = settings_for(sim, "redis://unused", tmp_path)
    store = JobStore(fake_redis)
    r = JobRunner(ProxmoxClient(settings.proxmox_api), store, Slots(fake_redis, settings.migrator), settings,
                        sleep=lambda seconds: None)
    job = job118()
    store.create(job)
    fake_redis.rpush(f"rq:queue:{keys.MIGRATION_QUEUE}", "migrate-plan-b-200")  # another move waits for a worker
    with pytest.raises(SlotYield):  # rq puts the job at the back of the queue (jobs.GIVE_WAY)
        r.run(job)
    assert store.load(job.job_id).fields["state"] == "waiting" and sim.cluster.stats.migrate_posts[118] == 0
    fake_redis.delete(f"rq:queue:{keys.MIGRATION_QUEUE}")
    # taken up again: still deferred for the same reason at first look, then the backup has run
    r.sleep = lambda seconds: sim.cluster.backups.clear()
    assert r.run(job) is JobState.SUCCEEDED
    assert [e.state for _, e in store.events()] == [JobState.QUEUED, JobState.WAITING, JobState.RUNNING,
                                                   JobState.SUCCEEDED]
