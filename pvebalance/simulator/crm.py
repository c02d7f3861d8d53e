"""The simulated HA CRM's own moves: node-affinity placement and failback (pve-ha-manager Manager.pm).

PVE's CRM works in rounds (about every 10 s). In a round, a started resource that a node-affinity
rule binds is moved to the best node of the rule's highest-priority group of usable nodes when it
runs outside that group and failback is on, or on a node the rule does not allow (ha.crm_target).
The simulator runs such a round:

- `CRM_ROUND_SECONDS` (times the time scale) after the nodes the CRM places on (online, not in
  maintenance) change: a node coming back is what makes PVE fail a resource back;
- the same time after an HA migration of a resource ends, for that resource;
- whenever a test calls `round()`.

Rounds are run from `tick()`, which the API calls before every request (a collector polls, so
rounds happen as the clock passes) and tests may call directly. A resource loaded outside its
rule's group stays there until one of these happens (PVE would move it at its first round): a
recorded cluster keeps the state it was recorded in. Resources no node-affinity rule binds are
left alone (the CRM's other work, recovery and maintenance moves, is not simulated).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from . import ha

if TYPE_CHECKING:
    from .cluster import Guest
    from .tasks import TaskManager

CRM_ROUND_SECONDS = 10.0  # at time-scale 1
REQUEST_SECONDS = 0.5  # a queued command is taken at the CRM's next round, at most this late (at time-scale 1)


class Crm:
    def __init__(self, tasks: TaskManager) -> None:
        self.tasks = tasks
        self.seen = frozenset(ha.ha_online(tasks.cluster))
        self.due: float | None = None  # a round over every bound resource
        self.watch: dict[int, float] = {}  # vmid -> when its own round is due

    @property
    def hold(self) -> float:
        return CRM_ROUND_SECONDS * self.tasks.time_scale

    def tick(self) -> None:
        """Run the rounds that are due (cluster lock held)."""
        now = time.monotonic()
        online = frozenset(ha.ha_online(self.tasks.cluster))
        if online != self.seen:
            self.seen, self.due = online, now + self.hold
        if self.due is not None and now >= self.due:
            self.due = None
            self.round()
        for vmid, when in sorted(self.watch.items()):
            if now >= when:
                del self.watch[vmid]
                self.round({vmid})

    def moved(self, vmid: int) -> None:
        """An HA migration of the resource ended: the CRM looks at it again in its next round."""
        self.watch[vmid] = time.monotonic() + self.hold

    def round(self, vmids: set[int] | None = None) -> list[str]:
        """One CRM round now, over every resource a node-affinity rule binds (or those of `vmids`):
        the UPIDs of the migrations it starts."""
        c = self.tasks.cluster
        upids = []
        with c.lock:
            migrating = self.tasks.migrating_to()
            for vmid, g in sorted(c.guests.items()):
                if vmids is not None and vmid not in vmids:
                    continue
                if vmid in migrating or g.lock or not g.running or g.entry.get("hastate", "started") != "started":
                    continue
                wanted = ha.crm_target(c, g, migrating)
                if wanted is None:
                    continue
                node, why = wanted
                upid = self.tasks.ha_migrate(g, {"target": node})
                c.stats.ha_requests.append({"vmid": vmid, "request_upid": None, "target": node, "time": time.time(),
                                            "outcome": f"moved by the CRM: {why}", "upid": upid})
                migrating[vmid] = node
                upids.append(upid)
        return upids

    def command(self, g: Guest, target: str, params: dict[str, Any], request_upid: str | None,
                dependent: list[str]) -> None:
        """The CRM takes a queued `migrate SID NODE` (cluster lock held): the resource and its
        positive-affinity partners move, each unless the CRM ignores the request for it."""
        c = self.tasks.cluster
        partners = [p for p in (ha.guest_by_sid(c, s) for s in dependent) if p is not None]
        for guest, along_with in [(g, None), *((p, ha.sid_of(g)) for p in partners)]:
            outcome, upid = self._takes(guest, target), None
            if outcome == "migrating":
                upid = self.tasks.ha_migrate(guest, {**params, "target": target})
            record = {"vmid": guest.vmid, "request_upid": request_upid, "target": target,
                      "time": time.time(), "outcome": outcome, "upid": upid}
            if along_with:
                record["along_with"] = along_with
            c.stats.ha_requests.append(record)

    def _takes(self, g: Guest, target: str) -> str:
        """What the CRM does with a queued migrate request for one resource (Manager.pm)."""
        c = self.tasks.cluster
        if c.guests.get(g.vmid) is not g:
            return "ignored: service removed"
        if not c.nodes[target].online:
            return "ignored: node not online"
        if g.node == target:
            return "ignored: service already on target node"
        if g.entry.get("hastate", "started") != "started":
            # a request queued while the service migrates is dropped when its state changes
            return f"ignored: service is in state '{g.entry.get('hastate')}'"
        if g.type == "qemu" and g.lock:
            return f"failed: VM is locked ({g.lock})"  # the LRM's migrate call is refused
        return "migrating"

    def request(self, g: Guest, target: str, dependent: list[str]) -> None:
        """`POST /cluster/ha/resources/SID/migrate` queued a command: the CRM takes it shortly after,
        unless the resource is then blocked on the target (Manager.pm queue_resource_motion drops it)."""
        def take() -> None:
            time.sleep(min(REQUEST_SECONDS, REQUEST_SECONDS * self.tasks.time_scale))
            c = self.tasks.cluster
            with c.lock:
                _dependent, blocking = ha.motion_info(c, g, self.tasks.migrating_to())
                if blocking.get(target):
                    c.stats.ha_requests.append({"vmid": g.vmid, "request_upid": None, "target": target,
                                                "time": time.time(), "outcome": "ignored: blocked on the target",
                                                "upid": None, "blocking": [b["sid"] for b in blocking[target]]})
                    return
                self.command(g, target, {}, None, dependent)

        threading.Thread(target=take, daemon=True).start()


def motion_answer(sid: str, target: str, dependent: list[str], blocking: list[dict[str, str]]) -> dict[str, Any]:
    """What POST /cluster/ha/resources/SID/migrate answers (API2/HA/Resources.pm migrate)."""
    out: dict[str, Any] = {"sid": sid, "requested-node": target}
    if dependent:
        out["comigrated-resources"] = dependent
    if blocking:
        out["blocking-resources"] = blocking
    return out
