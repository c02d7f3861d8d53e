"""Privileges as PVE checks them, for tokens with fewer privileges than root.

Read from PVE's API code (2026-08): pve-manager PVE/API2/Cluster.pm (status, options: Sys.Audit on /;
resources: every user, entries filtered: a guest by VM.Audit on /vms/ID, a storage by Datastore.Audit
on /storage/ID, a node's figures by Sys.Audit on /nodes/NODE), Nodes.pm (status, rrddata: Sys.Audit on
/nodes/NODE), Tasks.pm (list: one's own tasks, all with Sys.Audit on /nodes/NODE; status: the owner, or
Sys.Audit), Pool.pm (list: pools with Pool.Audit; one pool: Pool.Audit on /pool/ID), Backup.pm (list:
Sys.Audit on /); qemu-server and pve-container (config, status/current: VM.Audit on /vms/ID; the guest
lists: filtered by VM.Audit; migrate and its pre-check: VM.Migrate on /vms/ID, plus
Datastore.AllocateSpace on a `targetstorage`); pve-ha-manager (rules, resources, status:
Sys.Audit on /; an HA migrate request: Sys.Console on /); pve-access-control (/access/permissions:
one's own effective privileges, `{path: {privilege: 1}}`, for the top paths and every ACL path).

A refused check answers 403 with PVE's text, `Permission check failed (PATH, PRIV)`. The simulator
grants a token its privileges on / with propagation (the usual ACL), so a privilege holds on every
path or on none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# Every privilege of PVE 9's roles (PVE/AccessControl.pm $privgroups): what root holds.
ALL = frozenset({
    "VM.Allocate", "VM.Audit", "VM.Backup", "VM.Clone", "VM.Config.CDROM", "VM.Config.CPU", "VM.Config.Cloudinit",
    "VM.Config.Disk", "VM.Config.HWType", "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options",
    "VM.Console", "VM.GuestAgent.Audit", "VM.GuestAgent.FileRead", "VM.GuestAgent.FileSystemMgmt",
    "VM.GuestAgent.FileWrite", "VM.GuestAgent.Unrestricted", "VM.Migrate", "VM.PowerMgmt", "VM.Replicate",
    "VM.Snapshot", "VM.Snapshot.Rollback",
    "Sys.AccessNetwork", "Sys.Audit", "Sys.Console", "Sys.Incoming", "Sys.Modify", "Sys.PowerMgmt", "Sys.Syslog",
    "Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate", "Datastore.Audit",
    "SDN.Allocate", "SDN.Audit", "SDN.Use", "Pool.Allocate", "Pool.Audit",
    "Realm.Allocate", "Realm.AllocateUser", "User.Modify", "Group.Allocate", "Permissions.Modify",
    "Mapping.Audit", "Mapping.Modify", "Mapping.Use",
})

# (method, path pattern, ACL path template, privilege): the routes whose handler PVE guards with a check
_GUARDS: list[tuple[str, re.Pattern[str], str, str]] = [
    (method, re.compile(f"^{pattern}$"), acl, priv) for method, pattern, acl, priv in (
        ("GET", r"/cluster/status", "/", "Sys.Audit"),
        ("GET", r"/cluster/options", "/", "Sys.Audit"),
        ("GET", r"/cluster/backup", "/", "Sys.Audit"),
        ("GET", r"/cluster/ha/rules", "/", "Sys.Audit"),
        ("GET", r"/cluster/ha/resources", "/", "Sys.Audit"),
        ("GET", r"/cluster/ha/groups", "/", "Sys.Audit"),
        ("GET", r"/cluster/ha/status/current", "/", "Sys.Audit"),
        ("GET", r"/cluster/ha/status/manager_status", "/", "Sys.Audit"),
        ("POST", r"/cluster/ha/resources/[^/]+/migrate", "/", "Sys.Console"),
        ("GET", r"/pools/(?P<poolid>[^/]+)", "/pool/{poolid}", "Pool.Audit"),
        ("GET", r"/nodes/(?P<node>[^/]+)/status", "/nodes/{node}", "Sys.Audit"),
        ("GET", r"/nodes/(?P<node>[^/]+)/rrddata", "/nodes/{node}", "Sys.Audit"),
        ("GET", r"/nodes/[^/]+/(?:qemu|lxc)/(?P<vmid>\d+)/(?:status/current|config|rrddata)", "/vms/{vmid}",
         "VM.Audit"),
        ("GET", r"/nodes/[^/]+/(?:qemu|lxc)/(?P<vmid>\d+)/migrate", "/vms/{vmid}", "VM.Migrate"),
        ("POST", r"/nodes/[^/]+/(?:qemu|lxc)/(?P<vmid>\d+)/migrate", "/vms/{vmid}", "VM.Migrate"),
    )
]
_TASK_STATUS = re.compile(r"^/nodes/(?P<node>[^/]+)/tasks/(?P<upid>[^/]+)/status$")
_TARGET_STORAGE = re.compile(r"^/nodes/[^/]+/(?:qemu|lxc)/\d+/migrate$")
_NODE_STATS = ("uptime", "cpu", "mem", "disk", "maxcpu", "maxmem", "maxdisk")
# the top paths PVE's get_effective_permissions always lists (RPCEnvironment.pm)
TOP_PATHS = ("/", "/access", "/access/groups", "/nodes", "/pool", "/sdn", "/storage", "/vms")


class Denied(Exception):
    """PVE's raise_perm_exc: answered 403 `Permission check failed (PATH, PRIV)`."""

    def __init__(self, path: str, priv: str) -> None:
        super().__init__(f"Permission check failed ({path}, {priv})")


def parse(text: str) -> frozenset[str]:
    """'Sys.Audit,VM.Audit' -> the set; ValueError naming a privilege PVE does not have."""
    privs = frozenset(p.strip() for p in text.split(",") if p.strip())
    unknown = sorted(privs - ALL)
    if unknown:
        raise ValueError(f"unknown privilege(s) {', '.join(unknown)} (PVE's: {', '.join(sorted(ALL))})")
    return privs


class Privileges:
    """Who holds which privileges: an identity (user or user!token) not named holds them all (root)."""

    def __init__(self, grants: dict[str, Iterable[str]] | None = None) -> None:
        self.grants = {ident: frozenset(privs) for ident, privs in (grants or {}).items()}

    def of(self, ident: str) -> frozenset[str]:
        return self.grants.get(ident, ALL)

    def check(self, ident: str, method: str, path: str, params: dict[str, Any]) -> None:
        """Raise Denied as PVE's handler would before it does anything."""
        held = self.of(ident)
        for guard_method, pattern, acl, priv in _GUARDS:
            m = pattern.match(path)
            if m and guard_method == method and priv not in held:
                raise Denied(acl.format(**m.groupdict()), priv)
        task = _TASK_STATUS.match(path)
        if method == "GET" and task and "Sys.Audit" not in held and task["upid"].split(":")[7:8] != [ident]:
            raise Denied(f"/nodes/{task['node']}", "Sys.Audit")  # not the task's owner
        storage = params.get("targetstorage") or params.get("target-storage")
        if method == "POST" and storage and _TARGET_STORAGE.match(path) and "Datastore.AllocateSpace" not in held:
            raise Denied(f"/storage/{str(storage).split(':')[-1]}", "Datastore.AllocateSpace")

    def effective(self, ident: str) -> dict[str, dict[str, int]]:
        """GET /access/permissions without arguments: every top path, privileges propagated from /."""
        held = self.of(ident)
        return {path: {p: 1 for p in sorted(held)} for path in TOP_PATHS} if held else {}

    def filtered(self, ident: str, method: str, path: str, data: Any) -> Any:
        """What a list answers a user who may see only part of it (PVE filters, it does not refuse)."""
        held = self.of(ident)
        if method != "GET" or held == ALL or not isinstance(data, list):
            return data
        if path == "/cluster/resources":
            out = []
            for entry in data:
                kind = entry.get("type") if isinstance(entry, dict) else None
                needs = {"qemu": "VM.Audit", "lxc": "VM.Audit", "storage": "Datastore.Audit", "pool": "Pool.Audit"}
                if kind in needs and needs[kind] not in held:
                    continue
                if kind == "node" and "Sys.Audit" not in held:
                    entry = {k: v for k, v in entry.items() if k not in _NODE_STATS}
                out.append(entry)
            return out
        if path == "/pools":
            return data if "Pool.Audit" in held else []
        if re.fullmatch(r"/nodes/[^/]+/(?:qemu|lxc)", path):
            return data if "VM.Audit" in held else []
        if re.fullmatch(r"/nodes/[^/]+/tasks", path) and "Sys.Audit" not in held:
            return [t for t in data if isinstance(t, dict) and _task_user(t) == ident]
        return data


def _task_user(task: dict[str, Any]) -> str:
    """A task list entry's owner as PVE writes it: a token's task shows user and tokenid apart."""
    return f"{task.get('user')}!{task['tokenid']}" if task.get("tokenid") else str(task.get("user"))
