"""One answer to "does this guest fit on this node", for the engine, its check, and the migrator."""

from __future__ import annotations

from typing import Any

import pytest

from pvebalance.engine import GuestFigures, NodeFigures, Policy, fits, guest_figures, node_figures, plan_balance
from pvebalance.engine.fit import snapshot_figures
from pvebalance.engine.rules import build_constraints
from pvebalance.engine.verify import find_violations
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.config import ResourceReserve
from pvebalance.shared.models import Migration, MigrationReason
from tests.helpers import REPO

GIB = 2**30


def node(mem_gib: float, guests_mem_gib: float = 0, vcpus: int = 0) -> NodeFigures:
    """A 100 GiB, 10-core node named pve1."""
    return NodeFigures("pve1", 100 * GIB, int(mem_gib * GIB), 10, int(guests_mem_gib * GIB), vcpus)


def guest(mem_gib: float, maxcpu: int = 1, running: bool = True) -> GuestFigures:
    return GuestFigures(int(mem_gib * GIB), maxcpu, running)


@pytest.mark.parametrize(
    ("guest_", "node_", "policy", "refused_for"),
    [
        (guest(10), node(80), Policy(), None),
        (guest(20), node(80), Policy(), "max_node_usage 95%"),
        (guest(20), node(80), Policy(max_node_usage=100), None),
        (guest(10), node(80), Policy(reserve={"defaults": ResourceReserve(memory=10)}), "after the host's 10 GiB"),
        (guest(10), node(80), Policy(reserve={"pve1": ResourceReserve(memory=10)}), "after the host's 10 GiB"),
        (guest(10), node(80), Policy(reserve={"pve2": ResourceReserve(memory=10)}), None),
        (guest(10), node(mem_gib=50, guests_mem_gib=90), Policy(), "max_node_usage"),
        (guest(200, running=False), node(80), Policy(), None),
        (guest(1, running=False), node(96), Policy(), "max_node_usage"),
        (guest(1, maxcpu=4), node(10, vcpus=18), Policy(cpu_overcommit=2), "22 vCPUs on 10 cores"),
        (guest(1, maxcpu=2), node(10, vcpus=18), Policy(cpu_overcommit=2), None),
        (guest(1, maxcpu=4), node(10, vcpus=18), Policy(), None),
        (guest(1, maxcpu=4, running=False), node(10, vcpus=20), Policy(cpu_overcommit=2), None),
    ],
    ids=["room", "over the memory limit", "limit raised", "default reserve", "node's own reserve",
         "another node's reserve", "guests use more than the node reports", "stopped guest takes no memory",
         "a node over its limit takes nothing", "too many vCPUs", "vCPUs at the limit", "no vCPU limit",
         "stopped guest takes no vCPUs"],
)
def test_fits_counts_reserve_limit_baseline_and_vcpus(guest_: GuestFigures, node_: NodeFigures, policy: Policy,
                                                      refused_for: str | None) -> None:
    why = fits(guest_, node_, policy)
    if refused_for is None:
        assert why is None
    else:
        assert why is not None and refused_for in why and why.startswith("pve1 ")


def test_figures_read_from_cluster_resources_entries_count_the_running_guests_on_that_node() -> None:
    node_entry: dict[str, Any] = {"type": "node", "node": "pve1", "maxmem": 100 * GIB, "mem": 30 * GIB, "maxcpu": 10}
    guests: list[dict[str, Any]] = [
        {"type": "qemu", "vmid": 100, "node": "pve1", "status": "running", "mem": 20 * GIB, "maxcpu": 4},
        {"type": "lxc", "vmid": 101, "node": "pve1", "status": "running", "mem": 15 * GIB, "maxcpu": 2},
        {"type": "qemu", "vmid": 102, "node": "pve1", "status": "stopped", "mem": 0, "maxcpu": 8},
        {"type": "qemu", "vmid": 103, "node": "pve2", "status": "running", "mem": 50 * GIB, "maxcpu": 8},
    ]
    figures = node_figures(node_entry, guests)
    assert figures == NodeFigures("pve1", 100 * GIB, 30 * GIB, 10, 35 * GIB, 6)
    assert figures.used_mem == 35 * GIB


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"type": "qemu", "node": "pve2", "status": "running", "mem": 5 * GIB, "maxcpu": 8},
         GuestFigures(5 * GIB, 8, True)),
        ({"type": "lxc", "node": "pve2", "status": "stopped", "maxcpu": 2}, GuestFigures(0, 2, False)),
    ],
    ids=["running", "stopped, no mem"],
)
def test_guest_figures_read_from_a_cluster_resources_entry(entry: dict[str, Any], expected: GuestFigures) -> None:
    assert guest_figures(entry) == expected


def test_verify_reports_a_step_that_fits_refuses_in_the_words_of_fits() -> None:
    snap = snapshot_from_api(load_dump(REPO / "pvebalance" / "scenarios" / "tight.json")["api"])
    policy = Policy()
    biggest = max((g for g in snap.guests if g.node != "pve1" and g.running), key=lambda g: g.mem)
    onto_pve1 = Migration(vmid=biggest.vmid, name=biggest.name, type=biggest.type, source=biggest.node,
                          target="pve1", reason=MigrationReason.BALANCE, online=True)
    plan = plan_balance(snap, policy).model_copy(update={"actions": [onto_pve1]})
    why = fits(GuestFigures.of([biggest]), snapshot_figures(snap)["pve1"], policy)
    assert why is not None
    assert find_violations(snap, plan, policy, build_constraints(snap, policy)) == [f"step 1: {why}"]
