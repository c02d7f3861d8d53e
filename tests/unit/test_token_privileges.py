"""The token's privileges: the simulator refuses and filters as PVE does for a token with fewer
privileges, the services work with exactly the set shared/privileges.py names, and
`config check --live` names each one missing (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import Redis
from typer.testing import CliRunner

from pvebalance.cli import app
from pvebalance.cli.live import check_live
from pvebalance.services.collector.collector import Collector
from pvebalance.services.migrator.runner import JobRunner
from pvebalance.services.migrator.slots import Slots
from pvebalance.shared.jobs import JobState, MigrationJob
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import GuestType
from pvebalance.shared.privileges import NEEDED, names, needed
from pvebalance.shared.proxmox import ProxmoxClient, ProxmoxError
from tests.helpers import SimFactory, settings_for, write_config

TOKEN = "root@pam!pvebalance"


def client(start_simulator: SimFactory, tmp_path: Path, privileges: set[str] | None) -> ProxmoxClient:
    sim = start_simulator(privileges=None if privileges is None else {TOKEN: privileges})
    tmp_path.mkdir(exist_ok=True)
    return ProxmoxClient(settings_for(sim, "redis://unused", tmp_path).proxmox_api)


def test_a_call_without_its_privilege_is_refused_with_pves_words(start_simulator: SimFactory,
                                                                 tmp_path: Path) -> None:
    api = client(start_simulator, tmp_path, {"Sys.Audit"})
    with pytest.raises(ProxmoxError) as refused:
        api.get("/nodes/pve1/qemu/118/config")
    assert refused.value.status == 403 and refused.value.message.endswith(
        ": 403 Permission check failed (/vms/118, VM.Audit)")
    with pytest.raises(ProxmoxError) as refused:
        api.post("/nodes/pve1/qemu/118/migrate", target="pve2", online=True)
    assert refused.value.message.endswith(": 403 Permission check failed (/vms/118, VM.Migrate)")
    assert not refused.value.transient, "a refusal is not waited out"
    assert api.get("/nodes/pve1/status")  # Sys.Audit on /nodes/pve1: answered


def test_lists_leave_out_what_the_token_may_not_see(start_simulator: SimFactory, tmp_path: Path) -> None:
    full = client(start_simulator, tmp_path / "a", None).get("/cluster/resources")
    seen = client(start_simulator, tmp_path / "b", {"VM.Migrate"}).get("/cluster/resources")
    assert any(e["type"] == "qemu" for e in full) and any(e["type"] == "storage" for e in full)
    assert {e["type"] for e in seen} == {"node"}, "no guest without VM.Audit, no storage without Datastore.Audit"
    assert all("maxmem" not in e and "mem" not in e for e in seen), "a node's figures need Sys.Audit"


def test_access_permissions_is_the_tokens_own(start_simulator: SimFactory, tmp_path: Path) -> None:
    mine = client(start_simulator, tmp_path, {"Sys.Audit", "VM.Audit"}).get("/access/permissions")
    assert mine["/"] == mine["/vms"] == mine["/nodes"] == {"Sys.Audit": 1, "VM.Audit": 1}


def test_the_services_work_with_exactly_the_needed_privileges(start_simulator: SimFactory, fake_redis: Redis,
                                                              tmp_path: Path) -> None:
    # one after the other: simulators started by one test share the certificate's file
    root = start_simulator()
    (tmp_path / "r").mkdir()
    as_root = Collector(ProxmoxClient(settings_for(root, "redis://unused", tmp_path / "r").proxmox_api), None,
                        read_only=True).snapshot()
    sim = start_simulator(privileges={TOKEN: set(names())})
    settings = settings_for(sim, "redis://unused", tmp_path)
    snapshot = Collector(ProxmoxClient(settings.proxmox_api), None, read_only=True).snapshot()
    assert [(g.vmid, g.node, g.maxmem) for g in snapshot.guests] == [(g.vmid, g.node, g.maxmem)
                                                                      for g in as_root.guests]
    assert [(n.name, n.maxmem) for n in snapshot.nodes] == [(n.name, n.maxmem) for n in as_root.nodes]
    assert snapshot.storages == as_root.storages and snapshot.pools == as_root.pools
    store = JobStore(fake_redis)
    job = MigrationJob(job_id=MigrationJob.id_for("plan-p", 118), plan_id="plan-p", vmid=118, name="vm118",
                       guest_type=GuestType.QEMU, source="pve1", target="pve2", online=True)
    store.create(job)
    runner = JobRunner(ProxmoxClient(settings.proxmox_api), store, Slots(fake_redis, settings.migrator),
                             settings)
    assert runner.run(job) is JobState.SUCCEEDED, store.load(job.job_id).message
    assert sim.cluster.guests[118].node == "pve2"


@pytest.mark.parametrize("privilege", names())
def test_live_check_names_each_missing_privilege(start_simulator: SimFactory, tmp_path: Path,
                                                 privilege: str) -> None:
    sim = start_simulator(privileges={TOKEN: set(names()) - {privilege}})
    fine, problems = check_live(settings_for(sim, "redis://127.0.0.1:1/0", tmp_path))
    lacking = [n for n in NEEDED if n.privilege == privilege]
    assert problems[:-1] == [f"proxmox_api: {TOKEN} lacks {n.privilege} on {n.path}: {n.what_for}" for n in lacking]
    assert problems[-1].startswith("redis: ") and "127.0.0.1:1" in problems[-1]  # and Redis is asked too
    assert fine == [f"proxmox_api: logged in as {TOKEN} (Proxmox VE 9.0.10)"]


@pytest.mark.integration
def test_config_check_live_passes_and_fails_with_exit_2(start_simulator: SimFactory, redis_url: str,
                                                        real_redis: Redis, tmp_path: Path) -> None:
    good = write_config(tmp_path / "good.yaml", start_simulator(), redis_url)
    result = CliRunner().invoke(app, ["config", "check", "--live", "-c", str(good)])
    assert result.exit_code == 0, result.output
    assert "  proxmox_api: privileges Datastore.Audit, Pool.Audit, Sys.Audit, VM.Audit, VM.Migrate: every one the " \
        "services need\n  redis: answers\n" in result.output
    restricted = start_simulator(privileges={TOKEN: set(names()) - {"VM.Migrate"}})
    bad = write_config(tmp_path / "bad.yaml", restricted, redis_url)
    result = CliRunner().invoke(app, ["config", "check", "--live", "-c", str(bad)])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: proxmox_api: {TOKEN} lacks VM.Migrate on /vms: the migrators migrate guests"]


def test_docs_install_lists_every_needed_privilege_and_the_pveum_recipe_grants_them() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "install.md").read_text()
    for privilege in names():
        assert f"`{privilege}`" in text, privilege
    role = next(line for line in text.splitlines() if line.startswith("pveum role add "))
    assert sorted(role.split("-privs ", 1)[1].strip().strip('"').split(",")) == sorted(names())
    assert "--privsep 1" in text and "pveum acl modify / " in text


def test_the_simulator_refuses_a_privilege_pve_does_not_have() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pvebalance", "simulator", "--privileges", "VM.Audit,VM.Teleport"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("error: --privileges: unknown privilege(s) VM.Teleport (PVE's: ")
    assert out.stderr.count("\n") == 1


@pytest.mark.parametrize("storage_privileges, ends", [(True, JobState.SUCCEEDED), (False, JobState.FAILED)],
                         ids=["with VM.Config.Disk and Datastore.AllocateSpace", "without them"])
def test_a_disk_move_needs_exactly_the_storage_balancing_privileges(
        start_simulator: SimFactory, fake_redis: Redis, tmp_path: Path, storage_privileges: bool,
        ends: JobState) -> None:
    from pvebalance.shared.jobs import DiskMoveJob

    sim = start_simulator("storage-3", privileges={TOKEN: set(names(storage_balancing=storage_privileges))})
    settings = settings_for(sim, "redis://unused", tmp_path, storage_balancing={"enable": True})
    store = JobStore(fake_redis)
    job = DiskMoveJob(job_id="move-disk-plan-p-108-scsi0", plan_id="plan-p", vmid=108, name="vm108",
                      guest_type=GuestType.QEMU, source="nfs-a", target="nfs-b", node="pve3", disk="scsi0",
                      size=400 * 2**30)
    store.create(job)
    runner = JobRunner(ProxmoxClient(settings.proxmox_api), store, Slots(fake_redis, settings.migrator), settings)
    assert runner.run(job) is ends, store.load(job.job_id).message
    if not storage_privileges:
        assert "Permission check failed (/vms/108, VM.Config.Disk)" in store.load(job.job_id).message
    assert sim.cluster.guests[108].config["scsi0"].startswith("nfs-b:" if storage_privileges else "nfs-a:")


@pytest.mark.parametrize("privilege", ["VM.Config.Disk", "Datastore.AllocateSpace"])
def test_live_check_with_storage_balancing_on_names_each_missing_storage_privilege(
        start_simulator: SimFactory, tmp_path: Path, privilege: str) -> None:
    sim = start_simulator(privileges={TOKEN: set(names(storage_balancing=True)) - {privilege}})
    settings = settings_for(sim, "redis://127.0.0.1:1/0", tmp_path, storage_balancing={"enable": True})
    _, problems = check_live(settings)
    lacking = next(n for n in needed(storage_balancing=True) if n.privilege == privilege)
    assert problems[:-1] == [f"proxmox_api: {TOKEN} lacks {privilege} on {lacking.path}: {lacking.what_for}"]
    _, off = check_live(settings.model_copy(update={"storage_balancing": settings.storage_balancing.model_copy(
        update={"enable": False})}))
    assert len(off) == 1 and off[0].startswith("redis: "), "with storage balancing off they are not needed"
