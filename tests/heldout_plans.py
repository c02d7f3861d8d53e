"""Held-out clusters (tests/heldout.py), each one's plan for memory and CPU within 5 pp, and the
independent checker's minimum for it: one definition for test_dimensions_heldout and
test_engine_subsets, which judge the same plans, each made once in a test process however many of
its tests read it."""

from __future__ import annotations

from functools import cache
from typing import Any

from pvebalance.engine import Policy, plan_balance
from pvebalance.shared.apidump import snapshot_from_api
from pvebalance.shared.config import BalancingSettings
from pvebalance.shared.models import ClusterSnapshot, Plan
from tests.heldout import held_out_cluster, held_out_shape
from tests.oracle_minimum import Minimum, minimum_migrations

BAND = 5.0
Cluster = tuple[ClusterSnapshot, dict[str, Any]]  # as the engine reads it, and its raw API answers
NODE_LIMIT = 20_000  # the checker's work bound: every seed the tests prove is proven well within it


def both() -> Policy:
    return Policy.from_settings(BalancingSettings(method=["memory", "cpu"], balanciness=BAND))


def cluster(seed: int, nodes: int | None = None, guests: int | None = None) -> Cluster:
    """The seed's cluster, by default of its own shape (tests/heldout.py's held_out_shape)."""
    return _cluster(seed, *_shape(seed, nodes, guests))


def planned(seed: int, nodes: int | None = None, guests: int | None = None) -> Plan:
    return _planned(seed, *_shape(seed, nodes, guests))


def minimum(seed: int, nodes: int | None = None, guests: int | None = None) -> Minimum:
    return _minimum(seed, *_shape(seed, nodes, guests))


def _shape(seed: int, nodes: int | None, guests: int | None) -> tuple[int, int]:
    return (nodes, guests) if nodes is not None and guests is not None else held_out_shape(seed)


@cache
def _cluster(seed: int, nodes: int, guests: int) -> Cluster:
    doc = held_out_cluster(seed, nodes, guests)
    return snapshot_from_api(doc["api"], cluster=doc["name"]), doc["api"]


@cache
def _planned(seed: int, nodes: int, guests: int) -> Plan:
    return plan_balance(_cluster(seed, nodes, guests)[0], both())


@cache
def _minimum(seed: int, nodes: int, guests: int) -> Minimum:
    return minimum_migrations(_cluster(seed, nodes, guests)[1], band=BAND, node_limit=NODE_LIMIT)
