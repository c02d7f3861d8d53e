"""Many API reads at once, bounded in all and per node.

A real API answers each request in 10-50 ms, so the first snapshot of a large cluster (one config
read per guest) takes minutes read one after another. Reads for a node are served by that node's
pveproxy, which has a few workers (3 by default), so the reads are spread over the nodes: at most
`per_node` at a time on one node and `total` in all. Each read's outcome (its answer or its
ProxmoxError) is kept apart; one failing read does not stop the others.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pvebalance.shared.proxmox import ProxmoxError

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@dataclass(frozen=True)
class ReadLimits:
    total: int  # reads in flight at once, in all
    per_node: int  # reads in flight at once for one node


class _Dispatch(Generic[K]):
    """Hands out keys so that no node has more than `per_node` reads in flight."""

    def __init__(self, keys: Iterable[K], node_of: Callable[[K], str], per_node: int) -> None:
        self.pending: dict[str, deque[K]] = {}
        for key in keys:
            self.pending.setdefault(node_of(key), deque()).append(key)
        self.busy: Counter[str] = Counter()
        self.per_node = per_node
        self.cond = threading.Condition()

    def take(self) -> tuple[str, K] | None:
        with self.cond:
            while self.pending:
                for node, queue in self.pending.items():
                    if self.busy[node] < self.per_node:
                        key = queue.popleft()
                        if not queue:
                            del self.pending[node]
                            if not self.pending:
                                self.cond.notify_all()  # nothing left: the waiting threads end
                        self.busy[node] += 1
                        return node, key
                self.cond.wait()
            return None

    def done(self, node: str) -> None:
        with self.cond:
            self.busy[node] -= 1
            self.cond.notify()  # one slot is free: one waiting thread may take it


def read_all(keys: Iterable[K], node_of: Callable[[K], str], read: Callable[[K], T],
             limits: ReadLimits) -> dict[K, T | ProxmoxError]:
    """`read(key)` for every key, within the limits: each key's answer, or the ProxmoxError it ended with.
    Any other exception (a bug) is raised once every read has ended."""
    keys = list(keys)
    results: dict[K, T | ProxmoxError] = {}
    crashed: list[BaseException] = []
    dispatch = _Dispatch(keys, node_of, max(limits.per_node, 1))

    def work() -> None:
        while not crashed:
            taken = dispatch.take()
            if taken is None:
                return
            node, key = taken
            try:
                results[key] = read(key)
            except ProxmoxError as exc:
                results[key] = exc
            except BaseException as exc:
                crashed.append(exc)
            finally:
                dispatch.done(node)

    threads = [threading.Thread(target=work, name="api-read", daemon=True)
               for _ in range(min(max(limits.total, 1), len(keys)) - 1)]
    for t in threads:
        t.start()
    work()  # the calling thread reads too
    for t in threads:
        t.join()
    if crashed:
        raise crashed[0]
    return results
