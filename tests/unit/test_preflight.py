"""The migrator's pre-flight reads the guest it moves and its target, never the whole cluster."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pvebalance.actions import Skip
from pvebalance.services.migrator.preflight import Preflight
from pvebalance.shared.jobs import MigrationJob
from pvebalance.shared.models import GuestType
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
        ("/cluster/ha/rules", {}),  # the rules as they are now (no pool has a rule in mid-300)
        ("/cluster/backup", {}),  # backup jobs about to start, and backups running on the source
        (f"/nodes/{g.node}/tasks", {"typefilter": "vzdump", "source": "active"}),
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


# --- the rule families asked again on fresh data (issue 20, item 7) ---------------------------------

def _tag(sim: Simulator, vmid: int, tags: str) -> None:
    """Tags set by an operator: PVE keeps them in the config and shows them in every status of the guest."""
    g = sim.cluster.guests[vmid]
    g.config["tags"] = g.entry["tags"] = tags


def _pin_added(sim: Simulator) -> None:
    _tag(sim, 118, "plb_pin_pve3")


def _ignore_added(sim: Simulator) -> None:
    _tag(sim, 118, "web;plb_ignore_vm")


def _partner_arrived(sim: Simulator) -> None:
    _tag(sim, 118, "plb_anti_affinity_web")
    _tag(sim, 119, "plb_anti_affinity_web")
    sim.cluster.move_guest(sim.cluster.guests[119], "pve2")


def _ha_rule_added(sim: Simulator) -> None:
    sim.cluster.ha_rules.append({"rule": "keep-118", "type": "node-affinity", "resources": "vm:118",
                                 "nodes": "pve3,pve4", "strict": 1, "disable": 0})


@pytest.mark.parametrize(("change", "reason"), [
    (_pin_added, "guest 118 may run only on pve3 (plb_pin tags)"),
    (_ignore_added, "guest 118 may not be moved now: plb_ignore tag"),
    (_partner_arrived, "tag:plb_anti_affinity_web: guest 118 must not share pve2 with 119"),
    (_ha_rule_added, "guest 118 may run only on pve3,pve4 (HA rule keep-118)"),
])
def test_a_rule_added_after_the_plan_skips_the_move_with_the_rule_s_reason(
        start_simulator: SimFactory, tmp_path: Path, change: Callable[[Simulator], None], reason: str) -> None:
    sim = start_simulator(figure_lag=0, host_variation=0)
    pf, _ = preflight_for(sim, tmp_path)
    assert pf.clear(job(), patience=5).params["target"] == "pve2", "allowed when the plan was made"
    change(sim)
    with pytest.raises(Skip) as skipped:
        pf.clear(job(), patience=5)
    assert str(skipped.value) == reason


def test_an_anti_affinity_partner_elsewhere_or_a_tag_of_no_rule_leaves_the_move_alone(
        start_simulator: SimFactory, tmp_path: Path) -> None:
    sim = start_simulator(figure_lag=0, host_variation=0)
    _tag(sim, 118, "plb_anti_affinity_web;prod")
    _tag(sim, 119, "plb_anti_affinity_web")
    sim.cluster.move_guest(sim.cluster.guests[119], "pve3")
    _tag(sim, 120, "plb_anti_affinity_db")  # another group, on the target
    sim.cluster.move_guest(sim.cluster.guests[120], "pve2")
    pf, _ = preflight_for(sim, tmp_path)
    assert pf.clear(job(), patience=5).params["target"] == "pve2"


def test_a_pool_rule_is_read_from_the_pool_as_it_is_now(start_simulator: SimFactory, tmp_path: Path) -> None:
    """groups: pool ci (117-122) kept apart by the config. ci4 (120) is moved onto pve3 by hand after
    the plan, so ci1's move there is skipped; the pool is read, not the whole cluster."""
    sim = start_simulator("groups", figure_lag=0, host_variation=0)
    settings = settings_for(sim, "redis://unused", tmp_path, balancing={"pools": {"ci": {"type": "anti-affinity"}}})
    client = Recording(settings.proxmox_api)
    pf = Preflight(client, settings, api=lambda fn, patience=None: fn())
    ci1 = job(117, "pve1", "pve3", name="ci1")
    assert pf.clear(ci1, patience=5).params["target"] == "pve3"
    sim.cluster.move_guest(sim.cluster.guests[120], "pve3")
    with pytest.raises(Skip) as skipped:
        pf.clear(ci1, patience=5)
    assert str(skipped.value) == "pool:ci: guest 117 must not share pve3 with 120"
    assert ("/pools/ci", {}) in client.reads and ("/cluster/resources", {"type": "vm"}) not in client.reads


@pytest.mark.parametrize(("used_gib", "in_flight_gib", "skipped"), [
    (300, 0, False),  # pve3's local-lvm: 300 of 2,000 GiB, vm100 brings 300
    (1600, 0, True),  # filled since the plan: 1,900 GiB, above 90%
    (300, 1300, True),  # another migration in flight copies 1,300 GiB there
])
def test_pre_flight_checks_the_target_storage_for_the_local_disks_it_copies(
        start_simulator: SimFactory, tmp_path: Path, used_gib: int, in_flight_gib: int, skipped: bool) -> None:
    from pvebalance.shared.models import InFlightMigration

    sim = start_simulator("local-storage")
    storage = next(s for s in sim.cluster.storages if s["node"] == "pve3" and s["storage"] == "local-lvm")
    storage["disk"] = used_gib * 2**30
    pf, client = preflight_for(sim, tmp_path)
    flights = [InFlightMigration(job_id="other", vmid=101, source="pve1", target="pve3",
                                 local_disks={"local-lvm": in_flight_gib * 2**30})] if in_flight_gib else []
    pf.in_flight = lambda but: flights
    j = job(100, "pve1", "pve3", name="vm100").model_copy(update={"local_disks": {"local-lvm": 300 * 2**30}})
    if skipped:
        with pytest.raises(Skip, match=r"target node pve3 no longer has room for vm100: pve3's local-lvm would be at "
                                       r"\d+\.\d% of 2000 GiB, above max_storage_usage 90%"):
            pf.clear(j, patience=5)
    else:
        assert pf.clear(j, patience=5).params["with-local-disks"] is True
    assert ("/cluster/resources", {"type": "storage"}) in client.reads
