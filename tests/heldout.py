"""Held-out clusters (issue 19): seeded `pve-api-dump/1` documents generated at test time, so that
the several-dimensions tests judge the engine on clusters it was never tuned on.

Nothing here is read from the bundled scenarios, and nothing of pvebalance is imported: a cluster
is what a recording of a real one would hold (`/cluster/resources`, each guest's config,
`/cluster/ha/rules`, `/cluster/ha/resources`, `/pools`), drawn from `random.Random(seed)`:

- 3-8 nodes of mixed sizes: memory and cores drawn apart, so a node rich in one may be poor in the
  other; the host's own use beside its guests (a few GiB, a few % of its cores);
- VMs and containers of four kinds: memory-heavy and CPU-light, CPU-heavy and memory-light, mixed,
  small containers; the memory-heavy ones piled on some nodes and the CPU-heavy on others, so that
  balancing one dimension does not balance the other;
- stopped guests, templates, guests that cannot move (a PCI device, a `plb_ignore` tag, a backup
  lock), guests with disks on local storage (a cluster of 5 nodes or more has one without), a `plb_pin` and a
  `plb_anti_affinity` tag;
- PVE 9.2 HA rules: node-affinity strict and not, positive (with priorities) and negative, one
  resource with failback off, resource-affinity positive and negative; some guests start outside
  their rule, as after a rule was added.

The cluster's average use is drawn (memory 40-60 %, CPU 30-55 %), and guests are scaled to it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

GIB = 2**30
MIB = 2**20
NODE_MEMORY_GIB = (64, 96, 128, 192, 256, 384, 512)
NODE_CORES = (12, 16, 24, 32, 48, 64, 96)
LOCAL = "local-lvm"
SHARED = "ceph-vm"
# Where guests start: no node above these shares (memory, cores), as PVE's own placement would leave it
START_MEMORY, START_CPU = 0.88, 0.92


@dataclass
class Guest:
    vmid: int
    kind: str  # "qemu" or "lxc"
    profile: str  # "memory", "cpu", "mixed", "container"
    maxmem: int  # bytes, the config's memory
    mem: float  # bytes in use while running
    vcpus: int
    cores_used: float  # cores in use while running
    running: bool = True
    template: bool = False
    node: str = ""
    local_disk_gib: int = 0
    tags: list[str] = field(default_factory=list)
    lock: str | None = None
    hostpci: bool = False
    ha: bool = False
    want: list[str] = field(default_factory=list)  # nodes it is placed on first, if one has room


@dataclass
class Node:
    name: str
    memory_gib: int
    cores: int
    host_mem: float
    host_cores: float
    local_tib: int  # 0: no local storage for guest disks


def _profile(rng: random.Random, kind: str) -> tuple[str, float, int, float]:
    """A guest's kind of load: (profile, memory in use GiB, vCPUs, cores in use), before scaling."""
    if kind == "lxc":
        cores = rng.choice((1, 1, 2, 2, 4))
        return "container", rng.uniform(0.3, 3.0), cores, cores * rng.uniform(0.05, 0.5)
    roll = rng.random()
    if roll < 0.35:
        vcpus = rng.choice((2, 2, 4, 4, 8))
        return "memory", rng.uniform(8.0, 48.0), vcpus, vcpus * rng.uniform(0.02, 0.12)
    if roll < 0.65:
        vcpus = rng.choice((4, 8, 8, 12, 16))
        return "cpu", rng.uniform(1.0, 4.0), vcpus, vcpus * rng.uniform(0.45, 0.9)
    vcpus = rng.choice((2, 4, 4, 8))
    return "mixed", rng.uniform(3.0, 16.0), vcpus, vcpus * rng.uniform(0.15, 0.5)


def _nodes(rng: random.Random, count: int) -> list[Node]:
    nodes = []
    for i in range(count):
        memory, cores = rng.choice(NODE_MEMORY_GIB), rng.choice(NODE_CORES)
        local = rng.choice((2, 4, 4, 8))
        nodes.append(Node(f"hv{i + 1}", memory, cores, (2.0 + 0.015 * memory) * GIB, cores * rng.uniform(0.01, 0.04),
                          local))
    if count >= 5:
        nodes[-1].local_tib = 0  # a node without local storage: guests with local disks cannot go there
    return nodes


def _guests(rng: random.Random, nodes: list[Node], count: int) -> list[Guest]:
    guests = []
    for i in range(count):
        kind = "lxc" if rng.random() < 0.25 else "qemu"
        profile, mem_gib, vcpus, cores = _profile(rng, kind)
        guests.append(Guest(100 + i, kind, profile, 0, mem_gib * GIB, vcpus, cores))
    # scale memory and CPU in use to the cluster's drawn average (host use counted)
    memory_total = sum(n.memory_gib * GIB for n in nodes)
    cores_total = sum(n.cores for n in nodes)
    memory_share, cpu_share = rng.uniform(0.40, 0.60), rng.uniform(0.30, 0.55)
    running = [g for g in guests if rng.random() >= 0.08]
    mem_scale = (memory_share * memory_total - sum(n.host_mem for n in nodes)) / sum(g.mem for g in running)
    cpu_scale = (cpu_share * cores_total - sum(n.host_cores for n in nodes)) / sum(g.cores_used for g in running)
    largest = max(n.cores for n in nodes)
    for g in guests:
        g.running = g in running
        g.mem *= mem_scale
        g.cores_used *= cpu_scale
        g.vcpus = min(max(g.vcpus, math.ceil(g.cores_used / 0.9)), largest)
        g.cores_used = min(g.cores_used, 0.95 * g.vcpus)
        g.maxmem = max(math.ceil(g.mem / rng.uniform(0.6, 0.95) / (256 * MIB)), 1) * 256 * MIB
        if not g.running:
            g.mem, g.cores_used = 0.0, 0.0
    return guests


def _place(rng: random.Random, nodes: list[Node], guests: list[Guest]) -> None:
    """Memory-heavy guests lean to some nodes, CPU-heavy ones to others, a guest of an HA rule to the
    nodes it was wished on; no node above the start limits while another has room."""
    lean = {p: [rng.random() ** 3 for _ in nodes] for p in ("memory", "cpu", "mixed", "container")}
    mem = {n.name: n.host_mem for n in nodes}
    cores = {n.name: n.host_cores for n in nodes}
    by_name = {n.name: n for n in nodes}
    for g in sorted(guests, key=lambda g: (-g.mem, g.vmid)):
        weights = lean[g.profile]
        order = [nodes[i] for i in sorted(range(len(nodes)), key=lambda i: -weights[i] * rng.random())]
        wished = [by_name[w] for w in g.want]
        order = wished + [n for n in order if n not in wished]
        fits = [n for n in order if mem[n.name] + g.mem <= START_MEMORY * n.memory_gib * GIB
                and cores[n.name] + g.cores_used <= START_CPU * n.cores and g.vcpus <= n.cores]
        pick = fits[0] if fits else min(order, key=lambda n: max((mem[n.name] + g.mem) / (n.memory_gib * GIB),
                                                                (cores[n.name] + g.cores_used) / n.cores))
        g.node = pick.name
        mem[pick.name] += g.mem
        cores[pick.name] += g.cores_used


def _mark(rng: random.Random, nodes: list[Node], guests: list[Guest]) -> list[Guest]:
    """Templates, guests that cannot move (among the small ones in both dimensions: a large one on a
    small node could make a band unreachable by itself), ProxLB tags. The guests left free (running,
    movable) are returned, shuffled, for the HA rules."""
    stopped = sorted((g for g in guests if not g.running), key=lambda g: (g.kind != "qemu", g.vmid))
    for g in stopped[:2]:  # VM templates, else container templates
        g.template = True
    running = [g for g in guests if g.running]
    rng.shuffle(running)
    mem_median = sorted(g.mem for g in running)[len(running) // 2]
    cpu_median = sorted(g.cores_used for g in running)[len(running) // 2]
    small = [g for g in running if g.mem <= mem_median and g.cores_used <= cpu_median]
    small_vms = [g for g in small if g.kind == "qemu"] or sorted((g for g in running if g.kind == "qemu"),
                                                               key=lambda g: (g.mem, g.vmid))[:1]
    pci = rng.sample(small_vms, min(len(small_vms), max(1, len(guests) // 80)))  # a GPU or NIC passed through
    for g in pci:
        g.hostpci = True
    others = [g for g in small if g not in pci]
    if len(others) < 2:  # a small cluster: the smallest by memory
        others = sorted((g for g in running if g not in pci), key=lambda g: (g.mem, g.vmid))[:2]
    fixed = rng.sample(others, 2) + pci
    fixed[0].tags.append("plb_ignore_backup-server")
    fixed[1].lock = "backup"
    free = [g for g in running if g not in fixed]
    free[0].tags += [f"plb_pin_{nodes[0].name}", f"plb_pin_{nodes[-1].name}"]
    for g in free[1:3]:
        g.tags.append("plb_anti_affinity_dns")
    return free[3:]


def _local_disks(rng: random.Random, nodes: list[Node], guests: list[Guest]) -> None:
    """About one guest in seven outside the HA rules gets a disk on its node's local storage."""
    with_local = {n.name for n in nodes if n.local_tib}
    eligible = [g for g in guests if not g.ha and not g.template and g.node in with_local]
    for g in eligible:
        if rng.random() < 1 / 7:
            g.local_disk_gib = rng.choice((32, 64, 100, 200))
    if eligible and not any(g.local_disk_gib for g in guests):
        eligible[0].local_disk_gib = 64  # at least one


def _ha_rules(rng: random.Random, nodes: list[Node], free: list[Guest]) -> tuple[list[dict[str, Any]], list[int]]:
    """The rules and the vmids with failback off; each guest in at most one rule, each wished on
    nodes before it is placed: mostly inside its rule, now and then outside, as after a rule was added."""
    names = [n.name for n in nodes]
    rules: list[dict[str, Any]] = []
    failback_off: list[int] = []
    pool = list(free)

    def take(most: int, least: int = 1) -> list[Guest]:
        taken = pool[: rng.randint(least, most)] if len(pool) >= 2 * most else []
        del pool[: len(taken)]
        for g in taken:
            g.ha = True
        return taken

    def sids(guests: list[Guest]) -> str:
        return ",".join(f"{'vm' if g.kind == 'qemu' else 'ct'}:{g.vmid}" for g in guests)

    def wish(guest: Guest, inside: list[str]) -> None:
        outside = [n for n in names if n not in inside]
        guest.want = [rng.choice(outside)] if outside and rng.random() < 0.3 else rng.sample(inside, len(inside))

    a, b, c = rng.sample(names, 3)
    if members := take(3):
        for g in members:
            g.want = [rng.choice((a, b))] if rng.random() < 0.7 else [c]
        rules.append({"rule": "db-on-two", "type": "node-affinity", "nodes": f"{a}:2,{b}:2,{c}:1",
                      "resources": sids(members), "strict": 1, "comment": "databases: these two, else the third"})
        failback_off.append(members[-1].vmid)  # failback off: it may stay on any node of its rule, c too
    top = rng.sample(names, 2)
    if members := take(4):
        for g in members:
            wish(g, top)
        rules.append({"rule": "web-prefers", "type": "node-affinity", "nodes": ",".join(top),
                      "resources": sids(members), "strict": 0})
    kept_off = rng.sample(names, rng.randint(1, len(names) - 2) if len(names) > 3 else 1)
    if members := take(3):
        for g in members:
            wish(g, [n for n in names if n not in kept_off])
        rules.append({"rule": "licence-off", "type": "node-affinity", "affinity": "negative",
                      "nodes": ",".join(kept_off), "resources": sids(members), "strict": 1})
    avoid = rng.choice(names)
    if members := take(3):
        for g in members:
            wish(g, [n for n in names if n != avoid])
        rules.append({"rule": "batch-avoid", "type": "node-affinity", "affinity": "negative", "nodes": avoid,
                      "resources": sids(members), "strict": 0})
    home = rng.choice(names)
    if members := take(3, least=2):
        for g in members:
            g.want = [home] if rng.random() < 0.8 else [rng.choice(names)]
        rules.append({"rule": "app-with-cache", "type": "resource-affinity", "affinity": "positive",
                      "resources": sids(members)})
    if members := take(min(4, len(names) - 1), least=2):
        for g, spot in zip(members, rng.sample(names, len(members)), strict=True):
            g.want = [spot]
        if rng.random() < 0.5:
            members[1].want = members[0].want  # a pair wished on one node: the plan must part them
        rules.append({"rule": "replicas-apart", "type": "resource-affinity", "affinity": "negative",
                      "resources": sids(members)})
    return rules, failback_off


def _config(g: Guest) -> dict[str, Any]:
    storage = LOCAL if g.local_disk_gib else SHARED
    size = g.local_disk_gib or 32
    if g.kind == "lxc":
        config: dict[str, Any] = {"arch": "amd64", "cores": g.vcpus, "hostname": f"ct{g.vmid}",
                                  "memory": g.maxmem // MIB, "ostype": "debian", "swap": 512,
                                  "rootfs": f"{storage}:vm-{g.vmid}-disk-0,size={size}G",
                                  "net0": "name=eth0,bridge=vmbr0,ip=dhcp"}
    else:
        config = {"boot": "order=scsi0", "cores": g.vcpus, "sockets": 1, "cpu": "x86-64-v2-AES",
                  "memory": str(g.maxmem // MIB), "name": f"vm{g.vmid}", "ostype": "l26",
                  "scsi0": f"{storage}:vm-{g.vmid}-disk-0,size={size}G",
                  "net0": f"virtio=BC:24:11:00:{g.vmid // 256 % 256:02X}:{g.vmid % 256:02X},bridge=vmbr0"}
        if g.hostpci:
            config["hostpci0"] = "0000:81:00.0,pcie=1"
    if g.template:
        config["template"] = 1
    if g.tags:
        config["tags"] = ";".join(g.tags)
    return config


def _resource(g: Guest) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": f"{g.kind}/{g.vmid}", "type": g.kind, "vmid": g.vmid, "node": g.node,
        "name": f"{'ct' if g.kind == 'lxc' else 'vm'}{g.vmid}", "status": "running" if g.running else "stopped",
        "template": int(g.template), "maxcpu": g.vcpus, "cpu": round(g.cores_used / g.vcpus, 6) if g.running else 0,
        "maxmem": g.maxmem, "mem": int(g.mem) if g.running else 0, "maxdisk": (g.local_disk_gib or 32) * GIB,
        "disk": 0, "uptime": 864000 if g.running else 0,
    }
    if g.tags:
        entry["tags"] = ";".join(g.tags)
    if g.lock:
        entry["lock"] = g.lock
    if g.ha:
        entry["hastate"] = "started"
    return entry


def held_out_shape(seed: int) -> tuple[int, int]:
    """The seed's own cluster size: 3-8 nodes, 8-20 guests a node."""
    rng = random.Random(1000 + seed)
    nodes = rng.randint(3, 8)
    return nodes, nodes * rng.randint(8, 20)


def held_out_cluster(seed: int, nodes: int | None = None, guests: int | None = None) -> dict[str, Any]:
    """A `pve-api-dump/1` document of a cluster drawn from the seed: `nodes` nodes, `guests` guests
    (by default the seed's own shape, `held_out_shape`)."""
    if nodes is None or guests is None:
        nodes, guests = held_out_shape(seed)
    rng = random.Random(seed)
    node_list = _nodes(rng, nodes)
    guest_list = _guests(rng, node_list, guests)
    free = _mark(rng, node_list, guest_list)
    rules, failback_off = _ha_rules(rng, node_list, free)
    _place(rng, node_list, guest_list)
    _local_disks(rng, node_list, guest_list)
    resources: list[dict[str, Any]] = []
    api: dict[str, Any] = {"/cluster/resources": resources}
    for n in node_list:
        on = [g for g in guest_list if g.node == n.name and g.running]
        mem = n.host_mem + sum(g.mem for g in on)
        cores = n.host_cores + sum(g.cores_used for g in on)
        resources.append({"id": f"node/{n.name}", "type": "node", "node": n.name, "status": "online",
                          "maxmem": n.memory_gib * GIB, "mem": int(mem), "maxcpu": n.cores,
                          "cpu": round(min(cores / n.cores, 1.0), 6), "uptime": 864000, "level": ""})
        resources.append({"id": f"storage/{n.name}/{SHARED}", "type": "storage", "node": n.name,
                          "storage": SHARED, "shared": 1, "content": "images,rootdir", "plugintype": "rbd",
                          "status": "available", "maxdisk": 200 * 2**40, "disk": 40 * 2**40})
        if n.local_tib:
            local = sum(g.local_disk_gib for g in guest_list if g.node == n.name) * GIB
            resources.append({"id": f"storage/{n.name}/{LOCAL}", "type": "storage", "node": n.name,
                              "storage": LOCAL, "shared": 0, "content": "images,rootdir", "plugintype": "lvmthin",
                              "status": "available", "maxdisk": n.local_tib * 2**40, "disk": local + 20 * GIB})
    for g in guest_list:
        resources.append(_resource(g))
        api[f"/nodes/{g.node}/{g.kind}/{g.vmid}/config"] = _config(g)
    api["/cluster/ha/rules"] = rules
    api["/cluster/ha/resources"] = [
        {"sid": f"{'vm' if g.kind == 'qemu' else 'ct'}:{g.vmid}", "type": "vm" if g.kind == "qemu" else "ct",
         "state": "started", "max_restart": 1, "max_relocate": 1, **({"failback": 0} if g.vmid in failback_off else {})}
        for g in guest_list if g.ha]
    members = [g for g in guest_list if g.profile == "cpu"][:5]
    api["/pools"] = [{"poolid": "batch", "comment": "CPU-heavy jobs"}]
    api["/pools/batch"] = {"poolid": "batch", "members": [{"id": f"{g.kind}/{g.vmid}", "type": g.kind,
                                                           "vmid": g.vmid, "node": g.node} for g in members]}
    return {"format": "pve-api-dump/1", "name": f"held-out-{seed}",
            "description": f"held-out cluster, seed {seed}: {nodes} nodes, {guests} guests (tests/heldout.py)",
            "api": api}
