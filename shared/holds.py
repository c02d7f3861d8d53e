"""What the planner holds back between plans: the moves an operator rejected (`planner.reject_hold`),
and the next balancing round (`planner.interval`, ProxLB's schedule). Kept in Redis, so that a
planner that restarts or takes over as leader holds the same."""

from __future__ import annotations

import json
import time
from typing import Any

from pvebalance.engine.explain import clock

from . import keys
from .models import Plan


def hold_rejected(redis: Any, plan: Plan, who: str, seconds: float, now: float | None = None) -> int:
    """Hold each move of a rejected plan back for `seconds`; how many moves are held."""
    if seconds <= 0 or not plan.migrations:
        return 0
    until = (time.time() if now is None else now) + seconds
    held = {f"{m.vmid}:{m.target}": json.dumps({"until": until, "who": who, "plan_id": plan.plan_id})
            for m in plan.migrations}
    redis.hset(keys.REJECTED_MOVES, mapping=held)
    return len(held)


def held_moves(redis: Any, now: float | None = None) -> dict[int, dict[str, str]]:
    """The rejected moves still held: vmid -> target -> who rejected it and until when. Those whose
    hold has ended are dropped here."""
    now = time.time() if now is None else now
    out: dict[int, dict[str, str]] = {}
    ended = []
    for raw_key, raw in redis.hgetall(keys.REJECTED_MOVES).items():
        key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
        try:
            vmid, target = key.split(":", 1)
            hold = json.loads(raw)
            until = float(hold["until"])
            if until <= now:
                ended.append(key)
                continue
            out.setdefault(int(vmid), {})[target] = (f"rejected by {hold.get('who', '?')} with plan "
                                                     f"{hold.get('plan_id', '?')}, held until {clock(until)}")
        except (ValueError, KeyError, TypeError):
            ended.append(key)  # not ours to read: dropped rather than read wrong every plan
    if ended:
        redis.hdel(keys.REJECTED_MOVES, *ended)
    return out


def round_wait(redis: Any, interval: float, now: float | None = None) -> float:
    """Seconds until the next balancing round is due (0: now)."""
    if interval <= 0:
        return 0.0
    last = redis.get(keys.LAST_ROUND)
    try:
        since = float(last) if last else None
    except ValueError:
        since = None
    now = time.time() if now is None else now
    return 0.0 if since is None else max(0.0, since + interval - now)


def round_made(redis: Any, interval: float, now: float | None = None) -> None:
    """A balancing plan was made now: the next one is due `interval` later."""
    if interval > 0:
        redis.set(keys.LAST_ROUND, str(time.time() if now is None else now))
