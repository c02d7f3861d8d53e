"""Planning with the objects alive before it left out of the garbage collector's full passes.

A plan allocates millions of small objects (tuples, lists, numpy views), so CPython's cyclic
collector runs hundreds of times while it is made, and each of its full passes walks every object
alive, the snapshot's too: on xl-10k some 10,000 guests' models, their dicts and lists. `gc.freeze`
moves what is alive now out of those passes; `gc.unfreeze` hands it back once the plan is made, so
that a long-running service still collects a snapshot it has dropped. Nothing is freed later or
sooner by it (reference counting frees as before); only the passes are shorter.

Measured (xl-10k, whole process, least of 4 in one run): cpu,disk 9.6 -> 8.2 s, memory,cpu,disk
5.9 -> 5.6 s, disk 5.9 -> 5.8 s, memory 2.0 -> 1.9 s.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")


def alive_before_frozen(plan: Callable[_P, _R]) -> Callable[_P, _R]:
    """`plan`, run with the objects alive when it is called frozen (gc.freeze), and thawed after,
    however it ends. Nested or concurrent calls only thaw early: the passes are longer, nothing else."""
    @functools.wraps(plan)
    def frozen(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        gc.freeze()
        try:
            return plan(*args, **kwargs)
        finally:
            gc.unfreeze()
    return frozen
