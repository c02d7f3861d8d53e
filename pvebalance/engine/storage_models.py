"""What a storage balancing plan says (engine/storage_balance.py makes it): the disk moves in order
(shared/models.py DiskMove, a plan action), the disks that stay and why, and the groups it leaves out
of band."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pvebalance.shared.models import DiskMove, GroupOutcome, GuestType

__all__ = ["GIB", "DiskMove", "DiskStay", "GroupOutcome", "StayKind", "StorageFigures", "StoragePlan",
           "StorageUnmet"]

GIB = 2**30

# Why a disk stays on its storage, one code each (the words are in DiskStay.reason).
StayKind = Literal["cdrom", "template", "locked", "ignored", "migrating", "moving", "snapshots",
                   "running-container", "running-tpm", "no-size", "node-offline", "no-content", "not-available"]


class DiskStay(BaseModel):
    """A disk on a balanced storage that the plan may not move."""

    model_config = ConfigDict(extra="forbid")
    vmid: int
    guest_type: GuestType
    node: str
    disk: str
    storage: str
    kind: StayKind
    reason: str


class StorageFigures(BaseModel):
    model_config = ConfigDict(extra="forbid")
    storage: str
    total: int = Field(description="bytes of capacity")
    before: int = Field(description="bytes used when planned (disks being moved counted on both storages)")
    after: int = Field(description="bytes used once every move of the plan (and every one in flight) has ended")

    @property
    def percent_before(self) -> float:
        return 100.0 * self.before / self.total

    @property
    def percent_after(self) -> float:
        return 100.0 * self.after / self.total


class StorageUnmet(BaseModel):
    """A group the plan leaves wider than its band."""

    model_config = ConfigDict(extra="forbid")
    storages: list[str]
    spread_pp: float = Field(description="the group's spread once the plan has run")
    band_pp: float
    over_pp: float = Field(description="how far past the band: spread_pp - band_pp")
    reason: str


class StoragePlan(BaseModel):
    model_config = ConfigDict(extra="forbid")
    moves: list[DiskMove] = Field(default_factory=list, description="in the order they are to run")
    stays: list[DiskStay] = Field(default_factory=list)
    unmet: list[StorageUnmet] = Field(default_factory=list)
    groups: list[GroupOutcome] = Field(default_factory=list)
    storages: list[StorageFigures] = Field(default_factory=list, description="each balanced storage")
    notes: list[str] = Field(default_factory=list, description="storages named in a group but not balanced, and why")

    @property
    def gib_moved(self) -> float:
        return sum(m.size for m in self.moves) / GIB
