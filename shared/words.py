"""Words shown to operators: counts with the right plural ('1 migration', '2 migrations')."""

from __future__ import annotations


def plural(count: int, word: str, many: str | None = None) -> str:
    """'1 migration', '0 migrations', '2 guests'; `many` for an irregular plural."""
    return f"{count} {word if count == 1 else many or word + 's'}"
