"""Weekly maintenance windows: which nodes are drained now because a window is open or near."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from .config import MaintenanceWindow

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def window_open(window: MaintenanceWindow, now: datetime) -> bool:
    """Whether `now` (aware) lies between `drain_ahead_minutes` before a start and the end after it.

    An end at or before the start means the window runs past midnight into the next day."""
    local = now.astimezone(ZoneInfo(window.timezone))
    ahead = timedelta(minutes=window.drain_ahead_minutes)
    for back in (0, 1, 2):  # a window that started yesterday (or, drained ahead, is about to start today)
        day = (local - timedelta(days=back)).date()
        if DAYS[day.weekday()] not in window.days:
            continue
        start = datetime.combine(day, _time(window.start), local.tzinfo)
        end = datetime.combine(day, _time(window.end), local.tzinfo)
        if end <= start:
            end += timedelta(days=1)
        if start - ahead <= local < end:
            return True
    # drained ahead of a window that starts tomorrow shortly after midnight
    tomorrow = (local + timedelta(days=1)).date()
    if DAYS[tomorrow.weekday()] in window.days:
        start = datetime.combine(tomorrow, _time(window.start), local.tzinfo)
        if start - ahead <= local < start:
            return True
    return False


def nodes_in_windows(windows: dict[str, list[MaintenanceWindow]], now: datetime) -> set[str]:
    return {node for node, spans in windows.items() if any(window_open(w, now) for w in spans)}


def _time(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))
