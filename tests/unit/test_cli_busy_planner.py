"""An operator's command waits for a planner that says it is in a long step (a plan of a large cluster
takes a minute or more, and the request is taken on after it), and says so; it gives up in one line
when no planner is alive, when one is alive but not in a step a beat after the answer timeout, or
after the busy bound (pvebalance/cli/ops.ask). The planner's side: test_heartbeat_long_step. The
heartbeat lives 3 s here (30 s in service), so a planner that beats is given 1 s past the answer
timeout to say it is in a step."""

from __future__ import annotations

import json
import threading
import time

import pytest
from redis import Redis

from pvebalance.cli.base import UserError
from pvebalance.cli.ops import ask
from pvebalance.shared import keys
from pvebalance.shared.heartbeat import beat
from pvebalance.shared.requests import OperatorRequest, RequestAction, RequestState, RequestStore


@pytest.fixture(autouse=True)
def short_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "HEARTBEAT_TTL", 3)


def _pause() -> OperatorRequest:
    return OperatorRequest(action=RequestAction.PAUSE, who="test")


def _planner_says(redis: Redis, busy_since: float | None) -> None:
    beat(redis, "planner", ttl=30)
    redis.set(keys.PLANNER_MODE, json.dumps({"mode_of_operation": "automatic", "enable": True, "instance": "p-1",
                                             "at": time.time(), "busy_since": busy_since}), ex=30)


def _answered_after(redis: Redis, request: OperatorRequest, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, lambda: RequestStore(redis).settle(request.request_id, RequestState.DONE, "ok"))
    timer.start()
    return timer


@pytest.mark.parametrize("busy_from", [0.0, 0.4], ids=["busy-from-the-start", "busy-from-within-a-beat-after"])
def test_a_request_waits_past_the_answer_timeout_while_the_planner_is_in_a_long_step(
        fake_redis: Redis, capsys: pytest.CaptureFixture[str], busy_from: float) -> None:
    _planner_says(fake_redis, busy_since=None)
    step_began = time.time() - 40
    says_busy = threading.Timer(busy_from, lambda: _planner_says(fake_redis, busy_since=step_began))
    says_busy.start()
    request = _pause()
    answer = _answered_after(fake_redis, request, 1.5)
    try:
        status = ask(fake_redis, request, timeout=0.3, busy_timeout=20)
    finally:
        answer.cancel()
        says_busy.cancel()
    assert status.state == RequestState.DONE
    said = capsys.readouterr().err
    assert said.count("the planner has been planning for 4") == 1 and "Traceback" not in said


@pytest.mark.parametrize(("planner", "busy_timeout", "gives_up_after"), [
    (None, 20.0, 0.3),  # no planner beats: gone, at the answer timeout
    ("not in a step", 20.0, 0.3 + 1.0),  # alive, yet not taking the request on: a beat later
    ("busy", 1.0, 1.0),  # in a long step past the busy bound
], ids=["no-planner", "planner-not-in-a-step", "busy-past-its-bound"])
def test_a_request_no_planner_takes_on_ends_in_one_line_and_stays_queued(
        fake_redis: Redis, planner: str | None, busy_timeout: float, gives_up_after: float) -> None:
    if planner is not None:
        _planner_says(fake_redis, busy_since=time.time() if planner == "busy" else None)
    request = _pause()
    started = time.monotonic()
    with pytest.raises(UserError) as raised:
        ask(fake_redis, request, timeout=0.3, busy_timeout=busy_timeout)
    assert gives_up_after <= time.monotonic() - started < gives_up_after + 5
    message = str(raised.value)
    assert "did not answer within" in message and f"request {request.request_id} stays queued" in message
    assert "\n" not in message
    status = RequestStore(fake_redis).status(request.request_id)
    assert status is not None and status.state == RequestState.PENDING
