"""An operator's command waits for a planner that says it is in a long step (a plan of a large cluster
takes a minute or more, and the request is taken on after it), and says so; it gives up in one line
when the planner is not planning (gone, or not taking requests on), or after the busy bound
(pvebalance/cli/ops.ask). The planner's side: test_heartbeat_long_step."""

from __future__ import annotations

import json
import threading
import time

import pytest
from redis import Redis

from pvebalance.cli.base import UserError
from pvebalance.cli.ops import ask
from pvebalance.shared import keys
from pvebalance.shared.requests import OperatorRequest, RequestAction, RequestState, RequestStore


def _pause() -> OperatorRequest:
    return OperatorRequest(action=RequestAction.PAUSE, who="test")


def _planner_says(redis: Redis, busy_since: float | None) -> None:
    redis.set(keys.PLANNER_MODE, json.dumps({"mode_of_operation": "automatic", "enable": True, "instance": "p-1",
                                             "at": time.time(), "busy_since": busy_since}), ex=30)


def test_a_request_waits_past_the_answer_timeout_while_the_planner_is_in_a_long_step(
        fake_redis: Redis, capsys: pytest.CaptureFixture[str]) -> None:
    _planner_says(fake_redis, busy_since=time.time() - 40)
    request = _pause()
    answer = threading.Timer(1.5, lambda: RequestStore(fake_redis).settle(request.request_id, RequestState.DONE,
                                                                           "paused"))
    answer.start()
    try:
        status = ask(fake_redis, request, timeout=0.3, busy_timeout=20)
    finally:
        answer.cancel()
    assert status.state == RequestState.DONE
    said = capsys.readouterr().err
    assert said.count("the planner has been planning for 40 s") == 1 and "Traceback" not in said


@pytest.mark.parametrize(("mode", "busy_timeout"), [
    (None, 20.0),  # no planner has published its mode within its heartbeat's life: gone
    ("idle", 20.0),  # alive and between steps, yet not taking the request on
    ("busy", 1.0),  # in a long step past the busy bound
], ids=["no-planner", "planner-not-planning", "busy-past-its-bound"])
def test_a_request_no_planner_takes_on_ends_in_one_line_and_stays_queued(
        fake_redis: Redis, mode: str | None, busy_timeout: float) -> None:
    if mode is not None:
        _planner_says(fake_redis, busy_since=time.time() if mode == "busy" else None)
    request = _pause()
    with pytest.raises(UserError) as raised:
        ask(fake_redis, request, timeout=0.3, busy_timeout=busy_timeout)
    message = str(raised.value)
    assert "did not answer within" in message and f"request {request.request_id} stays queued" in message
    assert "\n" not in message
    status = RequestStore(fake_redis).status(request.request_id)
    assert status is not None and status.state == RequestState.PENDING
