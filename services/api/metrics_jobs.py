"""The job metrics of /metrics, one set per kind of job: the job event stream folded into jobs by
current state, jobs ended by final state, the run's duration (a histogram), and the jobs not yet
ended, each labelled with its guest (`id="qemu/100"`).

Each kind of job (pvebalance/actions/) has its own families, named from its `metric_stem`: migrations
`pvebalance_migrations`, ..., disk moves `pvebalance_disk_moves`, ..., so a dashboard or alert on
migrations counts migrations only; a job not yet ended carries its kind's `metric_labels`.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from pvebalance.actions import KINDS, Kind
from pvebalance.shared.jobs import JobState, JobStatusEvent
from pvebalance.shared.message import guest_id
from pvebalance.shared.retention import Retention

from .context import ApiContext

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

    @classmethod
    def of(cls, kind: Kind) -> JobMetrics:
        stem = kind.job.metric_stem
        return cls(f"pvebalance_{stem}s", f"pvebalance_{stem}s_finished", f"pvebalance_{stem}_duration_seconds",
                   f"pvebalance_{stem}_active", f"{kind.action.noun} job", ("id", *kind.job.metric_labels, "state"))


JOB_METRICS: dict[str, JobMetrics] = {kind.name: JobMetrics.of(kind) for kind in KINDS}


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
    records = context.read.jobs.load_many(sorted(context.read.jobs.active_jobs()))
    active_jobs = [(r.job, r.state) for r in records if r.job is not None and r.state is not None]
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
        for job, state in active_jobs:
            if job.action == action:
                active.add_metric([guest_id(job.guest_type, job.vmid), *job.metric_values(), state.value], 1)
        yield active
