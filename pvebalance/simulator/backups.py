"""The simulated cluster's backup jobs (GET /cluster/backup), with `next-run` as PVE computes it.

PVE lists the jobs of jobs.cfg with `next-run`: the next time their `schedule` (a calendar event in
the nodes' local time; the simulated nodes keep UTC) is due after now, disabled jobs too
(pve-manager PVE/API2/Backup.pm). A recorded dump's `next-run` is stale, so it is computed afresh.

The simulator evaluates the schedules a backup job is usually given: `[WEEKDAYS] [HOURS:MINUTES]`,
each part `*`, a value, a range `A..B`, a repetition `A/N` or `*/N`, or a list of them (weekdays
`mon`..`sun`), and the words minutely, hourly, daily and weekly. A schedule outside that subset (a
date, seconds, monthly...) gets no `next-run`, as a legacy vzdump.cron job has none: the simulator
says nothing rather than something wrong.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WORDS = {"minutely": "*:*", "hourly": "*:0", "daily": "0:0", "weekly": "mon 0:0"}
HORIZON_MINUTES = 8 * 24 * 60  # every schedule of the subset is due within a week


def _values(spec: str, low: int, high: int, names: tuple[str, ...] = ()) -> set[int] | None:
    """The values one field allows, or None when it is outside the subset."""
    def value(text: str) -> int | None:
        if text in names:
            return names.index(text)
        return int(text) if text.isdigit() and low <= int(text) <= high else None

    out: set[int] = set()
    for item in spec.split(","):
        start_text, _, step_text = item.partition("/")
        if step_text and not step_text.isdigit():
            return None
        step = int(step_text) if step_text else 1
        first_text, _, last_text = start_text.partition("..")
        first = low if first_text == "*" else value(first_text)
        last = (high if step_text or first_text == "*" else first) if not last_text else value(last_text)
        if first is None or last is None or step < 1:
            return None
        out.update(range(first, last + 1, step))
    return out


def _matcher(schedule: str) -> tuple[set[int], set[int], set[int]] | None:
    """(weekdays, hours, minutes) the schedule is due at, or None outside the subset."""
    words = WORDS.get(schedule.strip().lower(), schedule.strip().lower()).split()
    days_spec, time_spec = "*", "0:0"
    if len(words) == 2:
        days_spec, time_spec = words
    elif len(words) == 1:
        if re.fullmatch(r"[a-z.,]+", words[0]):
            days_spec = words[0]
        else:
            time_spec = words[0]
    else:
        return None
    hour_spec, _, minute_spec = time_spec.partition(":")
    if not minute_spec or ":" in minute_spec:
        return None  # no minutes, or seconds: outside the subset
    days = _values(days_spec, 0, 6, DAYS)
    hours = _values(hour_spec, 0, 23)
    minutes = _values(minute_spec, 0, 59)
    if days is None or hours is None or minutes is None:
        return None
    return days, hours, minutes


def next_run(schedule: str, now: float) -> int | None:
    """The first due minute after `now` (UTC), as epoch seconds; None outside the subset."""
    match = _matcher(schedule)
    if match is None:
        return None
    days, hours, minutes = match
    minute = int(now // 60) + 1
    for m in range(minute, minute + HORIZON_MINUTES):
        t = time.gmtime(m * 60)
        if t.tm_wday in days and t.tm_hour in hours and t.tm_min in minutes:
            return m * 60
    return None


def listing(jobs: Iterable[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    """GET /cluster/backup: each job as stored, with `next-run` computed now."""
    now = time.time() if now is None else now
    out = []
    for job in jobs:
        entry = {k: v for k, v in job.items() if k != "next-run"}
        due = next_run(str(job["schedule"]), now) if job.get("schedule") else None
        if due is not None:
            entry["next-run"] = due
        out.append(entry)
    return out
