"""Counts in the words operators read (shared/words.py)."""

from __future__ import annotations

import pytest

from pvebalance.shared.words import plural


@pytest.mark.parametrize(("count", "word", "many", "grouped", "said"), [
    (1, "migration", None, False, "1 migration"),
    (0, "migration", None, False, "0 migrations"),
    (2, "guest", None, False, "2 guests"),
    (2, "policy", "policies", False, "2 policies"),
    (10_000, "guest", None, False, "10000 guests"),
    (10_000, "guest", None, True, "10,000 guests"),
    (1, "node", None, True, "1 node"),
])
def test_a_count_reads_with_its_noun_singular_or_plural_and_its_thousands_apart_when_grouped(
        count: int, word: str, many: str | None, grouped: bool, said: str) -> None:
    assert plural(count, word, many, grouped=grouped) == said
