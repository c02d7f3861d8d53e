"""A plan's schedule for real: the planner enqueues it into a real Redis, rq workers in their own
processes migrate through the simulator, and no node goes over its limit while moves overlap."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis import Redis

from pvebalance.demo import stop_processes
from pvebalance.engine import Policy
from pvebalance.engine.fit import GuestFigures, fits, memory_limit, snapshot_figures
from pvebalance.engine.rules import build_constraints
from pvebalance.engine.schedule import schedule
from pvebalance.engine.state import Move
from pvebalance.services.collector.collector import Collector
from pvebalance.services.planner.planner import Planner
from pvebalance.shared.config import load_settings
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import Migration, MigrationReason, Plan, UsageSummary
from pvebalance.shared.proxmox import ProxmoxClient
from tests.helpers import SimFactory, start_workers, write_config

pytestmark = pytest.mark.integration
GIB = 2**30


def wait_until(predicate, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for every job to end"
        time.sleep(0.1)


@pytest.mark.parametrize("as_scheduled", [True, False], ids=["as scheduled", "the arrival queued first"])
def test_a_move_into_a_node_runs_only_after_the_move_that_frees_its_room(
        start_simulator: SimFactory, real_redis: Redis, redis_url: str, tmp_path: Path, as_scheduled: bool) -> None:
    """vm118 (7.5 GiB) leaves pve2 for pve3 to make room for a small guest from pve1, which pve2 can take
    only without vm118. Scheduled, the small guest's migration starts once vm118's has ended: both land
    and pve2 never passes its limit. Queued first without waiting, it would overlap vm118's migration
    on pve2: the pre-flight refuses it, and the move is lost."""
    # Figures that do not lag or swing: the test is about the order of the moves, and a node's figure
    # lagging behind a guest that left would refuse the arrival for that reason instead.
    sim = start_simulator("all-on-one", time_scale=0.3, figure_lag=0, host_variation=0)
    sim.cluster.guests[118].entry["node"] = "pve2"
    sim.cluster.note_mem()  # the node's figures (and the peak the simulator keeps) with vm118 on it
    small = min((g for g in sim.cluster.guests.values() if g.node == "pve1"), key=lambda g: g.entry["mem"])
    probe = write_config(tmp_path / "probe.yaml", sim, redis_url)
    snap = Collector(ProxmoxClient(load_settings(probe).proxmox_api)).snapshot()
    pve2 = snapshot_figures(snap)["pve2"]
    # pve2's limit: room for the small guest once vm118 is gone, not while vm118 is still there
    usable = (pve2.used_mem + small.entry["mem"] / 2) / 0.95
    config = write_config(tmp_path / "pvebalance.yaml", sim, redis_url,
                          balancing={"node_resource_reserve": {"pve2": {"memory": (pve2.maxmem - usable) / GIB}}},
                          migrator={"max_parallel_cluster": 2, "max_parallel_per_source": 2,
                                    "max_parallel_per_target": 2, "poll_interval": 0.1})
    settings = load_settings(config)
    policy = Policy.from_settings(settings.balancing, settings.proxmox_cluster)
    guests = {g.vmid: g for g in snap.guests}
    big, little = guests[118], guests[small.vmid]
    assert fits(GuestFigures.of([little]), pve2, policy) is not None, "no room while vm118 is there"
    assert fits(GuestFigures.of([little]), pve2.leave(GuestFigures.of([big])), policy) is None, "room after"

    sequence = [Move(big, 0.0, "pve2", "pve3", MigrationReason.BALANCE, ""),
                Move(little, 0.0, "pve1", "pve2", MigrationReason.BALANCE, "")]
    timetable = schedule(sequence, snap, policy, build_constraints(snap, policy))
    queued = list(zip(timetable.moves, timetable.batches, strict=True))
    if not as_scheduled:
        queued = [(m, 0) for m, _ in reversed(queued)]
    plan = Plan(method="memory", mode="used", balanciness=5, before=UsageSummary(spread_pp=0, nodes={}),
                after=UsageSummary(spread_pp=0, nodes={}), migrations=[
                    Migration(vmid=m.guest.vmid, name=m.guest.name, type=m.guest.type, source=m.source,
                              target=m.target, reason=m.reason, online=True, mem_bytes=m.guest.mem, batch=batch)
                    for m, batch in queued])
    planner = Planner(Redis.from_url(redis_url), settings)
    planner.save(plan)
    planner.enqueue(plan)
    store = JobStore(real_redis)
    procs = start_workers(config, 2, burst=False, log_dir=tmp_path)
    try:
        wait_until(lambda: all((s := store.state(f"migrate-{plan.plan_id}-{v}")) is not None and s.terminal
                               for v in (118, small.vmid)))
    finally:
        stop_processes(procs)

    ran = {m["vmid"]: m for m in sim.cluster.stats.migrations}
    peak = sim.cluster.stats.peak_mem_ratio["pve2"] * pve2.maxmem
    if as_scheduled:
        assert [sim.cluster.guests[v].node for v in (118, small.vmid)] == ["pve3", "pve2"]
        assert ran[small.vmid]["start"] >= ran[118]["end"]
        assert peak <= memory_limit(pve2, policy)
    else:
        record = store.load(f"migrate-{plan.plan_id}-{small.vmid}").fields
        assert (record["state"], record["message"].split(":")[0]) == (
            "skipped", f"target node pve2 no longer has room for {small.entry['name']}")
        assert small.vmid not in ran and small.node == "pve1"
