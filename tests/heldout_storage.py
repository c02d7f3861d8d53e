"""Held-out clusters for storage balancing: seeded pve-api-dump/1 documents that no plan was tuned on.

Not derived from storage-3 (the scenario the engine was built against): other node and storage names,
3-5 shared storages of different kinds, capacities and fill (one or two above 80 %), 40-200 guests
(VMs and containers) with 1-3 disks of varied sizes, some EFI disks and TPM states, and the disks PVE
will not move: templates' base images, guests with snapshots (`parent`), locked guests, running
containers' volumes, a running VM's TPM state, CD-ROM images. Some storages hold no container volumes
(`images` only) or are available on some nodes only; an ISO/backup storage and each node's local-lvm
are not in the group. The nodes are even in memory and CPU, so a whole plan of one of these clusters
is disk moves only.

Written from PVE's documented answer shapes (see /cluster/resources, guest configs, /storage), with
no import of pvebalance: the product reads these documents as it reads a recorded cluster.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

GIB = 1 << 30
DUMP_FORMAT = "pve-api-dump/1"

# (name, plugin type, content): shared storages a cluster may have; each seed takes 3-5 of them
_KINDS = [("ceph-vm", "rbd", "images,rootdir"), ("nfs-prod", "nfs", "images,rootdir,iso,backup"),
          ("san-lvm", "lvm", "images"), ("nfs-bulk", "nfs", "images,rootdir,backup"),
          ("ceph-ssd", "rbd", "images,rootdir"), ("iscsi-lvm", "lvm", "images,rootdir"),
          ("gluster-a", "glusterfs", "images,iso")]
_VM_SIZES = [8, 16, 20, 32, 32, 40, 50, 64, 64, 80, 100, 120, 128, 128, 150, 200, 250, 256, 300, 400, 500, 512,
             600, 750, 1024]
_CT_SIZES = [4, 8, 8, 10, 16, 20, 32, 50, 64, 100, 200]
_ISOS = [("debian-12.7.0-amd64-netinst.iso", "631M"), ("ubuntu-24.04.1-live-server-amd64.iso", "2712M"),
         ("virtio-win-0.1.262.iso", "709M"), ("Win2022_EN-US.iso", "4.7G")]
_LOCKS = ["backup", "snapshot", "clone", "migrate", "suspended"]

# The seeds tests/unit/test_storage_balance_heldout.py and `bench storage` plan, and what each holds:
# chosen from the first 40 (every one of which the engine balanced within 1.10x) for variety and a MILP
# that settles in seconds.
SEEDS = {
    1: "3 nodes, 181 guests; 3 storages at 89 / 64 / 29 %, one for VM disks only",
    10: "5 nodes, 59 guests; 5 storages (1-14 TiB), one for VM disks only and not on every node",
    14: "5 nodes, 172 guests; 5 storages, one alone above 80 % (82 %), the others 56-74 %",
    20: "5 nodes, 178 guests; 3 storages at 92 % (above max_usage) / 86 % / 18 %, the empty one not on every node",
    35: "5 nodes, 86 guests; 5 storages, two at 85 %, two for VM disks only",
    36: "3 nodes, 71 guests; 4 storages at 86 / 50 / 26 / 19 %",
}


@dataclass
class _Storage:
    name: str
    plugin: str
    content: str
    nodes: list[str]
    fill: float  # the share of its capacity used once every volume is on it
    disks: int = 0  # bytes of guest volumes on it
    extra: int = 0  # ISO images, backups, volumes no config names


@dataclass
class _Guest:
    vmid: int
    gtype: str
    node: str
    status: str
    config: dict[str, Any] = field(default_factory=dict)
    lock: str | None = None  # shown in /cluster/resources too
    template: bool = False
    maxdisk: int = 0


def heldout_cluster(seed: int) -> dict[str, Any]:
    """A pve-api-dump/1 document, the same for the same seed."""
    rng = random.Random(f"heldout-storage/{seed}")
    nodes = [f"hv{i:02d}" for i in range(1, rng.randint(3, 5) + 1)]
    storages = _storages(rng, nodes)
    guests = _guests(rng, nodes, storages)
    return {"format": DUMP_FORMAT, "name": f"heldout-storage-{seed}",
            "description": f"held-out storage balancing cluster, seed {seed}: {len(nodes)} nodes, "
                           f"{len(storages)} shared storages, {len(guests)} guests",
            "api": _api(rng, nodes, storages, guests)}


def _storages(rng: random.Random, nodes: list[str]) -> list[_Storage]:
    kinds = rng.sample(_KINDS, rng.randint(3, 5))
    hot = rng.choice([1, 2])
    # roomy: the others have room to spare; tight: they too are fairly full, and max_usage binds
    cold = (0.18, 0.66) if rng.random() < 0.5 else (0.55, 0.79)
    out = []
    for i, (name, plugin, content) in enumerate(kinds):
        fill = rng.uniform(0.81, 0.93) if i < hot else rng.uniform(*cold)
        where = list(nodes)
        if i == len(kinds) - 1 and rng.random() < 0.5:  # storage.cfg `nodes`: not seen everywhere
            where = sorted(rng.sample(nodes, len(nodes) - 1))
        out.append(_Storage(name, plugin, content, where, fill))
    rng.shuffle(out)
    return out


def _size(gib: float) -> str:
    if gib >= 1024 and gib % 1024 == 0:
        return f"{int(gib) // 1024}T"
    return f"{gib:g}G"


def _holder(rng: random.Random, storages: list[_Storage], node: str, content: str,
            avoid: str | None = None) -> _Storage | None:
    """A storage for a new volume: one that holds the content on the guest's node, the fuller it
    is meant to end the likelier (so the hot storages hold many disks, movable or not)."""
    fits = [s for s in storages if content in s.content.split(",") and node in s.nodes and s.name != avoid]
    if not fits:
        return None
    return rng.choices(fits, weights=[s.fill ** 2 for s in fits])[0]


def _guests(rng: random.Random, nodes: list[str], storages: list[_Storage]) -> list[_Guest]:
    guests = []
    vmid = rng.randint(100, 140)
    for _ in range(rng.randint(40, 200)):
        vmid += rng.choice([1, 1, 1, 2, 5])
        lxc = rng.random() < 0.25
        g = _Guest(vmid, "lxc" if lxc else "qemu", rng.choice(nodes),
                   "running" if rng.random() < (0.7 if lxc else 0.85) else "stopped")
        if (_container if lxc else _vm)(rng, g, storages):
            _marks(rng, g)
            guests.append(g)
    return guests


def _volume(g: _Guest, where: _Storage, n: int, gib: float, options: str = "") -> str:
    where.disks += int(gib * GIB)
    g.maxdisk = g.maxdisk or int(gib * GIB)
    prefix = "base" if g.template else "vm"
    return f"{where.name}:{prefix}-{g.vmid}-disk-{n},{options}size={_size(gib)}"


def _vm(rng: random.Random, g: _Guest, storages: list[_Storage]) -> bool:
    home = _holder(rng, storages, g.node, "images")
    if home is None:
        return False
    g.template = rng.random() < 0.04
    if g.template:
        g.status = "stopped"
    bus = rng.choice(["scsi", "scsi", "virtio", "sata"])
    c: dict[str, Any] = {"name": f"app-{g.vmid}", "memory": str(rng.choice([2048, 4096, 8192, 16384])),
                         "cores": rng.choice([1, 2, 4, 8]), "sockets": 1, "cpu": "x86-64-v2-AES", "ostype": "l26",
                         "net0": f"virtio=BC:24:11:{g.vmid // 256 % 256:02X}:{g.vmid % 256:02X}:01,bridge=vmbr0",
                         "boot": f"order={bus}0;net0", "scsihw": "virtio-scsi-single"}
    n = 0
    for i in range(rng.choices([1, 2, 3], weights=[55, 30, 15])[0]):
        where = home if i == 0 or rng.random() < 0.7 else _holder(rng, storages, g.node, "images", home.name) or home
        opts = "iothread=1," if bus == "scsi" and rng.random() < 0.5 else ""
        c[f"{bus}{i}"] = _volume(g, where, n, rng.choice(_VM_SIZES), opts)
        n += 1
    if rng.random() < 0.3:  # UEFI guests: an EFI vars disk, and a TPM state for some
        c["bios"] = "ovmf"
        prefix = "base" if g.template else "vm"
        c["efidisk0"] = f"{home.name}:{prefix}-{g.vmid}-disk-{n},efitype=4m,pre-enrolled-keys=1,size=528K"
        home.disks += 528 << 10
        n += 1
        if rng.random() < 0.5:
            c["tpmstate0"] = f"{home.name}:{prefix}-{g.vmid}-disk-{n},version=v2.0,size=4M"
            home.disks += 4 << 20
    if rng.random() < 0.3:
        isos = [s for s in storages if "iso" in s.content.split(",") and g.node in s.nodes]
        if isos and rng.random() < 0.7:
            iso, size = rng.choice(_ISOS)
            c["ide2"] = f"{rng.choice(isos).name}:iso/{iso},media=cdrom,size={size}"
        else:
            c["ide2"] = "none,media=cdrom"
    if rng.random() < 0.05:  # a volume left behind by a detached disk: on the storage, not a disk
        c["unused0"] = f"{home.name}:vm-{g.vmid}-disk-{n + 1}"
        home.extra += rng.choice([16, 32, 64]) * GIB
    g.config = c
    return True


def _container(rng: random.Random, g: _Guest, storages: list[_Storage]) -> bool:
    home = _holder(rng, storages, g.node, "rootdir")
    if home is None:
        return False
    c: dict[str, Any] = {"hostname": f"ct-{g.vmid}", "memory": rng.choice([512, 1024, 2048, 4096]),
                         "swap": 512, "cores": rng.choice([1, 2, 4]), "ostype": "debian", "arch": "amd64",
                         "net0": f"name=eth0,bridge=vmbr0,hwaddr=BC:24:11:{g.vmid % 256:02X}:00:02,ip=dhcp",
                         "rootfs": _volume(g, home, 0, rng.choice(_CT_SIZES))}
    for i in range(rng.choices([0, 1, 2], weights=[60, 30, 10])[0]):
        where = home if rng.random() < 0.6 else _holder(rng, storages, g.node, "rootdir", home.name) or home
        c[f"mp{i}"] = _volume(g, where, i + 1, rng.choice(_VM_SIZES[:-4]), f"mp=/srv/data{i},")
    g.config = c
    return True


def _marks(rng: random.Random, g: _Guest) -> None:
    """Snapshots and locks, the config states that keep a guest's disks where they are."""
    if g.template:
        g.config["template"] = 1
        return
    roll = rng.random()
    if roll < 0.06:
        g.config["parent"] = rng.choice(["before-upgrade", "daily-2026-12-01", "pre-patch"])
    elif roll < 0.09:
        g.lock = rng.choice(_LOCKS)
        g.config["lock"] = g.lock


def _api(rng: random.Random, nodes: list[str], storages: list[_Storage], guests: list[_Guest]) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for n in nodes:  # even nodes: the whole plan balances storages, not nodes
        maxmem = 512 * GIB
        resources.append({"type": "node", "id": f"node/{n}", "node": n, "status": "online", "level": "",
                          "cgroup-mode": 2, "uptime": 1_209_600, "maxcpu": 64,
                          "cpu": round(0.30 + rng.uniform(0, 0.01), 4), "maxmem": maxmem,
                          "mem": int(maxmem * (0.50 + rng.uniform(0, 0.01))),
                          "disk": 12 * GIB, "maxdisk": 100 * GIB})
    for s in storages:
        s.extra += rng.randint(0, 40) * 10 * GIB  # backups, ISO images, orphans
        total = ((s.disks + s.extra) / s.fill // (64 * GIB) + 1) * 64 * GIB
        for n in s.nodes:
            resources.append({"type": "storage", "id": f"storage/{n}/{s.name}", "storage": s.name, "node": n,
                              "plugintype": s.plugin, "status": "available", "shared": 1, "content": s.content,
                              "disk": s.disks + s.extra, "maxdisk": int(total)})
    for n in nodes:
        resources.append({"type": "storage", "id": f"storage/{n}/local-lvm", "storage": "local-lvm", "node": n,
                          "plugintype": "lvmthin", "status": "available", "shared": 0, "content": "images,rootdir",
                          "disk": 40 * GIB, "maxdisk": 900 * GIB})
        resources.append({"type": "storage", "id": f"storage/{n}/cephfs-iso", "storage": "cephfs-iso", "node": n,
                          "plugintype": "cephfs", "status": "available", "shared": 1, "content": "iso,vztmpl,backup",
                          "disk": 700 * GIB, "maxdisk": 2000 * GIB})
    api: dict[str, Any] = {"/cluster/ha/resources": [], "/cluster/ha/rules": [], "/pools": []}
    for g in guests:
        running = g.status == "running"
        maxmem = int(g.config.get("memory", 512)) << 20
        entry: dict[str, Any] = {
            "type": g.gtype, "id": f"{g.gtype}/{g.vmid}", "vmid": g.vmid, "node": g.node, "status": g.status,
            "name": g.config.get("name") or g.config.get("hostname"), "template": int(g.template),
            "maxcpu": g.config.get("cores", 1), "cpu": round(rng.uniform(0.01, 0.2), 4) if running else 0,
            "maxmem": maxmem, "mem": int(maxmem * rng.uniform(0.3, 0.8)) if running else 0,
            "maxdisk": g.maxdisk, "disk": 0, "uptime": rng.randint(3600, 9_000_000) if running else 0,
            "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0}
        if g.lock and rng.random() < 0.5:  # sometimes the config alone says it (a stale list)
            entry["lock"] = g.lock
        resources.append(entry)
        api[f"/nodes/{g.node}/{g.gtype}/{g.vmid}/config"] = {**g.config, "digest": f"{g.vmid:040x}"}
    api["/cluster/resources"] = resources
    api["/storage"] = [{"storage": s.name, "type": s.plugin, "content": s.content, "shared": 1,
                        **({"nodes": ",".join(s.nodes)} if s.nodes != nodes else {})} for s in storages]
    api["/storage"] += [{"storage": "local-lvm", "type": "lvmthin", "content": "images,rootdir"},
                        {"storage": "cephfs-iso", "type": "cephfs", "content": "iso,vztmpl,backup", "shared": 1}]
    return api
