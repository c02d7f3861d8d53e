"""Redis through Sentinel, for real: a master, a replica and three sentinels on localhost ports
(tests/redis_ha.py), the services as the processes they run as, the simulator over HTTPS.

The master is failed over (SENTINEL FAILOVER) in the middle of a drain: every job of the drain ends,
once, as the simulator saw it (no job lost, doubled or mis-stated), and no migration limit is
exceeded; the services ride the switch out as a short Redis outage. A Sentinel configuration an
operator got wrong (no sentinel answers, a master name they do not know, a wrong password) is one
line: services wait and retry, commands exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pvebalance.demo import stop_processes
from pvebalance.demo.embedded_redis import free_port
from pvebalance.shared import keys
from pvebalance.shared.config import RedisSettings, load_settings
from pvebalance.shared.jobs import JobState, job_ids
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.logging import configure_logging, get_logger
from pvebalance.shared.plans import PlanStore
from pvebalance.shared.redisconn import REDIS_AWAY, Client, client, connect_waiting
from pvebalance.shared.requests import OperatorRequest, RequestAction, RequestStore
from tests.helpers import SimFactory, write_config
from tests.redis_ha import MASTER_NAME, RedisHA

pytestmark = pytest.mark.integration

PASSWORD = "sentinel-test-password"
LIMITS = {"max_parallel_cluster": 2, "max_parallel_per_source": 2, "max_parallel_per_target": 1}


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisHA]:
    servers = RedisHA(tmp_path_factory.mktemp("redis-ha"), password=PASSWORD)
    servers.start()
    yield servers
    servers.stop()


def redis_section(ha: RedisHA, **overrides: Any) -> dict[str, Any]:
    return {"url": "redis://localhost/0", "sentinels": ha.sentinels, "master_name": MASTER_NAME,
            "password": PASSWORD, **overrides}


def env() -> dict[str, str]:
    """The config file alone says where Redis is (the session's REDIS_URL would not name sentinels)."""
    return {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("PVEBALANCE_")}


def service(name: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pvebalance", name, "-c", str(config)], env=env(),
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def retried(fn: Any, timeout: float = 60) -> Any:
    """A read of the test's own, through Sentinel: it rides the failover out as the services do."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except REDIS_AWAY:
            assert time.monotonic() < deadline, "Redis did not come back through Sentinel"
            time.sleep(0.2)


# --- an operator's mistakes: one line each -------------------------------------------------------------

@pytest.mark.parametrize(("case", "line"), [
    ("no sentinel", "Redis master 'pvebalance' (sentinels 127.0.0.1:{p1}, 127.0.0.1:{p2}) cannot be looked up: "
                    "no sentinel answers; start-up waits and retries"),
    ("wrong master name", "Redis master 'nosuchmaster' (sentinels {sentinels}) is unknown to the sentinels (or down): "
                          "none names a master 'nosuchmaster' (check redis.master_name); start-up waits and retries"),
    ("wrong password", "Redis master 'pvebalance' (sentinels {sentinels}) refuses the user or password "
                       "(redis.username, redis.password or redis.url); start-up waits and retries"),
])
def test_a_wrong_sentinel_config_is_one_line_and_services_wait_and_retry(
        ha: RedisHA, tmp_path: Path, case: str, line: str) -> None:
    p1, p2 = free_port(), free_port()
    section = {"no sentinel": redis_section(ha, sentinels=[f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"]),
               "wrong master name": redis_section(ha, master_name="nosuchmaster"),
               "wrong password": redis_section(ha, password="not-the-password")}[case]
    config = tmp_path / "pvebalance.yaml"
    config.write_text(yaml.safe_dump({"redis": section, "logging": {"format": "json"}}))
    expected = line.format(p1=p1, p2=p2, sentinels=", ".join(ha.sentinels))

    log = tmp_path / "collector.log"

    def said() -> list[str]:
        return [json.loads(x)["event"] for x in log.read_text().splitlines() if x.startswith("{")]

    collector = service("collector", config, log)
    try:
        deadline = time.monotonic() + 60  # a loaded machine takes seconds to start a service
        while expected not in said() and collector.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # several retries after the first (0.5 s, 1 s, 2 s ...): said once all the same
        assert collector.poll() is None, "the service waits for Redis instead of exiting"
    finally:
        stop_processes([collector])
    events = said()
    assert events.count(expected) == 1, events
    assert not any("Traceback" in x for x in events)

    command = subprocess.run([sys.executable, "-m", "pvebalance", "jobs", "-c", str(config)], env=env(),
                             capture_output=True, text=True, timeout=60)
    assert command.returncode == 2
    [error] = command.stderr.strip().splitlines()
    assert error.startswith("error: " + expected.removesuffix("; start-up waits and retries")), error
    assert PASSWORD not in command.stderr and "not-the-password" not in command.stderr


def test_config_check_accepts_a_sentinel_config(tmp_path: Path) -> None:
    config = tmp_path / "pvebalance.yaml"
    config.write_text(yaml.safe_dump({"redis": {"url": "rediss://pvebalance@localhost/2",
                                                "sentinels": ["10.0.0.1:26379", "[fd00::2]:26379", "s3:26379"],
                                                "master_name": "pve", "password": "s3cret-redis-pass"}}))
    out = subprocess.run([sys.executable, "-m", "pvebalance", "config", "check", "-c", str(config)], env=env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert ("  redis: master 'pve' through sentinels 10.0.0.1:26379, [fd00::2]:26379, s3:26379 (rediss://, "
            "database 2; locks wait for 1 replica(s))") in out.stdout.splitlines()
    assert "s3cret" not in out.stdout


def test_every_client_kind_reaches_the_master_through_sentinel(ha: RedisHA) -> None:
    """The services' sync clients and the API's asyncio one (its event stream) both ask the sentinels."""
    import asyncio

    from pvebalance.shared.redisconn import async_client

    settings = RedisSettings(**redis_section(ha))
    sync = client(settings)
    sync.set("pvebalance:test:sentinel", "through the master")
    assert ha.server(ha.master()).get("pvebalance:test:sentinel") == b"through the master"

    async def read() -> bytes:
        aio = async_client(settings)
        try:
            return await aio.get("pvebalance:test:sentinel")  # type: ignore[no-any-return]
        finally:
            await aio.aclose()

    assert asyncio.run(read()) == b"through the master"
    sync.delete("pvebalance:test:sentinel")


# --- a failover in the middle of a drain -----------------------------------------------------------------

def test_a_failover_during_a_drain_loses_doubles_and_misstates_no_job(ha: RedisHA, start_simulator: SimFactory,
                                                                     tmp_path: Path) -> None:
    sim = start_simulator("homelab", time_scale=0.1)
    config = write_config(tmp_path / "pvebalance.yaml", sim, "redis://localhost/0", redis=redis_section(ha),
                          collector={"interval": 0.5}, balancing={"enable": False}, api={"port": free_port()},
                          migrator={**LIMITS, "poll_interval": 0.05, "slot_ttl": 30})
    settings = load_settings(config)
    redis = client(settings.redis)
    assert isinstance(redis, Client) and redis.wait_replicas == 1
    names = ["collector", "planner", "api", "migrator", "migrator", "migrator"]
    procs = [service(n, config, tmp_path / f"{n}-{i}.log") for i, n in enumerate(names)]
    store, requests = JobStore(redis), RequestStore(redis)
    on_pve1 = sorted(v for v, g in sim.cluster.guests.items() if g.node == "pve1" and g.running)
    try:
        deadline = time.monotonic() + 60
        while redis.get(keys.SNAPSHOT_LATEST) is None:
            assert time.monotonic() < deadline, "no snapshot through Sentinel"
            time.sleep(0.2)
        asked = requests.submit(OperatorRequest(action=RequestAction.DRAIN, node="pve1", who="test")).request
        deadline = time.monotonic() + 90
        while sum(1 for v in on_pve1 if sim.cluster.guests[v].node != "pve1") < 3:
            assert time.monotonic() < deadline, "the drain did not start"
            time.sleep(0.05)
        old = ha.master()
        failed_over_at = time.time()
        switch = threading.Thread(target=ha.failover)
        switch.start()
        switch.join(60)
        assert ha.master() != old
        moved_before = {v for v in on_pve1 if sim.cluster.guests[v].node != "pve1"}
        assert len(moved_before) < len(on_pve1), "the drain was over before the failover: nothing was tested"

        def drained() -> bool:
            status = requests.status(asked.request_id)
            return bool(status and status.state.final and not store.active_jobs())

        deadline = time.monotonic() + 180
        while not retried(drained):
            assert time.monotonic() < deadline, f"drain not over: {retried(lambda: requests.status(asked.request_id))}"
            time.sleep(0.3)
        assert [p.poll() for p in procs] == [None] * len(procs), "every service rode the failover out"
        status = requests.status(asked.request_id)
        plan = PlanStore(redis).plan(status.plan_id or "") if status else None
        api = retried(lambda: httpx.get(f"http://127.0.0.1:{settings.api.port}/readyz", timeout=5))
    finally:
        stop_processes(procs)
    assert status is not None and status.state.value == "done", status
    assert plan is not None and sorted(m.vmid for m in plan.migrations) == on_pve1
    # every job ended once, in the state the simulator's record says, and no migration twice
    stats = sim.cluster.stats
    records = {j: store.load(j).fields for j in job_ids(plan)}
    ended = [e for _, e in store.events(count=10_000) if e.state.terminal]
    assert sorted(e.job_id for e in ended) == sorted(records), "each job ended exactly once"
    assert {r["state"] for r in records.values()} == {JobState.SUCCEEDED.value}
    for m in plan.migrations:
        assert sim.cluster.guests[m.vmid].node == m.target
    assert {int(v): n for v, n in stats.migrate_posts.items()} == {v: 1 for v in on_pve1}, "one POST each"
    ok = [m for m in stats.migrations if m["ok"]]
    assert sorted(m["vmid"] for m in ok) == on_pve1
    assert stats.max_concurrent <= LIMITS["max_parallel_cluster"]
    assert max(stats.max_per_source.values()) <= LIMITS["max_parallel_per_source"]
    assert max(stats.max_per_target.values()) <= LIMITS["max_parallel_per_target"]
    later = [float(r["at_succeeded"]) for r in records.values() if float(r["at_succeeded"]) > failed_over_at]
    assert later, "jobs ended on the new master too"
    # retention: every job and plan key carries a TTL once the stack is idle
    for pattern in (keys.job("*"), keys.plan("*")):
        found = list(redis.scan_iter(match=pattern, count=1000))
        assert found and all(redis.ttl(k) > 0 for k in found), pattern
    assert api.status_code == 200
    for i, name in enumerate(names):
        text = (tmp_path / f"{name}-{i}.log").read_text()
        assert "Traceback" not in text, f"{name}-{i} logged a traceback:\n{text[-3000:]}"


def test_a_lock_or_lease_no_replica_acknowledged_is_not_held(redis_url: str, real_redis: Any,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A lone Redis with wait_replicas 1: the lock is taken on the master but no replica has it, so a
    failover could hand it to another instance: the collector does not lead (and says why, once)."""
    from pvebalance.services.migrator.lease import Lease
    from pvebalance.shared.leader import Leader, NotLeader

    configure_logging("INFO", "json")
    redis = client(RedisSettings(url=redis_url, wait_replicas=1))
    leader = Leader(redis, "collector", ttl=5)
    assert not leader.try_acquire()
    with pytest.raises(NotLeader, match="not on 1 replica"):
        leader.fence()
    stop = threading.Event()
    worked = threading.Event()
    runner = threading.Thread(target=leader.lead, args=(stop, lambda demoted: worked.set()), daemon=True)
    runner.start()
    time.sleep(1.5)
    stop.set()
    runner.join(5)
    assert not worked.is_set()
    said = [json.loads(x)["event"] for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    assert sum("not acknowledged by Redis's replicas" in s for s in said) == 1, said
    # a job's lease the same: not held, and given back (the reconciler hands the job to a worker later)
    lease = Lease(redis, "migrate-p-101", "worker-1", ttl=30)
    assert not lease.acquire()
    assert real_redis.get(keys.lease("migrate-p-101")) is None


def test_connect_waiting_on_a_lone_master_refusing_writes_is_not_a_traceback(tmp_path: Path) -> None:
    """min-replicas-to-write without a replica: NOREPLICAS is Redis away for writes, waited out."""
    from tests.helpers import OwnRedis

    server = OwnRedis(tmp_path)
    server.start()
    try:
        Client(port=server.port).config_set("min-replicas-to-write", 1)
        made = connect_waiting(server.url, get_logger("test"))
        assert made is not None
        with pytest.raises(REDIS_AWAY):
            made.set("x", 1)
    finally:
        server.stop()
