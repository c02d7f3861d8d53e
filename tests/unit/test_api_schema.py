"""schemathesis against the API's own OpenAPI document: no 500, no answer that breaks its schema.

Bounded (a few examples per operation) so it runs in every CI run. The event stream never ends and
is tested on its own (tests/integration/test_api_live.py).
"""

from __future__ import annotations

import fakeredis
import schemathesis
from hypothesis import HealthCheck, settings

from pvebalance.shared.heartbeat import beat
from pvebalance.shared.models import utcnow
from tests.api_helpers import OPS, fake_app, make_world, settings_with_tokens

_server = fakeredis.FakeServer()
_world = make_world(fakeredis.FakeRedis(server=_server))
APP, _ = fake_app(settings_with_tokens(), _server)

schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", APP).exclude(path="/api/v1/events")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_answers_within_its_openapi_document(case: schemathesis.Case) -> None:
    # A ready cluster whenever the case runs (collection may be minutes earlier in a full run):
    # a 503 from /readyz is its documented answer, but schemathesis counts every 5xx as a failure.
    beat(_world.redis, "planner")
    _world.save_snapshot(_world.snapshot.model_copy(update={"taken_at": utcnow()}))
    case.call_and_validate(headers=OPS)
