"""The job metrics of /metrics, one set per kind of job: the job event stream folded into jobs by
current state, jobs ended by final state, the run's duration (a histogram), and the jobs not yet
ended, each labelled with its guest (`id="qemu/100"`).

Migrations keep their names (`pvebalance_migrations`, ...); disk moves have their own
(`pvebalance_disk_moves`, ...), so a dashboard or alert on migrations counts migrations only. A new
kind of job is one more line in JOB_METRICS (its events are not counted until it has one).
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from pvebalance.shared.jobs import JobState, JobStatusEvent
from pvebalance.shared.retention import Retention

from .context import ApiContext
from .views import JobView

DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, float("inf"))


@dataclass(frozen=True)
class JobMetrics:
    """The names and words of one kind's families, and the labels of a job not yet ended."""

    jobs: str  # gauge {state}
    finished: str  # counter {state}
    duration: str  # histogram {state}
    active: str  # gauge, 1 per job not yet ended
    what: str  # "migration job", in the help texts
    active_labels: tuple[str, ...]

    def active_values(self, view: JobView, state: JobState) -> list[str]:
        if view.action == "move-disk":  # the guest's node, its disk, from storage, to storage
            return [view.id, view.node or "", view.disk or "", view.source, view.target, state.value]
        return [view.id, view.source, view.target, state.value]


JOB_METRICS: dict[str, JobMetrics] = {
    "migrate": JobMetrics("pvebalance_migrations", "pvebalance_migrations_finished",
                          "pvebalance_migration_duration_seconds", "pvebalance_migration_active", "migration job",
                          ("id", "node", "target", "state")),
    "move-disk": JobMetrics("pvebalance_disk_moves", "pvebalance_disk_moves_finished",
                            "pvebalance_disk_move_duration_seconds", "pvebalance_disk_move_active", "disk move job",
                            ("id", "node", "disk", "storage", "target", "state")),
}


class JobEventFold:
    """The job event stream folded into each job's kind and latest state, the jobs ended by kind and final
    state and the run durations; read incrementally (from the start of the retained stream on the first scrape)."""

    def __init__(self) -> None:
        self.cursor = "0-0"
        self.keep = Retention().events  # update() reads the settings'
        self.latest: OrderedDict[str, tuple[str, JobState]] = OrderedDict()
        self.finished: Counter[tuple[str, str]] = Counter()
        self.buckets: dict[tuple[str, str], list[int]] = {}
        self.sums: dict[tuple[str, str], float] = {}
        self.lock = threading.Lock()

    def add(self, entry_id: str, event: JobStatusEvent) -> None:
        self.cursor = entry_id
        self.latest[event.job_id] = (event.action, event.state)
        self.latest.move_to_end(event.job_id)
        if event.state.terminal:
            key = (event.action, event.state.value)
            self.finished[key] += 1
            if event.duration_s is not None:
                counts = self.buckets.setdefault(key, [0] * len(DURATION_BUCKETS))
                for i, bound in enumerate(DURATION_BUCKETS):
                    if event.duration_s <= bound:
                        counts[i] += 1
                self.sums[key] = self.sums.get(key, 0.0) + event.duration_s
        while len(self.latest) > self.keep:  # jobs long gone from the stream
            self.latest.popitem(last=False)

    def update(self, context: ApiContext) -> None:
        self.keep = context.settings.retention.events
        with self.lock:
            while True:
                batch = context.read.jobs.events(self.cursor, count=1000)
                for entry_id, event in batch:
                    self.add(entry_id, event)
                if len(batch) < 1000:
                    return


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def job_families(context: ApiContext, fold: JobEventFold) -> Iterator[Metric]:
    fold.update(context)
    with fold.lock:
        by_state = Counter((action, s.value) for action, s in fold.latest.values())
        finished = dict(fold.finished)
        buckets = {k: list(v) for k, v in fold.buckets.items()}
        sums = dict(fold.sums)
    views = [v for v in (context.read.job_view(j) for j in sorted(context.read.jobs.active_jobs()))
             if v is not None and v.state is not None]
    for action, names in JOB_METRICS.items():
        current = GaugeMetricFamily(names.jobs, f"{names.what}s by their current state (jobs in the retained "
                                    "event stream)", labels=["state"])
        for s in JobState:
            current.add_metric([s.value], by_state.get((action, s.value), 0))
        yield current
        ended = CounterMetricFamily(names.finished, f"{names.what}s ended, by final state", labels=["state"])
        for s in JobState:
            if s.terminal:
                ended.add_metric([s.value], finished.get((action, s.value), 0))
        yield ended
        histogram = HistogramMetricFamily(names.duration, f"a {names.what}'s run, slot wait to end, by final state",
                                          labels=["state"])
        for (kind, state), counts in sorted(buckets.items()):
            if kind == action:
                pairs: list[tuple[str, Any]] = [(_bound(b), c) for b, c in zip(DURATION_BUCKETS, counts, strict=True)]
                histogram.add_metric([state], pairs, sums.get((kind, state), 0.0))
        yield histogram
        active = GaugeMetricFamily(names.active, f"1 per guest with a {names.what} not yet ended",
                                   labels=list(names.active_labels))
        for view in views:
            if view.action == action and view.state is not None:
                active.add_metric(names.active_values(view, view.state), 1)
        yield active
