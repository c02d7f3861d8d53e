"""A third kind of action, written as docs/how-it-works.md "Adding a kind of action" says: one module, and
one line that registers it (tests/unit/test_third_kind.py makes that line, then runs `main`).

`relocate`: a stopped guest to another node, cold (`POST /nodes/{source}/{type}/{vmid}/migrate` without
`online`), holding a slot in the cluster and on both nodes as a migration does. Nothing in the product
plans one; `main` hands the pipeline a plan with a migration and a relocation and reports, as JSON on its
last line, what each part made of it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pvebalance.actions.base import ActionBase, Cleared, Executor, Failed, Gone, Job, Kind, Skip
from pvebalance.shared import keys
from pvebalance.shared.message import GuestType, guest_id
from pvebalance.shared.proxmox_errors import MALFORMED, ProxmoxError

if TYPE_CHECKING:
    from pvebalance.shared.config import Settings
    from pvebalance.shared.jobrecord import JobRecord

RELOCATE_TASKS = ("qmigrate", "vzmigrate")


class Relocation(ActionBase):
    kind: Literal["relocate"] = "relocate"
    name: str
    type: GuestType
    source: str
    target: str
    noun: ClassVar[str] = "relocation"

    def guest(self) -> str:
        return guest_id(self.type, self.vmid)

    def describe(self) -> str:
        return f"guest {self.vmid} ({self.name}) {self.source} -> {self.target}, stopped"


class RelocationJob(Job):
    action: ClassVar[str] = "relocate"
    kind: Literal["relocation-job"] = "relocation-job"
    metric_stem: ClassVar[str] = "relocation"
    metric_labels: ClassVar[tuple[str, ...]] = ("node", "target")

    @classmethod
    def id_of(cls, plan_id: str, action: Relocation, step: int) -> str:
        return f"relocate-{plan_id}-{action.vmid}" + (f"-{step}" if step > 1 else "")

    @classmethod
    def of(cls, plan_id: str, action: Relocation, step: int, settings: Settings) -> RelocationJob:
        return cls(job_id=cls.id_of(plan_id, action, step), plan_id=plan_id, vmid=action.vmid, name=action.name,
                   guest_type=action.type, source=action.source, target=action.target)

    def slot_scopes(self) -> list[str]:
        return keys.slot_scopes(self.source, self.target)

    def copied_bytes(self) -> int:
        return 0

    @property
    def needs_node(self) -> str:
        return self.target

    def describe(self) -> str:
        return f"relocate {self.guest_type.value} {self.vmid} {self.source} -> {self.target}"

    def metric_values(self) -> list[str]:
        return [self.source, self.target]


class Relocate(Executor[RelocationJob]):
    def _node_of(self, job: RelocationJob) -> str | None:
        answer = self.client.get("/cluster/resources", type="vm")
        if not isinstance(answer, list):
            raise ProxmoxError("/cluster/resources: the answer is not a list", kind=MALFORMED)
        entry = next((e for e in answer if isinstance(e, dict) and str(e.get("vmid")) == str(job.vmid)), None)
        return str(entry["node"]) if entry else None

    def look_ahead(self, job: RelocationJob) -> None:
        pass

    def check(self, job: RelocationJob, patience: float, resumed: bool = False) -> Cleared:
        where = self.ctx.api(lambda: self._node_of(job), patience)
        if where != job.source:
            raise Gone(f"guest {job.vmid} is on {where or 'no node'}, not {job.source}")
        status = self.ctx.api(lambda: self.client.get(f"{self.path(job).removesuffix('/migrate')}/status/current"))
        if status.get("status") == "running":
            raise Skip(f"guest {job.vmid} runs: a relocation moves stopped guests only")
        return Cleared({"target": job.target}, {str(t["upid"]) for t in self.tasks(job)})

    def path(self, job: RelocationJob) -> str:
        return f"/nodes/{job.source}/{job.guest_type.value}/{job.vmid}/migrate"

    def tasks(self, job: RelocationJob) -> list[dict[str, Any]]:
        answer = self.client.get(f"/nodes/{job.source}/tasks", vmid=job.vmid, source="all", limit=50)
        ours = [t for t in answer if t.get("type") in RELOCATE_TASKS and str(t.get("id")) == str(job.vmid)]
        return sorted(ours, key=lambda t: float(t.get("starttime", 0)))

    def verify(self, job: RelocationJob, upid: str, ok: bool, exitstatus: str, record: JobRecord) -> str | None:
        if self.done(job):
            return None
        raise Failed(exitstatus if not ok else f"task {upid} ended OK but guest {job.vmid} is not on {job.target}")

    def done(self, job: RelocationJob) -> bool:
        return bool(self.ctx.api(lambda: self._node_of(job)) == job.target)

    def succeeded(self, job: RelocationJob) -> str:
        return f"{job.name} is on {job.target}, stopped"


KIND = Kind(action=Relocation, job=RelocationJob, executor=Relocate)


def main(certdir: str) -> None:
    """Run after the registration line: a plan of one migration and one relocation, through the plan's JSON,
    the planner's queue, the runner against the simulator (real proxmoxer over HTTPS), the API and /metrics."""
    from fastapi.testclient import TestClient
    from rich.console import Console

    from pvebalance.cli.render import print_plan
    from pvebalance.services.migrator.runner import JobRunner
    from pvebalance.services.migrator.slots import Slots
    from pvebalance.services.planner.planner import Planner
    from pvebalance.shared.jobs import jobs_of
    from pvebalance.shared.jobstore import JobStore
    from pvebalance.shared.models import Migration, MigrationReason, Plan, UsageSummary
    from pvebalance.shared.plans import PlanState, PlanStatus, PlanStore
    from pvebalance.shared.proxmox import ProxmoxClient
    from pvebalance.shared.scenario import load_dump
    from pvebalance.shared.words import actions_in_words
    from pvebalance.simulator.server import Simulator
    from tests.api_helpers import OPS, fake_app, settings_with_tokens
    from tests.helpers import settings_for

    repo = Path(__file__).resolve().parents[1]
    sim = Simulator(load_dump(repo / "pvebalance" / "scenarios" / "all-on-one.json"), time_scale=0.01)
    sim.start(0, certdir=Path(certdir))
    try:
        sim.cluster.guests[101].entry["status"] = "stopped"
        empty = UsageSummary(spread_pp=0, nodes={})
        plan = Plan(plan_id="plan-third", method="memory", mode="used", balanciness=5, before=empty, after=empty,
                    actions=[Migration(vmid=100, name="vm100", type=GuestType.QEMU, source="pve1", target="pve2",
                                       reason=MigrationReason.BALANCE, online=True),
                             Relocation(vmid=101, name="vm101", type=GuestType.QEMU, source="pve1", target="pve3",
                                        after=[0])])
        plan = Plan.model_validate_json(plan.model_dump_json())
        app, redis = fake_app(settings_with_tokens())
        settings = settings_for(sim, "redis://unused", Path(certdir))
        queued = Planner(redis, settings).enqueue(plan)
        store = JobStore(redis)
        runner = JobRunner(ProxmoxClient(settings.proxmox_api), store, Slots(redis, settings.migrator), settings)
        jobs = jobs_of(plan, settings)
        ended = [runner.run(store.job(j.job_id) or j).value for j in jobs]
        PlanStore(redis).save(plan, PlanStatus(plan_id=plan.plan_id, state=PlanState.RUNNING))
        with TestClient(app) as client:
            view = client.get("/api/v1/plans/latest", headers=OPS).json()
            metrics = client.get("/metrics", headers=OPS).text
        console = Console(record=True, width=200)
        print_plan(plan, console)
        table = [" ".join(line.split()) for line in console.export_text().splitlines() if "relocat" in line]
        print(json.dumps({
            "table": table,
            "kinds": [type(a).__name__ for a in plan.actions],
            "queued": queued,
            "jobs": [type(store.job(j.job_id)).__name__ for j in jobs],
            "ended": ended,
            "nodes": {vmid: sim.cluster.guests[vmid].node for vmid in (100, 101)},
            "words": actions_in_words(plan.actions),
            "api": [(a["kind"], a["id"], a["job_state"]) for a in view["actions"]],
            "metrics": sorted(line.split("{")[0] for line in metrics.splitlines()
                              if line.startswith("pvebalance_relocations_finished")),
        }))
    finally:
        sim.stop()


if __name__ == "__main__":
    main(sys.argv[1])
