"""The Proxmox VE privileges pvebalance's services need: the least set, and what each is for.

Found by listing every API call the services make (services/collector, services/migrator) and the
check PVE's own handler makes for it (pve-manager PVE/API2/Cluster.pm, Nodes.pm, Tasks.pm, Pool.pm,
Backup.pm; qemu-server and pve-container API2; pve-ha-manager API2/HA; read 2026-08):

- Sys.Audit on /: /cluster/status and /cluster/options (collector), /cluster/ha/rules and
  /cluster/ha/resources (collector, pre-flight), /cluster/backup (pre-flight).
- Sys.Audit on /nodes/NODE: /nodes/NODE/status and /rrddata (collector, pre-flight); the figures of
  the node entries of /cluster/resources (without it PVE leaves them out); the tasks of a node
  (a migration's task, for the resume path, may have been started by another session).
- VM.Audit on /vms/VMID: a guest in /cluster/resources and the guest lists (filtered out without
  it), its config (collector) and status/current (pre-flight).
- Datastore.Audit on /storage/ID: the storage entries of /cluster/resources (local disks' room).
- Pool.Audit on /pool/POOL: /pools and /pools/POOL (pool rules).
- VM.Migrate on /vms/VMID: POST /nodes/NODE/{qemu,lxc}/VMID/migrate and its pre-check (GET).
  An HA-managed guest's migrate becomes PVE's `hamigrate` task with no other check.

With storage balancing on (`storage_balancing.enable`), the migrators also move disks:
- VM.Config.Disk on /vms/VMID: POST /nodes/NODE/qemu/VMID/move_disk and .../lxc/VMID/move_volume;
- Datastore.AllocateSpace on /storage/ID: the target storage of a disk move (qemu-server and
  pve-container check it there before the copy allocates its volume);
  and they read the node's storages and a storage's content (Datastore.Audit, above).

Not needed: Sys.Console (only POST /cluster/ha/resources/SID/migrate, which pvebalance does not
call), anything else that changes a guest's config.
"""

from __future__ import annotations

from typing import NamedTuple


class Needed(NamedTuple):
    privilege: str
    path: str  # the ACL path it must hold on (an ACL on / with propagation covers them all)
    what_for: str


NEEDED: tuple[Needed, ...] = (
    Needed("Sys.Audit", "/", "the collector reads /cluster/status, /cluster/options and the HA rules and "
           "resources; the migrators' pre-flight reads /cluster/backup"),
    Needed("Sys.Audit", "/nodes", "the collector reads each node's figures (/nodes/NODE/status, rrddata)"),
    Needed("VM.Audit", "/vms", "the collector sees the guests and reads their configs"),
    Needed("Datastore.Audit", "/storage", "the collector sees the storages (room for local disks)"),
    Needed("Pool.Audit", "/pool", "the collector reads the pools (pool rules)"),
    Needed("VM.Migrate", "/vms", "the migrators migrate guests"),
)


STORAGE_BALANCING: tuple[Needed, ...] = (
    Needed("VM.Config.Disk", "/vms", "the migrators move guests' disks (storage_balancing.enable)"),
    Needed("Datastore.AllocateSpace", "/storage", "a disk move allocates its copy on the target storage "
           "(storage_balancing.enable)"),
)


def needed(storage_balancing: bool = False) -> tuple[Needed, ...]:
    """What the services need, with storage balancing on or off."""
    return NEEDED + (STORAGE_BALANCING if storage_balancing else ())


def missing(effective: dict[str, dict[str, object]], storage_balancing: bool = False) -> list[Needed]:
    """The needed privileges that `/access/permissions` (path -> {privilege: propagate}) does not show
    on their path: PVE lists its top paths with what propagates onto them."""
    return [n for n in needed(storage_balancing) if n.privilege not in (effective.get(n.path) or {})]


def names(storage_balancing: bool = False) -> list[str]:
    """Each needed privilege once, in order: the role's privileges."""
    return list(dict.fromkeys(n.privilege for n in needed(storage_balancing)))
