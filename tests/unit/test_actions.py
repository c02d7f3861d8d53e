"""A plan's actions (issue 21): kinds in one discriminated list, `migrations` as the migrate-only view, a
plan stored before actions still read, one job per action, and the planner's order between them."""

from __future__ import annotations

import json

import pytest
from redis import Redis
from rq.job import Job

from pvebalance.actions import KINDS
from pvebalance.engine import Policy
from pvebalance.engine.cluster_plan import plan_cluster
from pvebalance.services.planner.planner import Planner
from pvebalance.shared.config import Settings, StorageBalancingSettings
from pvebalance.shared.jobs import DiskMoveJob, MigrationJob, job_ids, parse_job
from pvebalance.shared.models import DiskMove, GuestType, Migration, MigrationReason, Plan, UsageSummary
from pvebalance.shared.scenario import load_scenario

EMPTY = UsageSummary(spread_pp=0, nodes={})


def migration(vmid: int, source: str = "pve1", target: str = "pve2") -> Migration:
    return Migration(vmid=vmid, name=f"vm{vmid}", type=GuestType.QEMU, source=source, target=target,
                     reason=MigrationReason.BALANCE, online=True)


def disk_move(vmid: int, disk: str = "scsi0", batch: int = 0, after: tuple[int, ...] = ()) -> DiskMove:
    return DiskMove(vmid=vmid, guest_type=GuestType.QEMU, node="pve1", disk=disk, source="nfs-a", target="nfs-b",
                    size=2**30, batch=batch, after=list(after))


def plan_of(*actions: Migration | DiskMove) -> Plan:
    return Plan(plan_id="plan-a", method="memory", mode="used", balanciness=5, before=EMPTY, after=EMPTY,
                actions=list(actions))


def test_a_plan_stored_before_actions_reads_its_migrations_as_its_actions_waiting_as_that_version_waited() -> None:
    doc = json.loads(plan_of(migration(100, "pve1", "pve2"), migration(101, "pve2", "pve1"),
                             migration(100, "pve2", "pve3")).model_dump_json())
    doc.pop("actions")
    for m in doc["migrations"]:  # as a version before actions stored it: `migrations` only, no `after`
        del m["after"], m["kind"]
    old = Plan.model_validate_json(json.dumps(doc))
    assert [(a.kind, a.vmid) for a in old.actions] == [("migrate", 100), ("migrate", 101), ("migrate", 100)]
    # 101 into pve1 after 100 left it; 100's second move after its first
    assert [a.after for a in old.actions] == [[], [0], [0]]
    assert old.migrations == old.actions


def test_a_plan_keeps_its_actions_in_order_and_migrations_lists_only_the_migrate_ones() -> None:
    plan = plan_of(migration(100), disk_move(101), migration(102), disk_move(101, "scsi1", batch=1))
    read = Plan.model_validate_json(plan.model_dump_json())
    assert [(a.kind, a.vmid) for a in read.actions] == [("migrate", 100), ("move-disk", 101), ("migrate", 102),
                                                        ("move-disk", 101)]
    assert [m.vmid for m in read.migrations] == [100, 102]
    assert [d.disk for d in read.disk_moves] == ["scsi0", "scsi1"]
    assert json.loads(read.model_dump_json())["migrations"] == [m.model_dump(mode="json") for m in read.migrations]


def test_each_action_gets_its_own_job_of_its_kind() -> None:
    plan = plan_of(migration(100), disk_move(100), disk_move(100, "scsi1"), migration(100, "pve2", "pve3"))
    assert job_ids(plan) == ["migrate-plan-a-100", "move-disk-plan-a-100-scsi0", "move-disk-plan-a-100-scsi1",
                             "migrate-plan-a-100-2"]
    job = DiskMoveJob.of("plan-a", disk_move(100), 1, Settings(storage_balancing={"bwlimit": 100}))
    assert isinstance(parse_job(job.model_dump_json()), DiskMoveJob) and job.bwlimit_mib == 100
    assert isinstance(parse_job(MigrationJob.of("plan-a", migration(1), 1, Settings()).model_dump_json()), MigrationJob)


def test_each_registered_kind_is_its_action_its_job_and_its_executor_from_one_module() -> None:
    assert [k.name for k in KINDS] == ["migrate", "move-disk"]
    for kind in KINDS:
        assert kind.job.action == kind.name
        assert {kind.action.__module__, kind.job.__module__, kind.executor.__module__} == {kind.action.__module__}


def test_the_planner_queues_disk_moves_batch_after_batch_and_a_guests_actions_one_after_another(
        fake_redis: Redis) -> None:
    plan = plan_of(migration(100), disk_move(100, batch=0, after=(0,)), disk_move(101, batch=0),
                   disk_move(102, batch=1, after=(1, 2)))
    enqueued = Planner(fake_redis, Settings()).enqueue(plan)
    assert enqueued == job_ids(plan)
    deps = {job_id: set(Job.fetch(job_id, connection=fake_redis).dependency_ids) for job_id in enqueued}
    assert deps == {
        "migrate-plan-a-100": set(),
        "move-disk-plan-a-100-scsi0": {"migrate-plan-a-100"},  # the guest's earlier action
        "move-disk-plan-a-101-scsi0": set(),  # batch 0 runs at once, as far as the slots allow
        "move-disk-plan-a-102-scsi0": {"move-disk-plan-a-100-scsi0", "move-disk-plan-a-101-scsi0"},
    }


def test_storage_and_node_balance_come_in_one_plan_whose_disk_moves_leave_the_migrated_guests_alone() -> None:
    """On storage-3 with a node made to need migrations: every migrated guest's disks stay (a disk move runs on
    the guest's node), the disk moves come after the migrations, and the plan says both."""
    scenario = load_scenario("storage-3")
    snapshot = scenario.snapshot
    policy = Policy(balanciness=1.0)  # storage-3's nodes are 3.3 pp apart: a 1 pp band needs migrations
    storage = StorageBalancingSettings(enable=True)
    plan = plan_cluster(snapshot, policy, storage)
    kinds = [a.kind for a in plan.actions]
    assert plan.migrations and plan.disk_moves
    assert kinds == sorted(kinds, key=lambda k: k != "migrate"), "migrations first, then the disk moves"
    assert not {m.vmid for m in plan.migrations} & {d.vmid for d in plan.disk_moves}
    assert plan.storage is not None and plan.storage.groups[0].spread_after_pp <= 10
    index = {id(a): i for i, a in enumerate(plan.actions)}
    for d in plan.disk_moves:  # each disk move waits for the whole batch before its own, and nothing else
        assert d.after == [index[id(e)] for e in plan.disk_moves if e.batch == d.batch - 1]
    assert any("being migrated" in stay for stay in plan.storage.stays)
    assert plan_cluster(snapshot, policy, StorageBalancingSettings()).disk_moves == [], "off by default"


def test_a_disk_move_whose_guests_node_went_into_maintenance_is_skipped_before_it_starts(fake_redis: Redis) -> None:
    from pvebalance.shared.jobs import JobState
    from pvebalance.shared.models import ClusterSnapshot, NodeState

    planner = Planner(fake_redis, Settings())
    plan = plan_of(disk_move(100), DiskMove(vmid=101, guest_type=GuestType.QEMU, node="pve2", disk="scsi0",
                                            source="nfs-a", target="nfs-b", size=2**30))
    on_pve1, on_pve2 = planner.enqueue(plan)
    nodes = [NodeState(name=n, maxmem=64 * 2**30, maintenance=n == "pve1") for n in ("pve1", "pve2")]
    assert planner.skip_jobs_into_unusable_nodes(ClusterSnapshot(nodes=nodes, guests=[])) == [on_pve1]
    assert planner.jobs.load(on_pve1).message == "node pve1 is in maintenance since the plan was made"
    assert planner.jobs.state(on_pve2) is JobState.QUEUED


@pytest.mark.parametrize("name", ["all-on-one", "maintenance", "groups", "operator-rules", "ha-rules"])
def test_the_plans_waits_are_those_the_planner_derived_before_they_travelled_with_the_plan(name: str) -> None:
    """Each migration waits for the earlier migrations (in queue order) out of its target and its guest's
    earlier move: the rule Planner.enqueue applied itself before the schedule's `after` came with the plan."""
    from pvebalance.shared.models import legacy_order

    scenario = load_scenario(name)
    plan = plan_cluster(scenario.snapshot, Policy.from_settings(scenario.settings(None).balancing))
    assert len(plan.migrations) > 1
    derived = legacy_order([m.model_dump(exclude={"after"}) for m in plan.migrations])
    assert [m.after for m in plan.migrations] == [d["after"] for d in derived]


def test_a_job_rq_never_had_is_queued_again_behind_the_live_jobs_its_plan_says_it_waits_for(
        fake_redis: Redis) -> None:
    """The reconciler queues a lost job as the planner queued it: a disk move of batch 1 after the batch-0
    move still waiting, not ahead of it."""
    import time

    from rq import Queue

    from pvebalance.services.migrator.recovery import Reconciler
    from pvebalance.shared import keys
    from pvebalance.shared.plans import PlanState, PlanStatus, PlanStore

    plan = plan_of(disk_move(100), disk_move(101, batch=1, after=(0,)))
    planner = Planner(fake_redis, Settings())
    PlanStore(fake_redis).save(plan, PlanStatus(plan_id=plan.plan_id, state=PlanState.RUNNING))
    first, second = planner.enqueue(plan)
    Job.fetch(second, connection=fake_redis).delete()  # rq lost it (its record gone), the job store has it live
    fake_redis.lrem(Queue(keys.MIGRATION_QUEUE, connection=fake_redis).key, 0, second)
    planner.jobs.set_fields(second, created_at=time.time() - 60)
    assert Reconciler(fake_redis, Settings(), interval=0.01).run_once() == [second]
    assert set(Job.fetch(second, connection=fake_redis).dependency_ids) == {first}


def test_a_disk_move_names_its_target_storage_in_json_and_reads_back_the_same() -> None:
    plan = plan_of(disk_move(100))
    shown = json.loads(plan.model_dump_json())["actions"][0]
    assert (shown["target"], shown["target_storage"]) == ("nfs-b", "nfs-b")
    assert Plan.model_validate_json(plan.model_dump_json()) == plan
    del shown["target"]  # a move written with the name a reader looks for
    assert DiskMove.model_validate(shown).target == "nfs-b"
