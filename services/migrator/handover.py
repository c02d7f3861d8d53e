"""Stopping a worker within systemd's stop timeout without losing or doubling a migration.

rq's warm shutdown waits for the running job, and a job follows its migration task to the end: a
large live migration takes minutes to hours, while systemd kills a service 90 s (TimeoutStopSec)
after SIGTERM. Instead, on SIGTERM the worker tells its work-horse (HANDOVER_SIGNAL) to hand the
job over: the runner raises HandOver at its next safe point (every wait: between two reads of the
task's status, between two looks for a slot, in a backoff), never in the middle of a request, so
the POST and the recording of its UPID are never cut. The job then ends its run as a worker that
died would (its lease given back, its pinned slots kept), and the reconciler of another worker
queues it again at the front of the queue: its new runner resumes it (follows the stored UPID, or
looks for the task of a POST it may have sent), never POSTs twice. The migration itself goes on in
Proxmox meanwhile. A hand-over does not count as one of the job's MAX_TAKEOVERS.

The signal handler only sets a flag (a handler that takes a lock can deadlock the thread it
interrupted); the waits look at it every CHECK seconds.
"""

from __future__ import annotations

import signal
import time
from types import FrameType

HANDOVER_SIGNAL = signal.SIGUSR1
CHECK = 0.2  # seconds: how late a hand-over may notice the flag
REASON = "the worker was stopped (SIGTERM): handed over to be resumed by another worker"

_requested = False


class HandOver(Exception):
    """Raised at a safe point in a work-horse whose worker is being stopped."""

    def __init__(self) -> None:
        super().__init__(REASON)


def request(signum: int = 0, frame: FrameType | None = None) -> None:
    """The work-horse's handler of HANDOVER_SIGNAL (and of a SIGTERM sent to it directly)."""
    global _requested
    _requested = True


def requested() -> bool:
    return _requested


def check() -> None:
    """A safe point: raise HandOver when the worker is being stopped."""
    if _requested:
        raise HandOver()


def sleep(seconds: float) -> None:
    """time.sleep that ends in HandOver as soon as a hand-over is asked for (the runner's sleep)."""
    check()
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, CHECK))
        check()


def install_in_horse() -> None:
    """In the work-horse: Ctrl+C is the worker's to handle (rq's rule); SIGTERM, should it reach the
    horse too (a whole process group or cgroup signalled), hands over as the worker's signal does."""
    global _requested
    _requested = False  # a forked horse starts without its parent's flag
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, request)
    signal.signal(HANDOVER_SIGNAL, request)
