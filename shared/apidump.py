"""From what the Proxmox VE API answers to a ClusterSnapshot.

Both the collector (live answers) and the offline `plan --scenario` (a recorded `pve-api-dump/1`
file) hand this module the same thing: a mapping of API path (without /api2/json) to the `data`
that path returns. One translation, so a recorded cluster plans exactly as the live one would.

Every answer read here is validated by a model of its shape first (PVE's quirks included: 0/1 for
booleans, a vmid as number or string, optional fields left out), so a malformed answer ends as one
DumpError naming the path, the entry and the field, never as a KeyError deep in the engine.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from .apianswers import (
    ApiNode,
    ApiStorage,
    DumpError,
    explain,
    read_ha_resources,
    read_ha_rules,
    read_node_status,
    read_options,
    read_pool_detail,
    read_pools,
    read_status,
    show,
    split_resources,
    word,
)
from .config import PoolRule
from .models import ClusterSnapshot, GuestDisk, GuestState, GuestType, HaRule, NodeState, StorageState

__all__ = ["DUMP_FORMAT", "DumpError", "cdrom_drives", "essential_config", "guest_disks", "load_dump",
           "local_resources", "node_problem", "operator_pools", "parse_cputype", "parse_ha_rules", "parse_size",
           "parse_tags", "read_storages", "resolve_scenario", "snapshot_from_api", "storage_state"]

DUMP_FORMAT = "pve-api-dump/1"

_QEMU_DISK = re.compile(r"^(ide|sata|scsi|virtio|efidisk|tpmstate)\d+$")
_LXC_DISK = re.compile(r"^(rootfs|mp\d+)$")
_LOCAL_RESOURCE = re.compile(r"^(hostpci\d+|usb\d+|serial\d+|parallel\d+|ivshmem|virtiofs\d+)$")
_SIZE = re.compile(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)(?:,|$)")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# A node using more than this multiple of a capacity reports figures no real node can have.
IMPOSSIBLE_FACTOR = 1.5


# --- scenario files --------------------------------------------------------------------------------


def load_dump(source: str | Path) -> dict[str, Any]:
    """Read a pve-api-dump/1 file, by path or by the name of a bundled scenario."""
    path = resolve_scenario(source)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise DumpError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != DUMP_FORMAT:
        raise DumpError(f"{path} is not a {DUMP_FORMAT} file (its 'format' key must be {DUMP_FORMAT!r})")
    api = doc.get("api")
    if not isinstance(api, dict) or not isinstance(api.get("/cluster/resources"), list):
        raise DumpError(f"{path} has no 'api' mapping with a '/cluster/resources' list")
    for key in ("name", "description"):
        if key in doc and not isinstance(doc[key], str):
            raise DumpError(f"{path}: {key}: not a string ({show(doc[key])})")
    _check_operator_config(doc.get("operator_config"), path)
    doc.setdefault("name", path.stem)
    return doc


def _check_operator_config(config: Any, path: Path) -> None:
    if config is None:
        return
    pools = config.get("pools") if isinstance(config, dict) else config
    if not isinstance(config, dict) or not isinstance(pools, dict | None):
        raise DumpError(f"{path}: operator_config: must be an object with a 'pools' object")
    for name, rule in (pools or {}).items():
        try:
            PoolRule.model_validate(rule if isinstance(rule, dict) else {"type": rule})
        except ValidationError as exc:
            place = f"{path}: operator_config.pools.{word(name)}"

            def where(loc: tuple[Any, ...], place: str = place) -> tuple[str, tuple[Any, ...]]:
                return place, loc

            raise DumpError(explain(exc, where)) from None


def operator_pools(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pool rules a recorded cluster's operator configured, as `balancing.pools` entries."""
    pools = (doc.get("operator_config") or {}).get("pools") or {}
    return {name: (rule if isinstance(rule, dict) else {"type": rule}) for name, rule in pools.items()}


def resolve_scenario(source: str | Path) -> Path:
    try:
        path = Path(source)
        if path.is_file():
            return path
        bundled = resources.files("pvebalance.scenarios").joinpath(f"{Path(str(source)).stem}.json")
        if bundled.is_file():
            return Path(str(bundled))
    except (OSError, ValueError):  # a name no file system accepts (a NUL byte, too long)
        pass
    raise DumpError(f"no scenario file {source} (and no bundled scenario of that name)")


# --- guest configs ---------------------------------------------------------------------------------


def parse_size(spec: str) -> int:
    m = _SIZE.search(spec)
    if not m:
        return 0
    return int(float(m.group(1)) * _UNITS[m.group(2)])


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


def cdrom_drives(config: Mapping[str, Any], gtype: GuestType) -> list[tuple[str, str, int]]:
    """(key, storage, size) of each CD-ROM drive of a VM config with an image on a storage
    (`local:iso/x.iso,media=cdrom`); an empty drive, the host's drive or a path has no storage."""
    if gtype is not GuestType.QEMU:
        return []
    drives = []
    for key, value in config.items():
        if not _QEMU_DISK.match(key) or not isinstance(value, str) or "media=cdrom" not in value:
            continue
        volume = value.split(",", 1)[0]
        if ":" not in volume or volume.startswith("/"):
            continue
        drives.append((key, volume.split(":", 1)[0], parse_size(value)))
    return drives


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


def essential_config(config: Mapping[str, Any], gtype: GuestType) -> dict[str, Any]:
    """The part of a guest config the balancer reads: disks, local devices, name, tags, lock, and
    `parent` (set when it has snapshots: its disks then stay on their storage)."""
    disk = _QEMU_DISK if gtype is GuestType.QEMU else _LXC_DISK
    return {k: v for k, v in config.items()
            if disk.match(k) or _LOCAL_RESOURCE.match(k) or k in ("name", "hostname", "tags", "lock", "parent")
            or (gtype is GuestType.QEMU and k in _CPU_KEYS)}


# What of a VM config says where it can run at all: its vCPUs (sockets x cores; `vcpus` hotplugs
# fewer) against a node's cores, and its CPU type (`host` passes the node's own CPU through).
_CPU_KEYS = ("cores", "sockets", "vcpus", "cpu")


def parse_cputype(value: str | None) -> str | None:
    """The CPU type of a VM config's `cpu` property: `host`, `cputype=host,flags=+aes` -> 'host'."""
    if not value:
        return None
    for i, item in enumerate(value.split(",")):
        key, eq, val = item.partition("=")
        if eq and key.strip() == "cputype":
            return val.strip() or None
        if not eq and i == 0:
            return key.strip() or None
    return None


def _config_count(config: Mapping[str, Any], key: str, path: str) -> int | None:
    value = config.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
        raise DumpError(f"{path}: {key}: not an integer ({show(value)})")
    return int(value)


def _vcpus(config: Mapping[str, Any], path: str) -> int | None:
    """A VM's vCPUs as PVE counts them when it starts one (sockets x cores, default 1 each); None
    when the config says nothing of its CPUs (a recorded cluster without configs)."""
    cores, sockets, vcpus = (_config_count(config, k, path) for k in ("cores", "sockets", "vcpus"))
    if cores is None and sockets is None and vcpus is None:
        return None
    return max((cores or 1) * (sockets or 1), vcpus or 0)


def _config_text(config: Mapping[str, Any], key: str, path: str) -> str | None:
    value = config.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, dict | list):
        raise DumpError(f"{path}: {key}: not a string ({show(value)})")
    return str(value)


# --- the snapshot ----------------------------------------------------------------------------------


def node_problem(node: ApiNode) -> str | None:
    """Why an online node's figures cannot be planned on (None: they can)."""
    missing = [f for f in ("mem", "maxmem", "cpu", "maxcpu") if getattr(node, f) is None]
    if missing:
        return f"{', '.join(missing[:-1])} and {missing[-1]} missing" if len(missing) > 1 else f"{missing[0]} missing"
    assert node.mem is not None and node.maxmem is not None and node.cpu is not None
    if node.maxmem == 0:
        return "maxmem is 0"
    if node.maxcpu == 0:
        return "maxcpu is 0"
    if node.mem > node.maxmem * IMPOSSIBLE_FACTOR:
        return f"mem {node.mem:,} is more than {IMPOSSIBLE_FACTOR} x maxmem {node.maxmem:,}"
    if node.cpu > IMPOSSIBLE_FACTOR:
        return f"cpu {node.cpu} is more than {IMPOSSIBLE_FACTOR} (it is a fraction of the node's cores)"
    return None


def _nodes(raw: list[ApiNode], storages: list[StorageState], api: Mapping[str, Any]) -> dict[str, NodeState]:
    nodes: dict[str, NodeState] = {}
    for n in raw:
        online = n.status == "online"
        status_path = f"/nodes/{n.node}/status"
        status = api.get(status_path)
        cpuinfo = read_node_status(status, status_path).cpuinfo if status is not None else None
        nodes[n.node] = NodeState(
            name=n.node,
            online=online,
            maintenance=n.hastate == "maintenance",
            cpu=n.cpu or 0.0,
            maxcpu=math.ceil(n.maxcpu or 1) or 1,
            mem=n.mem or 0,
            maxmem=n.maxmem or 1,  # never 0: it divides; `problem` says the figure is not real
            problem=node_problem(n) if online else None,  # an offline node is offline, not broken
            cpu_model=cpuinfo.model if cpuinfo is not None else None,
        )
    for s in storages:
        if not s.shared and s.node in nodes and s.holds_guest_disks:
            node = nodes[s.node]
            node.local_disk += s.disk
            node.local_maxdisk += s.maxdisk
    return nodes


_Model = TypeVar("_Model", bound=BaseModel)


def trusted(cls: type[_Model], **values: Any) -> _Model:
    """`cls.model_construct(**values)` for values already validated that give every field: what
    model_construct does, less its loop over the fields and their defaults (a third of a
    10,000-guest snapshot: pydantic inspects a default factory's signature on each call)."""
    assert values.keys() == cls.__pydantic_fields__.keys(), values.keys() ^ cls.__pydantic_fields__.keys()
    model = cls.__new__(cls)
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(model, "__pydantic_fields_set__", set(values))
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


def snapshot_from_api(api: Mapping[str, Any], cluster: str = "") -> ClusterSnapshot:
    """Build a snapshot from API answers; a guest without a config is kept, with no disk facts.

    Raises DumpError for an answer that is not what PVE sends. A node whose figures are impossible
    is kept with a `problem`, and the engine leaves it (and its guests) alone.
    """
    if not isinstance(api, Mapping):
        raise DumpError(f"the API answers must be an object keyed by path, not {show(api)}")
    raw_nodes, raw_guests, raw_storages = split_resources(api)
    storages = [storage_state(s) for s in raw_storages]
    nodes = _nodes(raw_nodes, storages, api)
    shared = {(s.node, s.storage): s.shared for s in storages}

    guests = []
    seen: set[int] = set()
    for res in raw_guests:
        if res.vmid in seen:
            raise DumpError(f"/cluster/resources: vmid {res.vmid} appears twice")
        seen.add(res.vmid)
        gtype = GuestType(res.type)
        path = f"/nodes/{res.node}/{res.type}/{res.vmid}/config"
        config = api.get(path)
        if config is None:
            config = {}
        elif not isinstance(config, dict):
            raise DumpError(f"{path}: not an object ({show(config)})")
        disks = [trusted(GuestDisk, key=key, storage=storage, size=size,
                                   shared=shared.get((res.node, storage), False), media=None)
                 for key, storage, size in guest_disks(config, gtype)]
        cdroms = [trusted(GuestDisk, key=key, storage=storage, size=size,
                                   shared=shared.get((res.node, storage), False), media="cdrom")
                  for key, storage, size in cdrom_drives(config, gtype)]
        # Every field was validated above (one pass for all guests), so the model's own validation
        # is skipped: it doubled the cost of a 10,000-guest snapshot.
        guests.append(
            trusted(
                GuestState,
                vmid=res.vmid,
                name=res.name or _config_text(config, "name", path) or _config_text(config, "hostname", path)
                or str(res.vmid),
                type=gtype,
                node=res.node,
                status=res.status or "unknown",
                template=bool(res.template),
                lock=res.lock or _config_text(config, "lock", path),
                tags=parse_tags(res.tags if res.tags is not None else _config_text(config, "tags", path)),
                pool=res.pool or None,
                hastate=res.hastate or None,
                cpu=res.cpu or 0.0,
                maxcpu=math.ceil(res.maxcpu or 1) or 1,
                mem=res.mem or 0,
                maxmem=res.maxmem or 0,
                maxdisk=res.maxdisk or 0,
                local_disk=sum(d.size for d in disks if not d.shared),
                disks=disks + cdroms,
                local_resources=local_resources(config),
                has_snapshots=bool(_config_text(config, "parent", path)),
                vcpus=_vcpus(config, path) if gtype is GuestType.QEMU else None,
                cputype=parse_cputype(_config_text(config, "cpu", path)) if gtype is GuestType.QEMU else None,
                cpu_avg=None, mem_avg=None, psi={},
            )
        )

    quorate = True
    for entry in read_status(api.get("/cluster/status")):
        if entry.type == "cluster":
            quorate = entry.quorate is not False
            cluster = cluster or (entry.name or "")
    crs = read_options(api.get("/cluster/options")).crs
    return ClusterSnapshot(
        cluster=cluster,
        quorate=quorate,
        ha_auto_rebalance=bool(crs and crs.rebalances),
        nodes=list(nodes.values()),
        guests=guests,
        ha_rules=parse_ha_rules(api.get("/cluster/ha/rules")),
        storages=storages,
        pools=_pools(api, guests),
        ha_auto_rebalance_off=_ha_flag_off(api.get("/cluster/ha/resources"), "auto_rebalance"),
        ha_failback_off=_ha_flag_off(api.get("/cluster/ha/resources"), "failback"),
    )


def read_storages(answer: Any) -> list[StorageState]:
    """The storages of a /cluster/resources answer (`type=storage`), as a snapshot holds them; DumpError
    naming the entry and field when one is malformed."""
    return [storage_state(s) for s in split_resources({"/cluster/resources": answer})[2]]


def storage_state(s: ApiStorage) -> StorageState:
    # PVE leaves `content` out only for storages that hold images (an rbd pool): the default reads so
    content = s.content if s.content is not None else "images"
    return StorageState(node=s.node, storage=s.storage, shared=bool(s.shared),
                        content=[c for c in content.split(",") if c], disk=s.disk or 0, maxdisk=s.maxdisk or 0,
                        active=s.status in (None, "available"))


def _ha_flag_off(raw: Any, flag: Literal["auto_rebalance", "failback"]) -> list[int]:
    """The vmids of HA resources whose flag (/cluster/ha/resources, default 1) is 0."""
    off = []
    for entry in read_ha_resources(raw):
        kind, _, vmid = entry.sid.partition(":")
        if not getattr(entry, flag) and kind in ("vm", "ct") and vmid.isdigit():
            off.append(int(vmid))
    return sorted(off)


def _pools(api: Mapping[str, Any], guests: list[GuestState]) -> dict[str, list[int]]:
    pools: dict[str, list[int]] = {}
    for i, entry in enumerate(read_pools(api.get("/pools"))):
        path = f"/pools/{entry.poolid}"
        detail = api.get(path)
        members = read_pool_detail(detail, path).members if detail is not None else entry.members or []
        vmids = []
        for j, m in enumerate(members):
            if m.type in ("qemu", "lxc"):
                if m.vmid is None:
                    where = f"{path}.members[{j}]" if detail is not None else f"/pools[{i}].members[{j}]"
                    raise DumpError(f"{where} ({m.type}): vmid: missing")
                vmids.append(m.vmid)
        pools[entry.poolid] = sorted(vmids)
    for guest in guests:
        if guest.pool and guest.vmid not in pools.setdefault(guest.pool, []):
            pools[guest.pool].append(guest.vmid)
    return pools


def parse_ha_rules(raw: Any) -> list[HaRule]:
    rules = []
    for i, entry in enumerate(read_ha_rules(raw)):
        if entry.type not in ("node-affinity", "resource-affinity"):
            continue
        nodes: dict[str, int] = {}
        for item in (entry.nodes or "").split(","):
            if item:
                name, _, prio = item.partition(":")
                try:
                    nodes[name] = int(prio) if prio else 0
                except ValueError:
                    raise DumpError(f"/cluster/ha/rules[{i}] (rule {word(entry.rule)}): nodes: priority of "
                                    f"{word(name)} is not an integer ({show(prio)})") from None
        rules.append(
            HaRule(
                rule=entry.rule,
                type=entry.type,  # narrowed by the check above
                resources=[r for r in entry.resources.split(",") if r],
                nodes=nodes,
                strict=bool(entry.strict),
                affinity=entry.affinity,
                disabled=bool(entry.disable),
            )
        )
    return rules
