"""From what the Proxmox VE API answers to a ClusterSnapshot.

Both the collector (live answers) and the offline `plan --scenario` (a recorded `pve-api-dump/1`
file) hand this module the same thing: a mapping of API path (without /api2/json) to the `data`
that path returns. One translation, so a recorded cluster plans exactly as the live one would.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from .models import ClusterSnapshot, GuestState, GuestType, HaRule, NodeState

DUMP_FORMAT = "pve-api-dump/1"

_QEMU_DISK = re.compile(r"^(ide|sata|scsi|virtio|efidisk|tpmstate)\d+$")
_LXC_DISK = re.compile(r"^(rootfs|mp\d+)$")
_LOCAL_RESOURCE = re.compile(r"^(hostpci\d+|usb\d+|serial\d+|parallel\d+|ivshmem|virtiofs\d+)$")
_SIZE = re.compile(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)(?:,|$)")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class DumpError(Exception):
    """A recorded cluster file that cannot be used, worded for the operator."""


def load_dump(source: str | Path) -> dict[str, Any]:
    """Read a pve-api-dump/1 file, by path or by the name of a bundled scenario."""
    path = resolve_scenario(source)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DumpError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != DUMP_FORMAT:
        raise DumpError(f"{path} is not a {DUMP_FORMAT} file (its 'format' key must be {DUMP_FORMAT!r})")
    api = doc.get("api")
    if not isinstance(api, dict) or not isinstance(api.get("/cluster/resources"), list):
        raise DumpError(f"{path} has no 'api' mapping with a '/cluster/resources' list")
    doc.setdefault("name", path.stem)
    return doc


def operator_pools(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pool rules a recorded cluster's operator configured, as `balancing.pools` entries."""
    pools = (doc.get("operator_config") or {}).get("pools") or {}
    return {name: (rule if isinstance(rule, dict) else {"type": rule}) for name, rule in pools.items()}


def resolve_scenario(source: str | Path) -> Path:
    path = Path(source)
    if path.is_file():
        return path
    bundled = resources.files("pvebalance.scenarios").joinpath(f"{Path(str(source)).stem}.json")
    if bundled.is_file():
        return Path(str(bundled))
    raise DumpError(f"no scenario file {source} (and no bundled scenario of that name)")


def parse_size(spec: str) -> int:
    m = _SIZE.search(spec)
    if not m:
        return 0
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _storage_shared(api: Mapping[str, Any]) -> dict[tuple[str, str], bool]:
    shared: dict[tuple[str, str], bool] = {}
    for res in api.get("/cluster/resources", []):
        if res.get("type") == "storage":
            shared[(res["node"], res["storage"])] = bool(res.get("shared", 0))
    return shared


def guest_disks(config: Mapping[str, Any], gtype: GuestType) -> list[tuple[str, str, int]]:
    """(key, storage, size) of each disk in a guest config; CD-ROMs and empty drives are left out."""
    pattern = _QEMU_DISK if gtype is GuestType.QEMU else _LXC_DISK
    disks = []
    for key, value in config.items():
        if not pattern.match(key) or not isinstance(value, str):
            continue
        if value.startswith("none") or "media=cdrom" in value or ":" not in value:
            continue
        storage = value.split(":", 1)[0]
        disks.append((key, storage, parse_size(value)))
    return disks


def local_resources(config: Mapping[str, Any]) -> list[str]:
    found = []
    for key, value in config.items():
        if not _LOCAL_RESOURCE.match(key):
            continue
        text = str(value)
        if (key.startswith("usb") and "spice" in text) or (key.startswith("serial") and text == "socket"):
            continue
        found.append(key)
    return sorted(found)


def parse_tags(raw: Any) -> list[str]:
    if not raw:
        return []
    return [t for t in re.split(r"[;, ]+", str(raw)) if t]


def parse_ha_rules(raw: Any) -> list[HaRule]:
    rules = []
    for entry in raw or []:
        if entry.get("type") not in ("node-affinity", "resource-affinity"):
            continue
        nodes: dict[str, int] = {}
        for item in str(entry.get("nodes", "")).split(","):
            if item:
                name, _, prio = item.partition(":")
                nodes[name] = int(prio) if prio else 0
        rules.append(
            HaRule(
                rule=str(entry.get("rule", "")),
                type=entry["type"],
                resources=[r for r in str(entry.get("resources", "")).split(",") if r],
                nodes=nodes,
                strict=bool(int(entry.get("strict", 0))),
                affinity=entry.get("affinity"),
                disabled=bool(int(entry.get("disable", 0))),
            )
        )
    return rules


def _opt_str(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def essential_config(config: Mapping[str, Any], gtype: GuestType) -> dict[str, Any]:
    """The part of a guest config the balancer reads: disks, local devices, name, tags, lock."""
    disk = _QEMU_DISK if gtype is GuestType.QEMU else _LXC_DISK
    return {k: v for k, v in config.items()
            if disk.match(k) or _LOCAL_RESOURCE.match(k) or k in ("name", "hostname", "tags", "lock")}


def snapshot_from_api(api: Mapping[str, Any], cluster: str = "") -> ClusterSnapshot:
    """Build a snapshot from API answers; a guest without a config is kept, with no disk facts."""
    resources_ = api["/cluster/resources"]
    shared = _storage_shared(api)
    nodes: dict[str, NodeState] = {}
    for res in resources_:
        if res.get("type") != "node":
            continue
        nodes[res["node"]] = NodeState(
            name=res["node"],
            online=res.get("status") == "online",
            maintenance=res.get("hastate") == "maintenance",
            cpu=float(res.get("cpu", 0.0)),
            maxcpu=int(res.get("maxcpu", 1)) or 1,
            mem=int(res.get("mem", 0)),
            maxmem=int(res.get("maxmem", 1)) or 1,
        )
    for res in resources_:
        content = str(res.get("content", "images"))
        guest_storage = "images" in content or "rootdir" in content
        if res.get("type") == "storage" and not res.get("shared", 0) and res["node"] in nodes and guest_storage:
            node = nodes[res["node"]]
            node.local_disk += int(res.get("disk", 0))
            node.local_maxdisk += int(res.get("maxdisk", 0))

    guests = []
    for res in resources_:
        if res.get("type") not in ("qemu", "lxc"):
            continue
        gtype = GuestType(res["type"])
        config = api.get(f"/nodes/{res['node']}/{gtype.value}/{res['vmid']}/config") or {}
        local = sum(
            size
            for _, storage, size in guest_disks(config, gtype)
            if not shared.get((res["node"], storage), False)
        )
        # Every field is converted to its type right here, so the model's own validation is skipped:
        # it doubled the cost of a 10,000-guest snapshot. A malformed answer still fails, above.
        guests.append(
            GuestState.model_construct(
                vmid=int(res["vmid"]),
                name=str(res.get("name") or config.get("name") or config.get("hostname") or res["vmid"]),
                type=gtype,
                node=res["node"],
                status=str(res.get("status", "unknown")),
                template=bool(int(res.get("template", 0) or 0)),
                lock=_opt_str(res.get("lock") or config.get("lock")),
                tags=parse_tags(res.get("tags", config.get("tags"))),
                pool=_opt_str(res.get("pool")),
                hastate=_opt_str(res.get("hastate")),
                cpu=float(res.get("cpu", 0.0) or 0.0),
                maxcpu=int(res.get("maxcpu", 1) or 1),
                mem=int(res.get("mem", 0) or 0),
                maxmem=int(res.get("maxmem", 0) or 0),
                maxdisk=int(res.get("maxdisk", 0) or 0),
                local_disk=local,
                local_resources=local_resources(config),
            )
        )

    pools: dict[str, list[int]] = {}
    for entry in api.get("/pools", []) or []:
        detail = api.get(f"/pools/{entry['poolid']}") or {}
        pools[entry["poolid"]] = sorted(
            int(m["vmid"]) for m in detail.get("members", []) if m.get("type") in ("qemu", "lxc")
        )
    for guest in guests:
        if guest.pool and guest.vmid not in pools.setdefault(guest.pool, []):
            pools[guest.pool].append(guest.vmid)

    quorate = True
    for entry in api.get("/cluster/status", []) or []:
        if entry.get("type") == "cluster":
            quorate = bool(int(entry.get("quorate", 1)))
            cluster = cluster or str(entry.get("name", ""))
    crs = (api.get("/cluster/options") or {}).get("crs") or {}
    return ClusterSnapshot(
        cluster=cluster,
        quorate=quorate,
        ha_auto_rebalance=bool(int(crs.get("ha-auto-rebalance", 0) or 0)),
        nodes=list(nodes.values()),
        guests=guests,
        ha_rules=parse_ha_rules(api.get("/cluster/ha/rules")),
        pools=pools,
    )
