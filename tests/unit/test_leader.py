"""The leader lock: one holder, renewal only by the holder, fencing refuses a write once it is lost."""

from __future__ import annotations

import threading
import time

import pytest
from redis import Redis

from pvebalance.shared import keys
from pvebalance.shared.leader import Leader, NotLeader


def test_one_holder_at_a_time_and_only_the_holder_renews(fake_redis: Redis) -> None:
    a, b = Leader(fake_redis, "planner", 5, instance="a"), Leader(fake_redis, "planner", 5, instance="b")
    assert a.try_acquire() and not b.try_acquire()
    assert a.try_acquire()  # its own lock: renewed, still held
    assert a.renew() and not b.renew()
    a.fence()
    with pytest.raises(NotLeader):
        b.fence()
    b.release()  # not its lock: nothing happens
    assert a.holder() == "a"
    a.release()
    assert a.holder() is None and b.try_acquire()


def test_fence_refuses_the_write_once_another_instance_took_the_expired_lock(fake_redis: Redis) -> None:
    a, b = Leader(fake_redis, "collector", 5, instance="a"), Leader(fake_redis, "collector", 5, instance="b")
    assert a.try_acquire()
    fake_redis.delete(keys.leader("collector"))  # as if it expired while `a` was frozen
    assert b.try_acquire()
    with pytest.raises(NotLeader, match="another collector holds the lock"):
        a.fence()


def test_renewal_keeps_the_lock_alive_past_its_ttl(fake_redis: Redis) -> None:
    leader = Leader(fake_redis, "planner", 1, instance="a")
    stop = threading.Event()
    worked = threading.Event()

    def work(demoted: threading.Event) -> None:
        time.sleep(1.5)  # longer than the ttl: the keeper renewed meanwhile
        assert leader.holder() == "a" and not demoted.is_set()
        worked.set()
        stop.set()
        demoted.wait(5)

    leader.lead(stop, work)
    assert worked.is_set()
    assert leader.holder() is None  # released on stop: a follower need not wait for the expiry


def test_losing_the_lock_demotes_the_work_loop(fake_redis: Redis) -> None:
    leader = Leader(fake_redis, "planner", 1, instance="a")
    stop = threading.Event()
    demoted_seen = threading.Event()

    def work(demoted: threading.Event) -> None:
        fake_redis.set(keys.leader("planner"), "b")  # another instance holds it now
        if demoted.wait(5):
            demoted_seen.set()
        stop.set()

    leader.lead(stop, work)
    assert demoted_seen.is_set()
    assert fake_redis.get(keys.leader("planner")) == b"b"  # not released: it was not ours
