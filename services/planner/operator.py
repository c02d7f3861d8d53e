"""The planner's side of operator requests: drain, undrain, rebalance, approve, reject, pause, resume.

Each request is read once from the request stream (a consumer group), checked against the latest
snapshot, and moved on to accepted, refused, done or failed with a reason a person can act on. A
refused request changes nothing. Drains are held in Redis (`keys.DRAINED`) until undrained: the
planner adds those nodes to the maintenance nodes of every plan, so nothing is balanced onto them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from pvebalance.engine import Policy, plan_balance
from pvebalance.shared import keys
from pvebalance.shared.holds import hold_rejected
from pvebalance.shared.jobs import actions_with_jobs
from pvebalance.shared.logging import get_logger
from pvebalance.shared.models import ClusterSnapshot, Plan
from pvebalance.shared.plans import PlanState
from pvebalance.shared.policy_now import drained_nodes, snapshot_now
from pvebalance.shared.requests import OperatorRequest, RequestAction, RequestState, RequestStore
from pvebalance.shared.streams import ensure_group, group_exists
from pvebalance.shared.words import actions_in_words, plural

if TYPE_CHECKING:
    from .planner import Planner

log = get_logger("pvebalance.planner")


def paused(redis: Any) -> dict[str, Any] | None:
    raw = redis.get(keys.PAUSED)
    return json.loads(raw) if raw else None


def drain_only(policy: Policy) -> Policy:
    """The policy for a plan that only repairs rules (a drain): the balance phase never runs, and the
    plan holds no move but those a rule asks for."""
    return replace(policy, repair_only=True)


def leaving(plan: Plan, nodes: set[str]) -> list[int]:
    return [m.vmid for m in plan.migrations if m.source in nodes]


class RequestHandler:
    def __init__(self, planner: Planner) -> None:
        self.planner = planner
        self.redis = planner.redis
        self.store = RequestStore(planner.redis, planner.retention)
        self.handlers: dict[RequestAction, Callable[[OperatorRequest, ClusterSnapshot | None], None]] = {
            RequestAction.DRAIN: self.drain, RequestAction.UNDRAIN: self.undrain,
            RequestAction.REBALANCE: self.rebalance, RequestAction.APPROVE: self.approve,
            RequestAction.REJECT: self.reject, RequestAction.PAUSE: self.pause, RequestAction.RESUME: self.resume,
        }

    # --- reading the stream ----------------------------------------------------------------------

    def ensure_group(self) -> None:
        ensure_group(self.redis, keys.REQUEST_STREAM, keys.REQUESTS_GROUP, start="0")

    def poll(self) -> int:
        """Handle every request waiting in the stream; how many there were."""
        try:
            # Requests read before but never acknowledged first (an outage cut their handling short, or the
            # planner that read them stopped): one planner leads, so it takes them all over.
            claimed = self.redis.xautoclaim(keys.REQUEST_STREAM, keys.REQUESTS_GROUP, self.planner.consumer,
                                            min_idle_time=0, start_id="0-0", count=50)
            taken = [(entry_id, fields) for entry_id, fields in claimed[1] if fields]
            entries = ([[keys.REQUEST_STREAM, taken]] if taken else
                       self.redis.xreadgroup(keys.REQUESTS_GROUP, self.planner.consumer, {keys.REQUEST_STREAM: ">"},
                                             count=50))
        except ResponseError:
            if group_exists(self.redis, keys.REQUEST_STREAM, keys.REQUESTS_GROUP):
                raise
            log.warning("request stream or its consumer group gone (Redis restarted empty?): creating it again")
            self.ensure_group()
            return 0
        if not entries:
            return 0
        messages = entries[0][1]
        snapshot = snapshot_now(self.redis)
        for entry_id, fields in messages:
            raw = fields.get(b"request") or fields.get("request")
            try:
                request = OperatorRequest.model_validate_json(raw)
            except ValueError as exc:
                log.warning("unreadable operator request skipped", entry=str(entry_id), error=str(exc)[:200])
            else:
                self.handle(request, snapshot)
            self.redis.xack(keys.REQUEST_STREAM, keys.REQUESTS_GROUP, entry_id)
        return len(messages)

    def handle(self, request: OperatorRequest, snapshot: ClusterSnapshot | None) -> None:
        bound = log.bind(request_id=request.request_id, action=request.action.value, who=request.who)
        status = self.store.status(request.request_id)
        if status is not None and status.state != RequestState.PENDING:
            return  # read before (the stream is at-least-once): it was handled
        try:
            self.handlers[request.action](request, snapshot)
        except RedisError:
            raise  # Redis away: unacknowledged, the request is handled again once Redis is back (poll)
        except Exception as exc:  # a bug: the request must still end, and say so
            bound.exception("operator request failed")
            self.store.settle(request.request_id, RequestState.FAILED, f"internal error: {exc}")
        final = self.store.status(request.request_id)
        if final is not None:
            bound.info("operator request " + final.state.value, reason=final.reason)

    def refuse(self, request: OperatorRequest, reason: str, details: list[str] | None = None) -> None:
        self.store.settle(request.request_id, RequestState.REFUSED, reason, details=details)

    def fresh(self, request: OperatorRequest, snapshot: ClusterSnapshot | None) -> ClusterSnapshot | None:
        """The latest snapshot if it is young enough to act on; else the request is refused."""
        limit = self.planner.settings.planner.max_snapshot_age
        if snapshot is None:
            self.refuse(request, "no snapshot of the cluster yet: is the collector running?")
            return None
        if snapshot.age_seconds() > limit:
            self.refuse(request, f"the latest snapshot is {snapshot.age_seconds():.0f} s old (more than "
                        f"planner.max_snapshot_age {limit:g} s): is the collector running?")
            return None
        return snapshot

    # --- drain and undrain -----------------------------------------------------------------------

    def drain(self, request: OperatorRequest, snapshot: ClusterSnapshot | None) -> None:
        snapshot = self.fresh(request, snapshot)
        if snapshot is None:
            return
        node = self.known_node(request, snapshot)
        if node is None:
            return
        current = drained_nodes(self.redis).get(node)
        if current is not None and (current.get("include_stopped") or not request.include_stopped):
            self.join_drain(request, node, current, snapshot)
            return
        drained = set(drained_nodes(self.redis)) | {node}
        cluster = self.planner.settings.proxmox_cluster
        held = drained | set(cluster.maintenance_nodes) | set(cluster.ignore_nodes)  # none is a drain target
        others = [n.name for n in snapshot.nodes if n.online and n.usable and not n.maintenance and n.name not in held]
        if not others:
            self.refuse(request, f"{node} is the last node that could take guests: nowhere to drain it to")
            return
        plan = self.planner.drain_plan(snapshot, drained, include_stopped={node} if request.include_stopped else set())
        stuck = [u for u in plan.unmet if u.rule == f"maintenance {node}"]
        if stuck or plan.violations:
            details = [f"guest {', '.join(map(str, u.vmids))}: {u.reason}" for u in stuck] + plan.violations
            self.refuse(request, f"the other nodes cannot take every guest of {node}: {len(details)} do not fit",
                        details)
            return
        self.redis.hset(keys.DRAINED, node, json.dumps({
            "request_id": request.request_id, "who": request.who, "at": time.time(),
            "include_stopped": request.include_stopped}))
        moves, stay = leaving(plan, {node}), _stopped_stay(snapshot, node, request)
        self.store.settle(request.request_id, RequestState.ACCEPTED,
                          f"{node} is drained: {plural(len(moves), 'guest')} to move{stay}", details=[])
        if self.planner.unsettled(snapshot) is None:  # else the planner drains on the next settled snapshot
            self.planner.run_drains(snapshot)

    def join_drain(self, request: OperatorRequest, node: str, current: dict[str, Any],
                   snapshot: ClusterSnapshot) -> None:
        """A drain of a node that is drained already follows that drain: it ends when the node is empty,
        as the first one does (its own migrations lock the guests, which a fresh check would refuse)."""
        include = bool(current.get("include_stopped"))
        left = [g for g in snapshot.guests if g.node == node and (g.running or include)]
        since = f"drained by {current.get('who', '?')} at {_clock(current['at'])}" if current.get("at") else "drained"
        stay = _stopped_stay(snapshot, node, request)
        if not left:
            self.store.settle(request.request_id, RequestState.DONE, f"{node} is {since} and {_empty(stay)}")
            return
        first = next((s for s in self.store.open_requests(RequestAction.DRAIN) if s.request.node == node), None)
        self.store.settle(request.request_id, RequestState.ACCEPTED,
                          f"{node} is {since} (request {current.get('request_id', '?')}); following that drain: "
                          f"{plural(len(left), 'guest')} left to move{stay}", plan_id=first.plan_id if first else None)

    def undrain(self, request: OperatorRequest, snapshot: ClusterSnapshot | None) -> None:
        node = request.node or ""
        if node not in drained_nodes(self.redis):
            self.refuse(request, f"{node} is not drained" + self._known_hint(node, snapshot))
            return
        self.redis.hdel(keys.DRAINED, node)
        for open_drain in self.store.open_requests(RequestAction.DRAIN):
            if open_drain.request.node == node:
                self.store.settle(open_drain.request.request_id, RequestState.FAILED,
                                  f"undrained by {request.request_id} before {node} was empty")
        self.store.settle(request.request_id, RequestState.DONE, f"{node} may take guests again")

    def known_node(self, request: OperatorRequest, snapshot: ClusterSnapshot) -> str | None:
        names = sorted(n.name for n in snapshot.nodes)
        by_lower = {n.lower(): n for n in names}
        node = by_lower.get((request.node or "").lower())
        if node is None:
            self.refuse(request, f"unknown node {request.node!r} (the cluster's nodes: {', '.join(names)})")
        return node

    @staticmethod
    def _known_hint(node: str, snapshot: ClusterSnapshot | None) -> str:
        if snapshot is not None and node not in {n.name for n in snapshot.nodes}:
            return f" (and not a node of the cluster: {', '.join(sorted(n.name for n in snapshot.nodes))})"
        return ""

    def settle_drains(self, snapshot: ClusterSnapshot) -> None:
        """Drains whose node is empty are done; drains whose moves failed, failed."""
        for status in self.store.open_requests(RequestAction.DRAIN):
            node = status.request.node or ""
            left = [g.vmid for g in snapshot.guests if g.node == node and (g.running or status.request.include_stopped)]
            if not left:
                self.store.settle(status.request.request_id, RequestState.DONE,
                                  f"{node} is {_empty(_stopped_stay(snapshot, node, status.request))}")
                continue
            if status.plan_id:
                failed = self.planner.failed_moves(status.plan_id)
                if failed:
                    self.store.settle(status.request.request_id, RequestState.FAILED,
                                      f"{plural(len(failed), 'move')} off {node} failed", details=failed)

    # --- plans: rebalance, approve, reject -------------------------------------------------------

    def rebalance(self, request: OperatorRequest, snapshot: ClusterSnapshot | None) -> None:
        snapshot = self.fresh(request, snapshot)
        if snapshot is None:
            return
        pause = paused(self.redis)
        if pause:
            self.refuse(request, f"balancing is paused ({pause.get('reason') or 'no reason given'}): "
                        "`pvebalance resume` first")
            return
        unsettled = self.planner.unsettled(snapshot)
        if unsettled is not None:
            self.refuse(request, f"the latest snapshot was {unsettled}: ask again once the collector has read "
                        "a later one")
            return
        plan = plan_balance(snapshot, self.planner.policy())
        if request.dry_run:
            # Shown, never enqueued: not a recommended plan anyone could approve, nor one that supersedes
            # the plan an operator may be reading.
            self.planner.save(plan, PlanState.DRY_RUN, request.request_id,
                              reason=f"dry run asked by {request.who}: never enqueued")
        else:
            self.planner.recommend(plan, request.request_id)
        self.store.settle(request.request_id, RequestState.DONE, f"{plan.outcome}: {plan.outcome_reason}",
                          plan_id=plan.plan_id)

    def approve(self, request: OperatorRequest, snapshot: ClusterSnapshot | None) -> None:
        plan = self.planner.plans.plan(request.plan_id or "")
        status = self.planner.plans.status(request.plan_id or "")
        if plan is None or status is None:
            self.refuse(request, f"no plan {request.plan_id} ({self.planner.retention.plans_kept()}; "
                        "`pvebalance plans` lists them)")
            return
        if self.planner.settings.balancing.mode_of_operation == "dry-run":
            self.refuse(request, "balancing.mode_of_operation is dry-run: plans are never run")
            return
        if status.request_id == request.request_id and status.state in (PlanState.APPROVED, PlanState.RUNNING):
            # This request again: an outage cut its handling short once the plan was approved, and the stream
            # hands it back; the plan runs (the planner finishes enqueueing it), so the request ends as it would have.
            self._run_approved(request, plan.of_guests(status.vmids))
            return
        if status.state != PlanState.RECOMMENDED:
            self.refuse(request, f"plan {plan.plan_id} is {status.state.value}" +
                        (f": {status.reason}" if status.reason else "") + "; only a recommended plan can be approved")
            return
        if request.vmids is not None:
            unknown = sorted(set(request.vmids) - {m.vmid for m in plan.actions})
            if unknown:
                self.refuse(request, f"plan {plan.plan_id} has no move of {'guest' if len(unknown) == 1 else 'guests'} "
                                     f"{', '.join(map(str, unknown))}")
                return
        if not plan.of_guests(request.vmids).actions:
            self.planner.plans.set_state(plan.plan_id, PlanState.DONE, "approved with nothing to move")
            self.store.settle(request.request_id, RequestState.DONE, f"plan {plan.plan_id} has no move: nothing to do",
                              plan_id=plan.plan_id)
            return
        active = self.planner.jobs.active_jobs()
        if active:
            self.refuse(request, f"{plural(len(active), 'migration')} of an earlier plan still run; approve again when "
                        "they end (`pvebalance jobs`)")
            return
        self.planner.plans.set_state(plan.plan_id, PlanState.APPROVED, f"approved by {request.who}",
                                     request_id=request.request_id, vmids=request.vmids)
        self._run_approved(request, plan.of_guests(request.vmids))

    def _run_approved(self, request: OperatorRequest, approved: Plan) -> None:
        """Enqueue an approved plan's chosen actions (those an earlier, cut-short handling made stay as they are)
        and say how many run."""
        self.planner.enqueue(approved)
        pairs = actions_with_jobs(approved)
        made = [a for (a, _), record in zip(pairs, self.planner.jobs.load_many([j for _, j in pairs]), strict=True)
                if record]
        self.planner.plans.set_state(approved.plan_id, PlanState.RUNNING, f"{plural(len(made), 'job')} enqueued")
        self.store.settle(request.request_id, RequestState.DONE, f"{actions_in_words(made)} enqueued",
                          plan_id=approved.plan_id)

    def reject(self, request: OperatorRequest, snapshot: ClusterSnapshot | None) -> None:
        status = self.planner.plans.status(request.plan_id or "")
        if status is None:
            self.refuse(request, f"no plan {request.plan_id}")
            return
        if status.state != PlanState.RECOMMENDED:
            self.refuse(request, f"plan {request.plan_id} is {status.state.value}; only a recommended plan can be "
                        "rejected")
            return
        why = f": {request.reason}" if request.reason.strip() else ""
        self.planner.plans.set_state(status.plan_id, PlanState.REJECTED, f"rejected by {request.who}{why}",
                                     request_id=request.request_id)
        plan = self.planner.plans.plan(status.plan_id)
        hold = self.planner.settings.planner.reject_hold
        held = hold_rejected(self.redis, plan, request.who, hold) if plan is not None else 0
        self.store.settle(request.request_id, RequestState.DONE, f"plan {status.plan_id} rejected" + (
            f"; {'its move is' if held == 1 else f'its {held} moves are'} not planned again until "
            f"{_clock(time.time() + hold)} (planner.reject_hold)" if held else ""), plan_id=status.plan_id)

    # --- pause and resume ------------------------------------------------------------------------

    def pause(self, request: OperatorRequest, snapshot: ClusterSnapshot | None) -> None:
        """Pause, or extend the pause in force: a second pause never ends the first one sooner (refused:
        `resume` first), and keeps its reason unless it gives one."""
        now = time.time()
        until = now + request.seconds if request.seconds else None
        current = paused(self.redis)
        reason = request.reason
        if current is not None:
            held = current.get("until")
            if until is not None and (held is None or until < held):  # it would end the pause sooner
                ends = f"until {_clock(held)}" if held is not None else "until `resume`"
                self.refuse(request, f"balancing is paused {ends} by {current.get('who', '?')}"
                            f"{_why(current.get('reason', ''))}: this pause would end sooner; `resume` first, "
                            "or pause for longer")
                return
            reason = reason.strip() or current.get("reason", "")
        value = json.dumps({"request_id": request.request_id, "who": request.who, "reason": reason,
                            "since": current.get("since", now) if current else now, "until": until})
        if until is not None:
            self.redis.set(keys.PAUSED, value, ex=max(1, int(until - now)))
        else:
            self.redis.set(keys.PAUSED, value)
        ends = f"until {_clock(until)}" if until is not None else "until `pvebalance resume`"
        verb = "pause extended" if current is not None else "balancing paused"
        self.store.settle(request.request_id, RequestState.DONE, f"{verb} {ends}{_why(reason)}")

    def resume(self, request: OperatorRequest, snapshot: ClusterSnapshot | None) -> None:
        if not self.redis.delete(keys.PAUSED):
            self.store.settle(request.request_id, RequestState.DONE, "balancing was not paused")
            return
        self.store.settle(request.request_id, RequestState.DONE, "balancing resumed")



def _clock(epoch: float) -> str:
    """A moment as the planner's clock reads it, with its zone: requests are read on other machines."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


def _why(reason: str) -> str:
    return f" ({reason})" if reason.strip() else ""


def _stopped_stay(snapshot: ClusterSnapshot, node: str, request: OperatorRequest) -> str:
    """What a drain without --include-stopped leaves on the node, said, so "empty" is not read as empty."""
    if request.include_stopped:
        return ""
    stopped = sum(1 for g in snapshot.guests if g.node == node and not g.running)
    if not stopped:
        return ""
    verb = "stays" if stopped == 1 else "stay"
    return f"; {stopped} stopped guest{'' if stopped == 1 else 's'} {verb} on it (`drain --include-stopped` moves them)"


def _empty(stay: str) -> str:
    return f"empty of running guests{stay}" if stay else "empty"
