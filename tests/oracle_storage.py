"""An independent judge of a plan's local storage: every local disk counted against the target's
storage of the same id, at every step.

It reads the raw API answers of a recorded cluster (`pve-api-dump/1`'s `api` mapping) with its own
reading of guest configs and storage entries, never pvebalance's parsers (shared/apidump.py) or the
engine's fit, so a mistake there cannot hide itself. A disk copied onto a storage is never credited
back to the one it left (the source's figure catches up only when PVE reports it again).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DISK_KEYS = {"qemu": re.compile(r"^(ide|sata|scsi|virtio)\d+$|^efidisk0$|^tpmstate0$"),
              "lxc": re.compile(r"^rootfs$|^mp\d+$")}
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class Move:
    vmid: int
    source: str
    target: str


def disk_size(options: list[str]) -> int:
    """A config disk line's `size=` in bytes (0 when it names none)."""
    for option in options:
        if option.startswith("size="):
            value = option[5:]
            if value[-1:] in _UNITS:
                return int(float(value[:-1]) * _UNITS[value[-1]])
            return int(float(value))
    return 0


def local_disks(api: Mapping[str, Any]) -> dict[int, dict[str, int]]:
    """vmid -> {storage: bytes} of the disks on storages its node does not share."""
    resources = api["/cluster/resources"]
    shared = {(e["node"], e["storage"]) for e in resources if e.get("type") == "storage" and e.get("shared")}
    out: dict[int, dict[str, int]] = {}
    for e in resources:
        if e.get("type") not in ("qemu", "lxc"):
            continue
        config = api.get(f"/nodes/{e['node']}/{e['type']}/{e['vmid']}/config") or {}
        disks: dict[str, int] = {}
        for key, value in config.items():
            if not DISK_KEYS[e["type"]].match(key) or not isinstance(value, str):
                continue
            volume, *options = value.split(",")
            if ":" not in volume or volume.startswith("none") or "media=cdrom" in options:
                continue
            storage = volume.split(":", 1)[0]
            if (e["node"], storage) not in shared:
                disks[storage] = disks.get(storage, 0) + disk_size(options)
        out[int(e["vmid"])] = disks
    return out


def storage_breaches(api: Mapping[str, Any], moves: Iterable[Move], limit_pct: float = 90.0) -> list[str]:
    """Each step that puts a local storage above `limit_pct` of its size, or copies a disk to a node
    without an active storage of that id; empty when none does."""
    used: dict[tuple[str, str], int] = {}
    size: dict[tuple[str, str], int] = {}
    for e in api["/cluster/resources"]:
        if e.get("type") == "storage" and not e.get("shared") and e.get("status", "available") == "available":
            used[(e["node"], e["storage"])] = int(e.get("disk", 0))
            size[(e["node"], e["storage"])] = int(e.get("maxdisk", 0))
    disks = local_disks(api)
    out = []
    for step, m in enumerate(moves, 1):
        for storage, nbytes in sorted(disks.get(m.vmid, {}).items()):
            key = (m.target, storage)
            if key not in size:
                out.append(f"step {step}: guest {m.vmid}'s disks need {storage}, which {m.target} lacks")
                continue
            used[key] += nbytes
            if used[key] > size[key] * limit_pct / 100:
                out.append(f"step {step}: guest {m.vmid} takes {m.target}/{storage} to "
                           f"{100 * used[key] / size[key]:.1f}%")
    return out
