"""The compose deployment's state as one JSON line, for deploy/check.sh (run inside a container:
`docker compose exec -T planner python - < deploy/compose_status.py`).

balanced: a plan moved guests, every job succeeded, none is active, and the latest plan is empty.
Redis as the services find it (one server, or the master through Sentinel): `master` names it.
"""

import json

from rq import Queue, Worker

from pvebalance.shared import keys, snapshots
from pvebalance.shared.config import load_settings
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import Plan
from pvebalance.shared.redisconn import client

redis = client(load_settings("/etc/pvebalance/pvebalance.yaml").redis)
store = JobStore(redis)
latest: dict[str, str] = {}
for _, event in store.events("0-0", 100_000):
    latest[event.job_id] = event.state.value
plans = [Plan.model_validate_json(raw) for pid in redis.zrange(keys.PLAN_INDEX, 0, -1)
         if (raw := redis.get(keys.plan(pid.decode())))]
plans.sort(key=lambda p: p.created_at)
states = sorted(set(latest.values()))
last = plans[-1] if plans else None
balanced = (any(p.migrations for p in plans) and bool(latest) and states == ["succeeded"]
            and not store.active_jobs() and last is not None and not last.migrations)
print(json.dumps({
    "balanced": balanced,
    "plans": len(plans),
    "moves_planned": sum(len(p.migrations) for p in plans),
    "jobs": {s: list(latest.values()).count(s) for s in states},
    "latest_plan_moves": len(last.migrations) if last else None,
    "spread_pp": [round(last.before.spread_pp, 1), round(last.after.spread_pp, 1)] if last else None,
    "workers": len(Worker.all(queue=Queue(keys.MIGRATION_QUEUE, connection=redis))),
    "leaders": {s: (redis.get(keys.leader(s)) or b"").decode() for s in ("collector", "planner")},
    "snapshot_id": (latest_snapshot.snapshot_id if (latest_snapshot := snapshots.latest(redis)) else None),
    "master": redis.connection_pool.get_master_address()[0] if hasattr(redis.connection_pool, "get_master_address")
    else "redis",
}))
