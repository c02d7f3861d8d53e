"""Pre-flight: is this migration still wanted and allowed, checked against the live cluster.

Each check either passes or raises Skip (the move is no longer wanted or allowed: the guest moved,
the target went offline or into maintenance, Proxmox does not allow the target) or Failed (it
cannot be done: the guest stayed locked). Nothing here changes the cluster.

It reads only what the move touches, not the whole cluster (10,000 guests are megabytes):
the guest's `status/current` on its source node, the target's node entry (online, maintenance),
its `/nodes/{target}/status` and guest lists (its figures), then Proxmox's own migrate pre-check,
then the engine's rule families on the guest's tags, its pool and the HA rules as they are now
(recheck.py: /cluster/ha/rules, and the pools the config gives rules to), and last the backup jobs
and the backup tasks running on the source (backups.py): a move their backup is about to hold waits.
Only a guest missing from its source is looked for in the cluster-wide list, to say where it went.
The reads are independent and made at once, with the guest's migration task list (which tells the
POST's task from earlier ones).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from pvebalance.actions.base import Deferred, Failed, Gone, Skip, config_missing
from pvebalance.engine import Policy, fits, guest_figures, node_figures
from pvebalance.engine.fit import NodeFigures, holding_in_flight, storage_figures
from pvebalance.shared.apianswers import DumpError, read_pool_detail
from pvebalance.shared.apidump import read_storages
from pvebalance.shared.apireads import ReadLimits, read_all
from pvebalance.shared.config import Settings
from pvebalance.shared.jobs import MigrationJob
from pvebalance.shared.logging import get_logger
from pvebalance.shared.models import GuestType, InFlightMigration
from pvebalance.shared.proxmox import MALFORMED, ProxmoxClient, ProxmoxError

from .backups import BACKUP_JOBS, backup_wait
from .recheck import HA_RULES, pool_paths, rule_refusal

log = get_logger("pvebalance.migrator")

OFFLINE_NODE = 595  # a call proxied to a node that does not answer
MIGRATION_TASKS = ("qmigrate", "vzmigrate", "hamigrate")


@dataclass(frozen=True)
class Cleared:
    """What a pre-flight that passed read: what the POST needs and what it is checked against after."""
    entry: dict[str, Any]  # the guest, as its /cluster/resources entry
    params: dict[str, Any]  # the migrate POST's parameters
    known_tasks: set[str]  # UPIDs of the guest's migration tasks before the POST


def _find(guests: list[dict[str, Any]], vmid: int) -> dict[str, Any] | None:
    for entry in guests:
        if str(entry.get("vmid")) == str(vmid):
            if not isinstance(entry.get("node"), str):
                raise ProxmoxError(f"/cluster/resources: guest {vmid} has no node", kind=MALFORMED)
            return dict(entry)
    return None


def _entries(answer: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(answer, list) or not all(isinstance(e, dict) for e in answer):
        raise ProxmoxError(f"{what}: the answer is not a list of objects", kind=MALFORMED)
    return answer


def as_entry(current: Any, node: str, guest_type: GuestType, what: str) -> dict[str, Any]:
    """A guest's status/current as the /cluster/resources entry the checks read (node, type, maxcpu, hastate)."""
    if not isinstance(current, dict):
        raise ProxmoxError(f"{what}: the answer is not an object", kind=MALFORMED)
    entry = {**current, "node": node, "type": guest_type.value}
    if "maxcpu" not in entry and "cpus" in entry:
        entry["maxcpu"] = entry["cpus"]  # status/current says `cpus` where /cluster/resources says `maxcpu`
    ha = current.get("ha")
    if isinstance(ha, dict) and ha.get("managed"):
        entry["hastate"] = ha.get("state")
    return entry


class Preflight:
    def __init__(self, client: ProxmoxClient, settings: Settings, api: Any,
                 sleep: Callable[[float], None] = time.sleep,
                 in_flight: Callable[[str], list[InFlightMigration]] | None = None) -> None:
        self.client = client
        self.settings = settings
        self.policy = Policy.from_settings(settings.balancing, settings.proxmox_cluster)
        self.api = api  # JobRunner._api: waits out outages, within a patience
        self.sleep = sleep
        self.in_flight = in_flight  # the other migrations in flight (JobStore.in_flight_migrations)

    def guest_on(self, node: str, guest_type: GuestType, vmid: int) -> dict[str, Any] | None:
        """The guest's entry read from `node` (its status/current), or None when its config is not there."""
        path = f"/nodes/{node}/{guest_type.value}/{vmid}/status/current"
        try:
            return as_entry(self.client.get(path), node, guest_type, path)
        except ProxmoxError as exc:
            if config_missing(exc):
                return None
            raise

    def guest_entry(self, vmid: int, guest_type: GuestType | None = None,
                    nodes: Iterable[str] = ()) -> dict[str, Any] | None:
        """Where the guest is: looked for on `nodes` first (one small read each), then in the cluster-wide list."""
        if guest_type is not None:
            for node in nodes:
                entry = self.guest_on(node, guest_type, vmid)
                if entry is not None:
                    return entry
        return _find(_entries(self.client.get("/cluster/resources", type="vm"), "/cluster/resources"), vmid)

    def clear(self, job: MigrationJob, patience: float, backups: bool = True) -> Cleared:
        """Every check passed: the guest's entry, the POST's parameters and the guest's migration tasks
        so far. Waits (bounded) while the guest is locked; a transient failure of any read (within
        `patience`) reads everything again. Deferred when a backup holds the move (unless `backups` is off)."""
        deadline = time.monotonic() + self.settings.migrator.task_timeout_base
        while True:
            cleared: Cleared = self.api(lambda: self._checked(job, backups), patience)
            if not cleared.entry.get("lock"):
                return cleared
            if time.monotonic() > deadline:
                raise Failed(f"guest {job.vmid} stayed locked ({cleared.entry['lock']})")
            log.info("guest is locked by another task, waiting", lock=cleared.entry["lock"])
            self.sleep(self.settings.migrator.poll_interval)

    def look_ahead(self, job: MigrationJob) -> None:
        """The same reads once, before waiting for a slot: a move that can no longer happen (Gone) ends
        now instead of after the wait. Anything else may change by the time a slot is free and is checked
        again then. The reads also leave the connections the pre-flight uses open: a job forked for its
        run starts with none, and opening seven at once after the slot came took 50-90 ms of the time
        between one migration's end and the next one's start."""
        try:
            self.api(lambda: self._checked(job), 0.0)
        except Gone:
            raise
        except (Skip, Failed, Deferred, ProxmoxError) as exc:
            log.debug("look-ahead pre-flight: checked again once a slot is free", reason=str(exc))

    def migration_tasks(self, job: MigrationJob) -> list[dict[str, Any]]:
        """The guest's migration tasks on its source node, running or finished, oldest first."""
        return _migration_tasks(self.client.get(f"/nodes/{job.source}/tasks", vmid=job.vmid, source="all",
                                                limit=50), job)

    def _checked(self, job: MigrationJob, backups: bool = True) -> Cleared:
        # The reads are independent, so they are made at once: one after another they are most of the
        # time between one migration's end and the next one's start on a slot (~7 x 10-50 ms).
        source, target = job.source, job.target
        guest_path = f"/nodes/{source}/{job.guest_type.value}/{job.vmid}"
        status_path = f"{guest_path}/status/current"
        reads: dict[str, tuple[str, Callable[[], Any]]] = {
            "guest": (source, lambda: self.client.get(status_path)),
            "tasks": (source, lambda: self.migration_tasks(job)),
            "nodes": ("", lambda: self.client.get("/cluster/resources", type="node")),
            "status": (target, lambda: self.client.get(f"/nodes/{target}/status")),
            "qemu": (target, lambda: self.client.get(f"/nodes/{target}/qemu")),
            "lxc": (target, lambda: self.client.get(f"/nodes/{target}/lxc")),
        }
        if job.guest_type is GuestType.QEMU:
            reads["precheck"] = (source, lambda: self.client.get(f"{guest_path}/migrate", target=target))
        if job.local_disks:  # the storages its disks are copied onto, with what they hold now
            reads["storages"] = ("", lambda: self.client.get("/cluster/resources", type="storage"))
        # What the rule families need beyond the reads above (recheck.py says why that is enough).
        rule_reads = [HA_RULES, *pool_paths(self.policy)]
        for path in rule_reads:
            reads[path] = ("", partial(self.client.get, path))
        guard = self.settings.migrator.backup_guard_minutes if backups else 0.0
        if guard > 0:
            reads[BACKUP_JOBS] = ("", partial(self.client.get, BACKUP_JOBS))
            reads["backup-tasks"] = (source, partial(self.client.get, f"/nodes/{source}/tasks", typefilter="vzdump",
                                                     source="active"))
        answers = read_all(reads, lambda key: reads[key][0], lambda key: reads[key][1](),
                           ReadLimits(total=len(reads), per_node=3))
        entry = self._guest(job, answers["guest"], status_path)
        node = self._target(job, answers)
        # The engine's own answer to 'does it fit', on the live figures: reserves, max_node_usage, vCPUs,
        # and the target's storages for the local disks the job copies.
        try:
            arriving = replace(guest_figures(entry), disks=tuple(sorted(job.local_disks.items())))
            why_not = fits(arriving, node, self.policy)
        except (KeyError, TypeError, ValueError):
            raise ProxmoxError(f"guest {job.vmid} on {source} has no usable figures", kind=MALFORMED) from None
        if why_not is not None:
            raise Skip(f"target node {target} no longer has room for {job.name}: {why_not}")
        params = self._params(job, entry, answers.get("precheck"))
        nodes = _entries(_value(answers["nodes"]), "/cluster/resources")
        there = [g for kind in ("qemu", "lxc") for g in _entries(_value(answers[kind]), f"/nodes/{target}/{kind}")]
        why = rule_refusal(job, self.policy, entry, nodes, there, answers[HA_RULES],
                           {path: answers[path] for path in rule_reads[1:]})
        if why is not None:
            raise Skip(why)
        # Last: only a move allowed now waits for a backup (one no longer wanted ends at once).
        if guard > 0 and (wait := backup_wait(_value(answers[BACKUP_JOBS]), _value(answers["backup-tasks"]), job,
                                              guard, time.time(), self._pool_members)) is not None:
            raise Deferred(*wait)
        return Cleared(entry, params, {str(t["upid"]) for t in _value(answers["tasks"])})

    def _pool_members(self, pool: str) -> frozenset[int]:
        """The guests of a pool a backup job names (read only when such a job would guard the move)."""
        path = f"/pools/{pool}"
        try:
            detail = read_pool_detail(self.client.get(path), path)
        except ProxmoxError as exc:
            if config_missing(exc):
                return frozenset()  # the pool is gone: the job backs nobody up by it
            raise
        except DumpError as exc:
            raise ProxmoxError(str(exc), kind=MALFORMED) from None
        return frozenset(m.vmid for m in detail.members if m.type in ("qemu", "lxc") and m.vmid is not None)

    def _guest(self, job: MigrationJob, answer: Any, path: str) -> dict[str, Any]:
        """The guest's entry on its source (read from `path`); Gone saying where it went when it is not there."""
        if not (isinstance(answer, ProxmoxError) and config_missing(answer)):
            return as_entry(_value(answer), job.source, job.guest_type, path)
        where = self.guest_entry(job.vmid, job.guest_type, nodes=[job.target])
        if where is None:
            raise Gone(f"guest {job.vmid} no longer exists")
        if where["node"] == job.target:
            raise Gone(f"guest {job.vmid} is already on {job.target}")
        raise Gone(f"guest {job.vmid} was moved to {where['node']} since the plan was made")

    def _target(self, job: MigrationJob, answers: dict[str, Any]) -> NodeFigures:
        """The target as it stands: Skip when it is gone, offline or in maintenance, else its figures with
        its running guests and the memory migrations in flight hold on it (the engine's NodeFigures)."""
        what = f"/nodes/{job.target}"
        nodes = {n.get("node"): n for n in _entries(_value(answers["nodes"]), "/cluster/resources")}
        target = nodes.get(job.target)
        if target is None:
            raise Gone(f"target node {job.target} is not in the cluster any more")
        if target.get("status") != "online" or target.get("hastate") == "maintenance":
            raise Skip(f"target node {job.target} is offline or in maintenance")
        try:
            status = _value(answers["status"])
            guests = [{**g, "node": job.target, "maxcpu": g.get("maxcpu", g.get("cpus"))}
                      for kind in ("qemu", "lxc") for g in _entries(_value(answers[kind]), f"{what}/{kind}")]
        except ProxmoxError as exc:
            if exc.status == OFFLINE_NODE:
                raise Skip(f"target node {job.target} is offline or in maintenance") from None
            raise
        try:
            figures = {"node": job.target, "maxmem": status["memory"]["total"], "mem": status["memory"]["used"],
                       "maxcpu": status["cpuinfo"]["cpus"]}
            node = node_figures(figures, guests)
        except (KeyError, TypeError, ValueError):
            raise ProxmoxError(f"{what}/status: node {job.target} has no usable figures", kind=MALFORMED) from None
        if "storages" in answers:
            try:
                storages = storage_figures(read_storages(_value(answers["storages"])))
            except DumpError as exc:
                raise ProxmoxError(str(exc), kind=MALFORMED) from None
            node = replace(node, storages=storages.get(job.target, {}))
        return self.holding_in_flight(node, job, guests)

    def holding_in_flight(self, node: NodeFigures, job: MigrationJob, guests: list[dict[str, Any]]) -> NodeFigures:
        """The target with the memory other migrations in flight hold on it until they end: one coming
        onto it holds the guest's memory there from its start, before the guest is listed on it (a
        guest it lists is in its figures already). Same counting as the engine's (fit.holding_in_flight)."""
        if self.in_flight is None:
            return node
        listed = [int(g["vmid"]) for g in guests if g.get("node") == node.name and str(g.get("vmid", "")).isdigit()]
        return holding_in_flight(node, self.in_flight(job.job_id), listed)

    def _params(self, job: MigrationJob, entry: dict[str, Any], precheck: Any) -> dict[str, Any]:
        """The POST's parameters, once Proxmox's own pre-check (qemu) says the target may take the guest."""
        params: dict[str, Any] = {"target": job.target}
        running = entry.get("status") == "running"
        if job.guest_type is not GuestType.QEMU:
            params["restart"] = running
            return params
        if running and not job.online:
            # Only a live migration moves a running VM (PVE: "can't migrate running VM without --online"),
            # and the plan did not plan one: the memory it holds on the target was not counted, in the
            # plan nor in the migrations in flight (they count what the job says), so it is not sent.
            why = ("balancing.live is off" if not self.settings.balancing.live
                   else "it was stopped when the plan was made")
            raise Skip(f"guest {job.vmid} runs and {why}: Proxmox moves a running VM only live; it stays")
        check = _value(precheck)
        if not isinstance(check, dict):
            raise Failed("the migrate pre-check answer is not an object")
        if job.target not in check.get("allowed_nodes", [job.target]):
            reasons = check.get("not_allowed_nodes", {}).get(job.target)
            raise Skip(f"Proxmox does not allow {job.target} for this guest: {reasons}")
        if check.get("local_resources") and running:
            raise Skip(f"guest uses local devices: {', '.join(check['local_resources'])}")
        if check.get("local_disks"):
            if not job.with_local_disks:
                raise Skip("guest has local disks and with_local_disks is off")
            params["with-local-disks"] = True
        params["online"] = running
        return params


def _value(answer: Any) -> Any:
    """A read's answer, or the ProxmoxError it ended with raised."""
    if isinstance(answer, ProxmoxError):
        raise answer
    return answer


def _migration_tasks(answer: Any, job: MigrationJob) -> list[dict[str, Any]]:
    if not isinstance(answer, list):
        raise ProxmoxError(f"task list of {job.source}: the answer is not a list", kind=MALFORMED)
    ours = [t for t in answer if isinstance(t, dict) and t.get("type") in MIGRATION_TASKS
            and str(t.get("id")) == str(job.vmid) and t.get("upid")]
    return sorted(ours, key=lambda t: (float(t.get("starttime", 0)), str(t["upid"])))
