"""The demo's embedded Redis answers the commands rq's workers use as Redis does."""

from __future__ import annotations

import threading
import time

from redis import Redis

from pvebalance.embedded_redis import EmbeddedRedis


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
