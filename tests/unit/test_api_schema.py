"""schemathesis against the API's own OpenAPI document: no 500, no answer that breaks its schema.

Bounded (a few examples per operation) so it runs in every CI run. The event stream never ends and
is tested on its own (tests/integration/test_api_live.py).
"""

from __future__ import annotations

import fakeredis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from pvebalance.shared.heartbeat import beat
from pvebalance.shared.models import utcnow
from tests.api_helpers import OPS, World, fake_app, make_storage_world, make_world, settings_with_tokens

_server = fakeredis.FakeServer()
_world = make_world(fakeredis.FakeRedis(server=_server))
APP, _ = fake_app(settings_with_tokens(), _server)

schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", APP).exclude(path="/api/v1/events")

# storage-3 with storage balancing's plan (a migration, then disk moves): the actions, storages and jobs of a
# disk move answer within the same document. Reads with valid requests only: what this adds is the answers'
# shapes (the test above sends bad requests to every operation).
_storage_server = fakeredis.FakeServer()
_storage_world = make_storage_world(fakeredis.FakeRedis(server=_storage_server))
STORAGE_APP, _ = fake_app(settings_with_tokens(), _storage_server)
storage_schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", STORAGE_APP).exclude(
    path="/api/v1/events").include(method="GET")
storage_schema.config.generation.update(modes=[GenerationMode.POSITIVE])


def _ready(world: World) -> None:
    # A ready cluster whenever the case runs (collection may be minutes earlier in a full run):
    # a 503 from /readyz is its documented answer, but schemathesis counts every 5xx as a failure.
    beat(world.redis, "planner")
    world.save_snapshot(world.snapshot.model_copy(update={"taken_at": utcnow()}))


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_answers_within_its_openapi_document(case: schemathesis.Case) -> None:
    _ready(_world)
    case.call_and_validate(headers=OPS)


@storage_schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_answers_on_a_plan_with_disk_moves_within_its_openapi_document(case: schemathesis.Case) -> None:
    _ready(_storage_world)
    case.call_and_validate(headers=OPS)
