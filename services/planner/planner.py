"""Consume snapshots, plan with the engine, store the plan and enqueue one migration job per move.

The planner never plans while jobs of an earlier plan are still active: the snapshot would not yet
show their effect and a second plan would move guests for the same imbalance twice. A guest is
claimed by its job (shared/jobstore.py), so it can never have two jobs at once.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from functools import partial

from redis import Redis
from redis.exceptions import RedisError, ResponseError
from rq import Queue
from rq.job import Job as RqJob

from pvebalance.engine import Policy, plan_balance
from pvebalance.engine.cluster_plan import plan_cluster
from pvebalance.shared import keys, snapshots
from pvebalance.shared.config import Settings
from pvebalance.shared.heartbeat import INSTANCE, beat, kept_alive
from pvebalance.shared.holds import round_made, round_wait
from pvebalance.shared.jobqueue import end_overdue, enqueue_job
from pvebalance.shared.jobrecord import STARTABLE
from pvebalance.shared.jobs import JobState, actions_with_jobs, job_ids, jobs_of
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.leader import Leader, NotLeader
from pvebalance.shared.logging import get_logger
from pvebalance.shared.models import ClusterSnapshot, Plan, parse_known, utcnow
from pvebalance.shared.planner_mode import PlannerMode, publish
from pvebalance.shared.plans import PlanState, PlanStatus, PlanStore
from pvebalance.shared.policy_now import drained_nodes, policy_now, with_in_flight
from pvebalance.shared.redisconn import Outage, connect_waiting
from pvebalance.shared.requests import RequestAction, RequestState
from pvebalance.shared.retention import Retention
from pvebalance.shared.streams import ensure_group, group_exists
from pvebalance.shared.windows import nodes_in_windows

from .operator import RequestHandler, drain_only, leaving, paused
from .recommend import recommend

log = get_logger("pvebalance.planner")


class Planner:
    def __init__(self, redis: Redis, settings: Settings, consumer: str = "planner-1") -> None:
        self.redis = redis
        self.settings = settings
        self.consumer = consumer
        self.retention = Retention(settings.retention)
        self.jobs = JobStore(redis, self.retention)
        self.plans = PlanStore(redis, self.retention)
        self.operator = RequestHandler(self)
        self.queue = Queue(keys.MIGRATION_QUEUE, connection=redis)
        self.fence: Callable[[], None] = lambda: None  # run_planner: raise NotLeader unless leading
        self._unknown_plan_seen = ""  # the digest of the last unreadable latest plan logged (logged once)
        self.unreadable_snapshots = False  # said once until a readable snapshot arrives

    def ensure_group(self, start: str = "$") -> None:
        ensure_group(self.redis, keys.SNAPSHOT_STREAM, keys.PLANNER_GROUP, start)

    def _group_exists(self) -> bool:
        return group_exists(self.redis, keys.SNAPSHOT_STREAM, keys.PLANNER_GROUP)

    def next_snapshot(self, block_ms: int = 1000) -> ClusterSnapshot | None:
        """The newest unread snapshot; older unread ones are acknowledged and skipped."""
        entries = self.redis.xreadgroup(
            keys.PLANNER_GROUP, self.consumer, {keys.SNAPSHOT_STREAM: ">"}, count=100, block=block_ms
        )
        if not entries:
            return None
        messages = entries[0][1]
        self.redis.xack(keys.SNAPSHOT_STREAM, keys.PLANNER_GROUP, *[mid for mid, _ in messages])
        for _, fields in reversed(messages):  # the newest this version can read
            snapshot = snapshots.from_entry(fields)
            if snapshot is not None:
                self.unreadable_snapshots = False
                return snapshot
        if not self.unreadable_snapshots:  # a newer collector's schema, or a damaged entry: said once
            log.warning("snapshot not readable by this version, planning on the next one it can read",
                        entry_id=str(messages[-1][0]))
            self.unreadable_snapshots = True
        return None

    def handle(self, snapshot: ClusterSnapshot) -> Plan | None:
        age = snapshot.age_seconds()
        if age > self.settings.planner.max_snapshot_age:
            log.warning("snapshot too old, not planning", snapshot_id=snapshot.snapshot_id, age_s=round(age, 1))
            return None
        end_overdue(self.jobs, self.settings)
        self.skip_jobs_into_unusable_nodes(snapshot)
        self.operator.settle_drains(snapshot)
        self.end_finished_plans()
        active = self.jobs.active_jobs()
        if active:
            log.info("migrations still running, not planning", active_jobs=len(active))
            return None
        unsettled = self.unsettled(snapshot)
        if unsettled is not None:
            log.info("snapshot not settled, planning on a later one", snapshot_id=snapshot.snapshot_id, why=unsettled)
            return None
        if not snapshot.quorate:
            log.warning("cluster not quorate, not planning", snapshot_id=snapshot.snapshot_id)
            return None
        wait = self.wait_after_failures()
        if wait > 0:
            # A refused move would otherwise be planned again at once, and fail again, every snapshot.
            log.info("moves of the last plan failed; planning again later", wait_s=round(wait, 1))
            return None
        snapshot = with_in_flight(self.redis, snapshot)
        policy = self.policy()  # once per snapshot: it reads drains, windows and 24 h of moves
        drain = self.run_drains(snapshot, policy)
        if drain is not None:
            return drain
        pause = paused(self.redis)
        if pause:
            log.info("balancing paused, not planning", reason=pause.get("reason"), who=pause.get("who"))
            return None
        interval = self.settings.planner.interval
        if (due_in := round_wait(self.redis, interval)) > 0:
            log.debug("next balancing round not due yet (planner.interval)", due_in_s=round(due_in))
            return None
        plan = plan_cluster(snapshot, policy, self.settings.storage_balancing)
        round_made(self.redis, interval)
        mode = self.settings.balancing.mode_of_operation
        if mode != "automatic" or not self.settings.balancing.enable:
            return self.recommend(plan, snapshot=snapshot, policy=policy)
        latest = self.latest_plan()
        if not plan.actions and latest is not None and not latest.actions and latest.outcome == plan.outcome:
            # Nothing to do, again: the stored plan says so; one per snapshot would fill Redis (2880 a day).
            return plan
        self.save(plan)
        log.info("plan made", plan_id=plan.plan_id, snapshot_id=snapshot.snapshot_id, outcome=plan.outcome,
                 spread_before=plan.before.spread_pp, spread_after=plan.after.spread_pp,
                 migrations=len(plan.migrations), disk_moves=len(plan.disk_moves))
        if plan.actions:
            self.enqueue(plan)
        else:
            self.plans.set_state(plan.plan_id, PlanState.DONE, plan.outcome_reason)
        return plan

    def unsettled(self, snapshot: ClusterSnapshot) -> str | None:
        """Why the snapshot may not be planned on yet, because of the last migration; None when it may.

        Read while a migration ran, it may show the guest on its source: a plan on it could undo the move
        or put an anti-affinity partner beside it. Read within `planner.settle_seconds` after the last one
        ended, it shows the guest on its target at once (its node comes from the cluster's config file
        system) but the nodes' figures from before (pvestatd publishes them every 10 s): the source still
        counts the guest's memory, and a plan on it moves a second guest off the source for nothing."""
        ended = self.jobs.last_change_at()
        if ended is None:
            return None
        after = snapshot.taken_at.timestamp() - ended
        if after < 0:
            return "taken before the last migration ended"
        settle = self.settings.planner.settle_seconds
        if after < settle:
            return (f"taken {after:.1f} s after the last migration ended, before the node figures settled "
                    f"(planner.settle_seconds {settle:g})")
        return None

    def policy(self) -> Policy:
        """The policy in force now (shared/policy_now.py: the one every reader uses)."""
        return policy_now(self.redis, self.settings)

    def drain_plan(self, snapshot: ClusterSnapshot, nodes: set[str], include_stopped: set[str],
                   policy: Policy | None = None) -> Plan:
        """A plan that only repairs rules, with `nodes` (every node drained by an operator or a window)
        drained; their stopped guests stay unless the drain includes them (they take no memory, and a
        stopped guest often stays on purpose). `policy`: the snapshot's, when the caller has it."""
        policy = policy or self.policy()
        policy = drain_only(replace(policy, maintenance_nodes=frozenset(policy.maintenance_nodes) | nodes))
        plan = plan_balance(snapshot, policy)
        stopped = {g.vmid for g in snapshot.guests if not g.running}
        keep = [m for m in plan.migrations
                if not (m.vmid in stopped and m.source in nodes and m.source not in include_stopped)]
        kept = {id(m) for m in keep}
        return plan.only(lambda a: id(a) in kept)

    def run_drains(self, snapshot: ClusterSnapshot, policy: Policy | None = None) -> Plan | None:
        """Plan and enqueue the moves off drained nodes that still hold guests; drains always run, in
        every mode and while paused (the operator asked). None when there is nothing to drain."""
        if self.jobs.active_jobs():
            return None  # the drain is planned once the running moves have ended
        drains = drained_nodes(self.redis)
        windowed = nodes_in_windows(self.settings.proxmox_cluster.maintenance_windows, utcnow())
        nodes = set(drains) | windowed
        if not nodes:
            return None
        include = {n for n, d in drains.items() if d.get("include_stopped")}
        plan = self.drain_plan(snapshot, nodes, include, policy)
        if not leaving(plan, nodes):
            return None
        self.save(plan)
        log.info("drain planned", plan_id=plan.plan_id, nodes=sorted(nodes), migrations=len(plan.migrations))
        for status in self.operator.store.open_requests(RequestAction.DRAIN):
            if status.request.node in nodes:
                self.operator.store.settle(status.request.request_id, RequestState.ACCEPTED, status.reason,
                                           plan_id=plan.plan_id)
        self.enqueue(plan)
        return plan

    def recommend(self, plan: Plan, request_id: str | None = None,
                  snapshot: ClusterSnapshot | None = None, policy: Policy | None = None) -> Plan:
        """Store a plan for an operator to approve, or keep the one waiting (see recommend.py)."""
        return recommend(self, plan, request_id, snapshot, policy)

    def end_finished_plans(self) -> None:
        for status in self.plans.in_state(PlanState.RUNNING, PlanState.APPROVED):
            plan = self.plans.plan(status.plan_id)
            if plan is None:
                continue
            records = [self.jobs.load(job_id) for a, job_id in actions_with_jobs(plan)
                       if status.vmids is None or a.vmid in status.vmids]
            if any(r.live for r in records):
                continue
            counts = Counter(r.fields.get("state") or "not enqueued" for r in records)
            self.plans.set_state(plan.plan_id, PlanState.DONE, ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))

    def failed_moves(self, plan_id: str) -> list[str]:
        plan = self.plans.plan(plan_id)
        failed = []
        for a, job_id in actions_with_jobs(plan) if plan else []:
            record = self.jobs.load(job_id)
            if record.state is JobState.FAILED:
                failed.append(f"{a.describe()}: {record.message}")
        return failed

    def latest_plan(self) -> Plan | None:
        """The latest stored plan; None when there is none, or when a version whose schema this one does not
        know wrote it: this planner plans on as if there were none (said once per such plan) rather than stop
        planning until that plan expires (retention.plans_days)."""
        raw = self.redis.get(keys.PLAN_LATEST)
        plan = parse_known(Plan, raw)
        if raw and plan is None:
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            seen = hashlib.sha256(text.encode()).hexdigest()
            if seen != self._unknown_plan_seen:
                self._unknown_plan_seen = seen
                log.warning("the latest plan is in a schema this version does not know (a newer planner's?): "
                            "planning as if there were none", stored=text[:200])
        return plan

    def wait_after_failures(self, now: float | None = None) -> float:
        """Seconds left before planning again, when moves of the latest plan failed (else 0)."""
        plan = self.latest_plan()
        if plan is None:
            return 0.0
        failed_at = [r.at(JobState.FAILED) or 0.0 for job_id in job_ids(plan)
                     if (r := self.jobs.load(job_id)).state is JobState.FAILED]
        if not failed_at:
            return 0.0
        now = time.time() if now is None else now
        return max(0.0, max(failed_at) + self.settings.planner.retry_after_failure - now)

    def skip_jobs_into_unusable_nodes(self, snapshot: ClusterSnapshot) -> list[str]:
        """Jobs not yet started whose node (a migration's target, a disk move's guest's node) went offline
        or into maintenance after the plan was made are skipped now, so the planner is free at once to plan
        the drain of that node."""
        unusable = {n.name: ("offline" if not n.online else "in maintenance")
                    for n in snapshot.nodes if not n.online or n.maintenance}
        skipped = []
        for job_id in sorted(self.jobs.active_jobs()):
            job = self.jobs.job(job_id)
            if job is None or job.needs_node not in unusable or self.jobs.load(job_id).in_flight:
                continue
            what = "target node" if job.needs_node == job.target else "node"
            reason = f"{what} {job.needs_node} is {unusable[job.needs_node]} since the plan was made"
            if self.jobs.transition(job, JobState.SKIPPED, reason, only_from=STARTABLE):
                log.info("job skipped", job_id=job_id, reason=reason)
                skipped.append(job_id)
        return skipped

    def save(self, plan: Plan, state: PlanState = PlanState.RUNNING, request_id: str | None = None,
             reason: str = "") -> None:
        self.fence()
        self.plans.save(plan, PlanStatus(plan_id=plan.plan_id, state=state, reason=reason, request_id=request_id))

    def enqueue(self, plan: Plan) -> list[str]:
        """One job per action, in the plan's order, each waiting (rq dependencies) for the actions the plan
        says it waits for (`after`: the engine's schedule, engine/schedule.py and cluster_plan.py):

        - a migration into a node waits for the earlier migrations out of that node (they free the room,
          and for anti-affinity the place, it counts on); moves out of one node, or into one node, may
          run in parallel up to the migrator's limits;
        - a disk move waits for the disk moves of the batch before its own (a source's space counts as
          free only once its move has ended: engine/storage_balance.py);
        - a guest's later action waits for its earlier one (which holds the guest's claim until it ends).

        A plan whose enqueueing an outage cut short is finished by `finish_enqueueing` (it stays in
        keys.PLANS_ENQUEUING until this returns): the jobs it made already keep their place, and those
        after them wait for them as they would have.
        """
        self.fence()
        self.redis.sadd(keys.PLANS_ENQUEUING, plan.plan_id)
        earlier: dict[int, str] = {}  # vmid -> its previous job in this plan (a parked guest moves twice)
        refused: set[int] = set()  # guests another job holds: none of their actions here is enqueued
        enqueued: list[str] = []
        queued: dict[int, str] = {}  # action index -> its live job (what later actions wait for)
        jobs = jobs_of(plan, self.settings)
        made = self.jobs.load_many([job.job_id for job in jobs])  # jobs an earlier, cut-short enqueue made
        for index, (action, job, record) in enumerate(zip(plan.actions, jobs, made, strict=True)):
            after = sorted({queued[i] for i in action.after if i in queued})
            if record:
                earlier[action.vmid] = job.job_id
                if record.live:
                    queued[index] = job.job_id
                    if record.state in STARTABLE and not RqJob.exists(job.job_id, self.redis):
                        # made, but the outage took its place on rq's queue: queue it now, as it would have been
                        enqueue_job(self.queue, self.settings, job, [a for a in after
                                                                     if RqJob.exists(a, self.redis)])
                continue
            if action.vmid in refused:
                continue
            if action.vmid not in earlier:
                holder = self.jobs.claim_guest(action.vmid, job.job_id)
                if holder is not None:
                    log.warning("guest already has a job, not enqueued", vmid=action.vmid, job_id=holder)
                    refused.add(action.vmid)
                    continue
            # No other job can claim the guest meanwhile, as no plan is made while jobs run.
            if not self.jobs.create(job):
                continue  # made meanwhile by another planner's enqueue of this plan
            try:
                enqueue_job(self.queue, self.settings, job, after)
            except RedisError:
                raise  # Redis is away: the job stays queued, and finish_enqueueing queues it once Redis is back
            except Exception as exc:
                # Never leave a job that no worker will ever see: end it, which frees the guest.
                self.jobs.transition(job, JobState.FAILED, f"could not enqueue: {exc}")
                raise
            queued[index] = job.job_id
            earlier[action.vmid] = job.job_id
            enqueued.append(job.job_id)
        self.redis.srem(keys.PLANS_ENQUEUING, plan.plan_id)
        return enqueued

    def finish_enqueueing(self) -> None:
        """Enqueue the rest of each plan whose enqueueing an outage cut short (Redis away mid-way), as far as
        it is still running: the actions its state says were chosen (an approval of some guests' moves)."""
        for raw in sorted(self.redis.smembers(keys.PLANS_ENQUEUING)):
            plan_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            plan, status = self.plans.plan(plan_id), self.plans.status(plan_id)
            if plan is None or status is None or status.state not in (PlanState.APPROVED, PlanState.RUNNING):
                self.redis.srem(keys.PLANS_ENQUEUING, plan_id)
                continue
            log.warning("finishing the enqueueing of a plan an outage cut short", plan_id=plan_id)
            self.enqueue(plan.of_guests(status.vmids))

    def run(self, stop: threading.Event) -> None:
        outage = Outage(log, "Redis", "the planner")
        group = Outage(log, "the snapshot stream's consumer group", "planning", problem="cannot be created")
        ready = False
        while not stop.is_set():
            try:
                if not ready:
                    self.ensure_group()
                    self.operator.ensure_group()
                    ready = True
                    group.ok()
                self.beat()
                # a beat within the step also says when it began: an operator's command waits for the plan
                # instead of calling the planner gone (cli/ops.ask)
                with kept_alive(partial(self.beat, busy_since=time.time()), self.settings.planner.max_step_seconds,
                                "planner", "planner.max_step_seconds"):
                    self._step()
                outage.ok()
            except NotLeader:  # another planner leads now: this one goes back to waiting
                return
            except ResponseError as exc:  # Redis refuses the group (a key of that name of another type?)
                group.failed(exc)
                stop.wait(5)
            except RedisError as exc:  # away, loading its data, restarted: wait and carry on
                outage.failed(exc)
                stop.wait(2)
            except Exception:  # a bad message or a bug: say where, keep planning
                log.exception("planning failed")
                stop.wait(2)

    def beat(self, busy_since: float | None = None) -> None:
        """Say this planner is alive, and the mode it plans in (both expire with the heartbeat)."""
        beat(self.redis, "planner")
        self.publish_mode(busy_since)

    def publish_mode(self, busy_since: float | None = None) -> None:
        """The mode this (leading) planner plans in, for `pvebalance status` and the page, which may
        read another config than the planner's; `busy_since`: the start of a long step under way."""
        bal = self.settings.balancing
        publish(self.redis, PlannerMode(mode_of_operation=bal.mode_of_operation, enable=bal.enable, instance=INSTANCE,
                                        at=time.time(), busy_since=busy_since))

    def _step(self) -> None:
        self.finish_enqueueing()
        self.operator.poll()
        try:
            snapshot = self.next_snapshot()
        except ResponseError:
            if self._group_exists():
                raise
            log.warning("snapshot stream or consumer group gone (Redis restarted empty?): creating it again")
            self.ensure_group(start="0")  # whatever arrived meanwhile; stale snapshots are refused
            return
        if snapshot is not None:
            self.handle(snapshot)


def run_planner(settings: Settings, stop: threading.Event) -> None:
    """The planner service: waits for Redis instead of exiting, then plans until stopped."""
    redis = connect_waiting(settings.redis, log, stop)
    if redis is None:
        return
    planner = Planner(redis, settings)
    leader = Leader(redis, "planner", settings.leader.lock_ttl)  # one planner plans at a time
    planner.fence = leader.fence
    leader.lead(stop, planner.run)

