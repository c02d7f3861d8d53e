"""The guests of a snapshot built from API answers (shared/apidump.py builds them without pydantic's
per-field loop) are the models pydantic itself would build from the same values."""

from __future__ import annotations

import pytest

from pvebalance.shared.models import GuestDisk, GuestState
from pvebalance.shared.scenario import load_scenario


@pytest.mark.parametrize("name", ["local-storage", "storage-3", "groups"])
def test_each_guest_and_disk_is_what_pydantic_validates_from_its_own_fields(name: str) -> None:
    guests = load_scenario(name).snapshot.guests
    assert guests and any(g.disks for g in guests)
    for guest in guests:
        assert GuestState.model_validate(guest.model_dump()) == guest
        assert guest.model_fields_set == set(GuestState.model_fields)
        for disk in guest.disks:
            assert GuestDisk.model_validate(disk.model_dump()) == disk
        assert guest.model_copy(update={"node": "elsewhere"}).node == "elsewhere"
