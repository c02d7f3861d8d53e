"""Words shown to operators: counts with the right plural ('1 migration', '2 migrations')."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from pvebalance.actions import KINDS, ActionBase


def plural(count: int, word: str, many: str | None = None, *, grouped: bool = False) -> str:
    """'1 migration', '0 migrations', '2 guests'; `many` for an irregular plural; `grouped`: the
    count's thousands apart ('10,000 guests')."""
    shown = f"{count:,}" if grouped else str(count)
    return f"{shown} {word if count == 1 else many or word + 's'}"


def actions_in_words(actions: Iterable[ActionBase]) -> str:
    """'3 migrations', '2 disk moves', '3 migrations and 2 disk moves' ('0 migrations' for none): each kind
    by its noun, in the order the kinds are registered."""
    counts = Counter(a.kind for a in actions)
    parts = [plural(counts[k.name], k.action.noun) for k in KINDS if counts[k.name]]
    return " and ".join(parts) or "0 migrations"
