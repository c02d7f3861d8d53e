"""The migrator's pre-flight reads the guest it moves and its target, never the whole cluster."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pvebalance.services.migrator.preflight import Preflight, Skip
from pvebalance.shared.models import GuestType, MigrationJob
from pvebalance.shared.proxmox import ProxmoxClient
from pvebalance.simulator.server import Simulator
from tests.helpers import SimFactory, settings_for


class Recording(ProxmoxClient):
    """The real client, noting every GET it makes."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.reads: list[tuple[str, dict[str, Any]]] = []

    def get(self, path: str, **params: Any) -> Any:
        self.reads.append((path, params))
        return super().get(path, **params)


def preflight_for(sim: Simulator, tmp_path: Path) -> tuple[Preflight, Recording]:
    settings = settings_for(sim, "redis://unused", tmp_path)
    client = Recording(settings.proxmox_api)
    return Preflight(client, settings, api=lambda fn, patience=None: fn()), client


def job(vmid: int = 118, source: str = "pve1", target: str = "pve2", gtype: GuestType = GuestType.QEMU,
        name: str = "vm118") -> MigrationJob:
    return MigrationJob(job_id=MigrationJob.id_for("plan-p", vmid), plan_id="plan-p", vmid=vmid, name=name,
                        guest_type=gtype, source=source, target=target, online=True, with_local_disks=True)


def test_pre_flight_reads_only_the_guest_it_moves_and_its_target(start_simulator: SimFactory,
                                                                  tmp_path: Path) -> None:
    sim = start_simulator("mid-300")
    pf, client = preflight_for(sim, tmp_path)
    g = sim.cluster.guests[100]
    target = next(n for n in sim.cluster.nodes if n != g.node)
    j = job(100, g.node, target, GuestType(g.type), str(g.entry["name"]))
    cleared = pf.clear(j, patience=5)
    assert cleared.entry["node"] == g.node and cleared.entry["status"] == "running"
    assert cleared.params["target"] == target and cleared.known_tasks == set()
    # made at once, so in no fixed order
    assert sorted(client.reads, key=repr) == sorted([
        (f"/nodes/{g.node}/{g.type}/100/status/current", {}),
        (f"/nodes/{g.node}/tasks", {"vmid": 100, "source": "all", "limit": 50}),
        ("/cluster/resources", {"type": "node"}),
        (f"/nodes/{target}/status", {}),
        (f"/nodes/{target}/qemu", {}),
        (f"/nodes/{target}/lxc", {}),
    ] + ([(f"/nodes/{g.node}/qemu/100/migrate", {"target": target})] if g.type == "qemu" else []), key=repr)


def _move_by_hand(sim: Simulator) -> None:
    sim.cluster.move_guest(sim.cluster.guests[118], "pve3")


def _onto_target(sim: Simulator) -> None:
    sim.cluster.move_guest(sim.cluster.guests[118], "pve2")


def _delete(sim: Simulator) -> None:
    sim.cluster.delete_guest(118)


def _target_offline(sim: Simulator) -> None:
    sim.cluster.nodes["pve2"].entry["status"] = "offline"


def _target_in_maintenance(sim: Simulator) -> None:
    sim.cluster.nodes["pve2"].entry["hastate"] = "maintenance"


def _target_full(sim: Simulator) -> None:
    sim.cluster.nodes["pve2"].mem_overhead = int(sim.cluster.nodes["pve2"].entry["maxmem"] * 0.94)
    sim.cluster.note_mem()


@pytest.mark.parametrize(("change", "reason"), [
    (_move_by_hand, "guest 118 was moved to pve3 since the plan was made"),
    (_onto_target, "guest 118 is already on pve2"),
    (_delete, "guest 118 no longer exists"),
    (_target_offline, "target node pve2 is offline or in maintenance"),
    (_target_in_maintenance, "target node pve2 is offline or in maintenance"),
    (_target_full, "target node pve2 no longer has room for vm118: pve2 would use"),
])
def test_pre_flight_skips_a_move_no_longer_wanted_or_allowed(start_simulator: SimFactory, tmp_path: Path,
                                                            change: Callable[[Simulator], None], reason: str) -> None:
    sim = start_simulator(figure_lag=0, host_variation=0)
    change(sim)
    pf, _ = preflight_for(sim, tmp_path)
    with pytest.raises(Skip) as skipped:
        pf.clear(job(), patience=5)
    assert str(skipped.value).startswith(reason)


def test_pre_flight_skips_a_target_an_ha_rule_bars(start_simulator: SimFactory, tmp_path: Path) -> None:
    sim = start_simulator("groups")  # vm:123 and vm:124 in negative affinity
    sim.cluster.move_guest(sim.cluster.guests[124], "pve5")
    pf, _ = preflight_for(sim, tmp_path)
    j = job(123, "pve1", "pve5", name="vm123")
    assert pf.clear(job(123, "pve1", "pve2", name="vm123"), patience=5).entry["hastate"] == "started"
    with pytest.raises(Skip, match=r"Proxmox does not allow pve5 for this guest: .*blocking-ha-resources.*vm:124"):
        pf.clear(j, patience=5)


# --- balancing.live (issue 20, item 6) ------------------------------------------------------------

def _job_as_planned(sim: Simulator, live: bool) -> MigrationJob:
    """vm118's job as the planner makes it: `online` is a live move of a running VM, and only with live."""
    running = sim.cluster.guests[118].running
    return job().model_copy(update={"online": running and live})


@pytest.mark.parametrize(("running", "live", "sent"), [
    (True, True, True),  # a live migration, as planned and counted
    (False, True, False),
    (False, False, False),  # a stopped VM moves offline
])
def test_the_migrate_call_is_live_only_when_the_job_planned_a_live_move(
        start_simulator: SimFactory, tmp_path: Path, running: bool, live: bool, sent: bool) -> None:
    sim = start_simulator(figure_lag=0, host_variation=0)
    if not running:
        sim.cluster.guests[118].entry["status"] = "stopped"
    settings = settings_for(sim, "redis://unused", tmp_path, balancing={"live": live})
    pf = Preflight(ProxmoxClient(settings.proxmox_api), settings, api=lambda fn, patience=None: fn())
    j = _job_as_planned(sim, live)
    params = pf.clear(j, patience=5).params
    assert params["online"] is sent
    assert not params["online"] or j.online, "the in-flight accounting counts the memory of what the job says"


def test_with_live_off_a_running_vm_is_skipped_not_migrated_live(start_simulator: SimFactory, tmp_path: Path) -> None:
    sim = start_simulator(figure_lag=0, host_variation=0)
    settings = settings_for(sim, "redis://unused", tmp_path, balancing={"live": False})
    pf = Preflight(ProxmoxClient(settings.proxmox_api), settings, api=lambda fn, patience=None: fn())
    with pytest.raises(Skip, match=r"^guest 118 runs and balancing.live is off: Proxmox moves a running VM "
                                   r"only live; it stays$"):
        pf.clear(_job_as_planned(sim, live=False), patience=5)


def test_a_vm_started_since_a_plan_that_moved_it_offline_is_not_migrated_live(start_simulator: SimFactory,
                                                                               tmp_path: Path) -> None:
    sim = start_simulator(figure_lag=0, host_variation=0)
    pf, _ = preflight_for(sim, tmp_path)
    planned_stopped = job().model_copy(update={"online": False})  # planned while vm118 was stopped
    with pytest.raises(Skip, match=r"^guest 118 runs and it was stopped when the plan was made"):
        pf.clear(planned_stopped, patience=5)
