"""The balancing engine: pure functions from a ClusterSnapshot and a Policy to a Plan."""

from .balance import is_movable, plan_balance
from .fit import GuestFigures, NodeFigures, fits, guest_figures, node_figures
from .load import NodeLoad, initial_loads, spread
from .policy import Policy

__all__ = ["GuestFigures", "NodeFigures", "NodeLoad", "Policy", "fits", "guest_figures", "initial_loads",
           "is_movable", "node_figures", "plan_balance", "spread"]
