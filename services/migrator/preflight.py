"""Pre-flight: is this migration still wanted and allowed, checked against the live cluster.

Each check either passes or raises Skip (the move is no longer wanted or allowed: the guest moved,
the target went offline or into maintenance, Proxmox does not allow the target) or Failed (it
cannot be done: the guest stayed locked). Nothing here changes the cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pvebalance.engine import NodeFigures, Policy, fits, guest_figures, node_figures
from pvebalance.engine.fit import holding_in_flight
from pvebalance.shared.config import Settings
from pvebalance.shared.logging import get_logger
from pvebalance.shared.models import GuestType, InFlightMigration, MigrationJob
from pvebalance.shared.proxmox import MALFORMED, ProxmoxClient, ProxmoxError

log = get_logger("pvebalance.migrator")


class Skip(Exception):
    """The migration is no longer wanted or allowed; the job ends as skipped with this reason."""


class Failed(Exception):
    """The migration did not happen or did not land; the job ends as failed with this reason."""


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


class Preflight:
    def __init__(self, client: ProxmoxClient, settings: Settings, api: Any,
                 sleep: Callable[[float], None] = time.sleep,
                 in_flight: Callable[[str], list[InFlightMigration]] | None = None) -> None:
        self.client = client
        self.settings = settings
        self.policy = Policy.from_settings(settings.balancing, settings.proxmox_cluster)
        self.api = api  # MigrationRunner._api: waits out outages, within a patience
        self.sleep = sleep
        self.in_flight = in_flight  # the other migrations in flight (JobStore.in_flight_migrations)

    def guest_entry(self, vmid: int) -> dict[str, Any] | None:
        return _find(self._guests(), vmid)

    def _guests(self) -> list[dict[str, Any]]:
        return _entries(self.client.get("/cluster/resources", type="vm"), "/cluster/resources")

    def _checked(self, job: MigrationJob) -> dict[str, Any]:
        guests = self._guests()
        entry = _find(guests, job.vmid)
        if entry is None:
            raise Skip(f"guest {job.vmid} no longer exists")
        if entry["node"] == job.target:
            raise Skip(f"guest {job.vmid} is already on {job.target}")
        if entry["node"] != job.source:
            raise Skip(f"guest {job.vmid} was moved to {entry['node']} since the plan was made")
        nodes = {n.get("node"): n for n in _entries(self.client.get("/cluster/resources", type="node"),
                                                    "/cluster/resources")}
        target = nodes.get(job.target)
        if target is None:
            raise Skip(f"target node {job.target} is not in the cluster any more")
        if target.get("status") != "online" or target.get("hastate") == "maintenance":
            raise Skip(f"target node {job.target} is offline or in maintenance")
        # The engine's own answer to 'does it fit', on the live figures: reserves, max_node_usage, vCPUs.
        try:
            why_not = fits(guest_figures(entry), self.holding_in_flight(node_figures(target, guests), job, guests),
                           self.policy)
        except (KeyError, TypeError, ValueError):
            raise ProxmoxError(f"/cluster/resources: node {job.target} or guest {job.vmid} has no usable figures",
                               kind=MALFORMED) from None
        if why_not is not None:
            raise Skip(f"target node {job.target} no longer has room for {job.name}: {why_not}")
        return entry

    def holding_in_flight(self, node: NodeFigures, job: MigrationJob, guests: list[dict[str, Any]]) -> NodeFigures:
        """The target with the memory other migrations in flight hold on it until they end: one coming
        onto it holds the guest's memory there from its start, before the guest is listed on it (a
        guest it lists is in its figures already). Same counting as the engine's (fit.holding_in_flight)."""
        if self.in_flight is None:
            return node
        listed = [int(g["vmid"]) for g in guests if g.get("node") == node.name and str(g.get("vmid", "")).isdigit()]
        return holding_in_flight(node, self.in_flight(job.job_id), listed)

    def check(self, job: MigrationJob, patience: float) -> dict[str, Any]:
        """The guest's resources entry once every check passes; waits (bounded) while it is locked."""
        deadline = time.monotonic() + self.settings.migrator.task_timeout_base
        while True:
            entry: dict[str, Any] = self.api(lambda: self._checked(job), patience)
            if not entry.get("lock"):
                return entry
            if time.monotonic() > deadline:
                raise Failed(f"guest {job.vmid} stayed locked ({entry['lock']})")
            log.info("guest is locked by another task, waiting", lock=entry["lock"])
            self.sleep(self.settings.migrator.poll_interval)

    def migrate_params(self, job: MigrationJob, entry: dict[str, Any], patience: float) -> dict[str, Any]:
        """The POST's parameters, after Proxmox's own pre-check (qemu) says the target may take the guest."""
        path = f"/nodes/{job.source}/{job.guest_type.value}/{job.vmid}/migrate"
        params: dict[str, Any] = {"target": job.target}
        running = entry.get("status") == "running"
        if job.guest_type is GuestType.QEMU:
            check = self.api(lambda: self.client.get(path, target=job.target), patience)
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
        else:
            params["restart"] = running
        return params
