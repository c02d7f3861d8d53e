"""The demo's embedded Redis answers the commands rq's workers use as Redis does."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest
from redis import Redis

from pvebalance.demo.embedded_redis import EmbeddedRedis


def test_blocked_blmove_receives_every_item_pushed_after_it_blocked_exactly_once() -> None:
    """rq dequeues with BLMOVE; stock fakeredis never handed a blocked client an item pushed later."""
    server = EmbeddedRedis()
    received: list[bytes] = []
    lock = threading.Lock()

    def dequeue_until_idle() -> None:
        client = Redis.from_url(server.url)
        while (item := client.blmove("queue", "queue:intermediate", 2, "LEFT", "RIGHT")) is not None:
            with lock:
                received.append(item)
            client.lrem("queue:intermediate", 1, item)

    workers = [threading.Thread(target=dequeue_until_idle) for _ in range(4)]
    try:
        for w in workers:
            w.start()
        time.sleep(0.2)  # every worker is blocked on the empty list before the first push
        producer = Redis.from_url(server.url)
        for i in range(200):
            producer.rpush("queue", i)
            if i % 7 == 0:
                time.sleep(0.005)
        for w in workers:
            w.join(10)
        assert sorted(int(x) for x in received) == list(range(200))
        assert producer.llen("queue") == 0 and producer.llen("queue:intermediate") == 0
    finally:
        server.stop()


def _command(*words: str) -> bytes:
    return f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words)


@pytest.mark.parametrize(("blocking", "pop", "left_in_intermediate"), [
    pytest.param(("BLMOVE", "queue", "queue:intermediate", "LEFT", "RIGHT", "30"),
                 lambda r: r.blmove("queue", "queue:intermediate", 5), [b"job-1"], id="blmove (rq on Redis >= 6.2)"),
    pytest.param(("BLPOP", "queue", "30"), lambda r: (r.blpop(["queue"], 5) or (None, None))[1], [],
                 id="blpop (rq here: fakeredis has no INFO)"),
])
def test_a_client_that_went_away_while_blocked_is_given_nothing(
        blocking: tuple[str, ...], pop: Callable[[Redis], bytes | None], left_in_intermediate: list[bytes]) -> None:
    """A worker stopped while blocked: Redis drops its command; the next item goes to a live client."""
    server = EmbeddedRedis()
    try:
        gone = socket.create_connection(("127.0.0.1", server.port))
        gone.sendall(_command(*blocking))
        time.sleep(0.2)  # blocked on the empty list
        gone.close()
        time.sleep(0.1)
        live = Redis.from_url(server.url)
        got: list[bytes | None] = []
        waiter = threading.Thread(target=lambda: got.append(pop(live)))
        waiter.start()
        time.sleep(0.2)
        Redis.from_url(server.url).rpush("queue", "job-1")
        waiter.join(10)
        assert got == [b"job-1"]
        assert live.lrange("queue:intermediate", 0, -1) == left_in_intermediate
    finally:
        server.stop()
