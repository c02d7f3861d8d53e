"""Tables and words the CLI prints: ids never cut, counts with the right plural, times in local time.

An id (plan, job, request) is what an operator copies into `approve`, `cancel` or `requests`, so its
column never wraps nor shrinks below the longest id: the other columns wrap instead. The tables are
borderless with one space between columns, so that an 80-column terminal holds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from rich import box
from rich.table import Table

from pvebalance.shared.words import plural

__all__ = ["compact", "id_column", "plural", "text_columns", "when"]


def when(at: datetime | float | str | None) -> str:
    """A moment (a datetime, epoch seconds or ISO 8601) in the local time of the machine the CLI runs on,
    to the second ('' for None)."""
    if at is None or at == "":
        return ""
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    moment = datetime.fromtimestamp(at) if isinstance(at, int | float) else at.astimezone()
    return f"{moment:%m-%d %H:%M:%S}"


def compact(title: str | None = None, caption: str | None = None) -> Table:
    return Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                 collapse_padding=True, title_justify="left")


def id_column(table: Table, header: str, ids: Sequence[str]) -> None:
    """A column for ids that is never cut: as wide as the longest, on one line."""
    width = max([len(header), *(len(i) for i in ids)])
    table.add_column(header, no_wrap=True, min_width=width, overflow="fold")


def text_columns(table: Table, *headers: str, right: Sequence[str] = (), whole: Sequence[str] = ()) -> None:
    """Columns that may wrap (folding a word only when it must) to leave room for the ids; those in
    `whole` (times, short states) never wrap."""
    for header in headers:
        table.add_column(header, justify="right" if header in right else "left", overflow="fold",
                         no_wrap=header in whole)
