"""What the leading planner publishes of itself beside its heartbeat, and expires with it: the mode it
plans in (its own config's, which `pvebalance status`, the API and the page, reading another config,
show instead of theirs) and, in a long step, when that step began (an operator's command waits for it:
pvebalance/cli/ops.ask)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import keys
from .message import Message, parse_known

if TYPE_CHECKING:
    from redis import Redis


class PlannerMode(Message):
    mode_of_operation: str
    enable: bool = True
    instance: str = ""
    at: float = 0.0  # time.time() when published
    busy_since: float | None = None  # time.time() at the start of a long step under way


def publish(redis: Redis, mode: PlannerMode) -> None:
    redis.set(keys.PLANNER_MODE, mode.model_dump_json(), ex=keys.HEARTBEAT_TTL)


def published(redis: Redis) -> PlannerMode | None:
    """The leading planner's, or None when no planner published one within its heartbeat's life (or one of
    a version this one does not know did)."""
    return parse_known(PlannerMode, redis.get(keys.PLANNER_MODE))
