"""The balancing engine: pure functions from a ClusterSnapshot and a Policy to a Plan."""

from .balance import is_movable, plan_balance
from .load import NodeLoad, initial_loads, spread
from .policy import Policy

__all__ = ["NodeLoad", "Policy", "initial_loads", "is_movable", "plan_balance", "spread"]
