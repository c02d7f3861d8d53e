"""Words shown to operators: counts with the right plural ('1 migration', '2 migrations')."""

from __future__ import annotations


def plural(count: int, word: str, many: str | None = None) -> str:
    """'1 migration', '0 migrations', '2 guests'; `many` for an irregular plural."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def actions_in_words(migrations: int, disk_moves: int) -> str:
    """'3 migrations', '2 disk moves', '3 migrations and 2 disk moves' ('0 migrations' for none)."""
    parts = [plural(n, what) for n, what in ((migrations, "migration"), (disk_moves, "disk move")) if n]
    return " and ".join(parts) or "0 migrations"
