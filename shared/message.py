"""The base of every message between the services, and the few names every message uses.

shared/models.py (the snapshot, the plan) and the kinds of action (pvebalance/actions/) build on this
module; it imports neither, so a kind's action and job can be defined before the plan that holds them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

SCHEMA_VERSION: Literal[1] = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = SCHEMA_VERSION


M = TypeVar("M", bound=Message)


def parse_known(model: type[M], raw: bytes | str | None) -> M | None:
    """A stored message, or None when there is none or a version whose schema this one does not know
    wrote it (a reader refuses what it does not know)."""
    if raw is None:
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        return None


class GuestType(StrEnum):
    QEMU = "qemu"
    LXC = "lxc"


def guest_id(guest_type: GuestType | str, vmid: int) -> str:
    """prometheus-pve-exporter's `id` label for a guest, the API's and /metrics' name for it: qemu/100, lxc/101."""
    return f"{GuestType(guest_type).value}/{vmid}"


class MigrationReason(StrEnum):
    BALANCE = "balance"
    MAINTENANCE = "maintenance"
    AFFINITY = "affinity"
    ANTI_AFFINITY = "anti-affinity"
    PIN = "pin"
    HA_RULE = "ha-rule"
    STORAGE = "storage"  # a disk to another storage (storage_balancing)
