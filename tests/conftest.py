"""Fixtures: bundled scenarios, the simulator over HTTPS, fakeredis, and a real Redis server.

The real Redis is PVEBALANCE_TEST_REDIS_URL if set, otherwise a redis-server this session starts
on a free port (the binary must be installed; .ci/run installs it). A missing Redis fails the
integration tests instead of skipping them, so a green run always means they ran.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from redis import Redis
from xdist.remote import Producer
from xdist.scheduler import LoadFileScheduling
from xdist.workermanage import WorkerController

from pvebalance.shared.apidump import load_dump
from pvebalance.simulator.server import Simulator
from tests.helpers import REPO, OwnRedis, SimFactory

# fakepve's server (tests/unit/test_fakepve.py) logs every request at INFO through aiohttp's access logger,
# from its own thread; after a test has pointed the root handler at the stderr pytest captured for
# it, those lines met a closed stream ("--- Logging error ---" in the suite's output)
logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long files first: unit files marked `long` (minutes of planning each), then the integration
    tests, then the rest. `./dev.sh test` hands the work units (`work_unit`) to the test workers in
    this order (--dist loadfile --no-loadscope-reorder), each worker its lane's first (`ByWorkUnit`):
    xdist's own order, the files with the most tests first, left the few long ones running alone at
    the end (measured: docs/development.md)."""
    def rank(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("long") else 1 if item.get_closest_marker("integration") else 2
    items.sort(key=rank)


# The files whose tests judge held-out seeds (tests/heldout_plans.py makes a seed's plan and checker
# minimum once in a test process, however many of its tests read them). One of them whole on one worker
# was the suite's longest chain (test_dimensions_heldout: 604 of the suite's 630 s); a seed's tests
# together are a few seconds to a minute.
HELD_OUT_FILES = ("tests/unit/test_dimensions_heldout.py", "tests/unit/test_engine_subsets.py")
_SEED_FIRST = re.compile(r"[^[]*\[(\d+)[-\]]")  # test_name[SEED-... or test_name[SEED]


def work_unit(nodeid: str) -> str:
    """The tests one worker runs together, one after the other: a file's, but in HELD_OUT_FILES a
    held-out seed's (the tests whose parameters' id starts with it, from either file), and any other
    test of theirs on its own."""
    path, _, test = nodeid.partition("::")
    if path not in HELD_OUT_FILES:
        return path
    seed = _SEED_FIRST.match(test)
    return f"held-out seed {seed.group(1)}" if seed else nodeid


class ByWorkUnit(LoadFileScheduling):
    """xdist's loadfile scheduling by `work_unit`, in two lanes: the first half of the workers take
    the next integration test file while one is left, the others the next of the rest (the long
    files' units first), then either takes what is left. The integration tests mostly wait (on the
    simulator's tasks, a worker's death, a minute of Redis outage), the long files plan, a core each:
    in one queue, three of the four workers were waiting in integration tests at once for minutes, the
    two cores a third idle (docs/development.md)."""

    def _split_scope(self, nodeid: str) -> str:  # xdist's override point: LoadFileScheduling's own is the file
        return work_unit(nodeid)

    def _assign_work_unit(self, node: WorkerController) -> None:
        number = node.gateway.id.removeprefix("gw")  # gw0, gw1, ... unless named by --tx id=NAME
        waiting_lane = number.isdigit() and int(number) < max(1, self.numnodes // 2)
        first = next((unit for unit in self.workqueue if unit.startswith("tests/integration/") == waiting_lane), None)
        if first is not None:
            self.workqueue.move_to_end(first, last=False)
        super()._assign_work_unit(node)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's, absent where it is not loaded
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> LoadFileScheduling | None:
    """`--dist loadfile` by `work_unit` (a file on one worker, the held-out seeds each on one), in two lanes."""
    return ByWorkUnit(config, log) if config.getvalue("dist") == "loadfile" else None


@pytest.fixture
def fake_redis() -> Redis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("PVEBALANCE_TEST_REDIS_URL")
    if url:
        yield _own_database(url)
        return
    server = OwnRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def real_redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture(scope="session")
def certdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("certs")


@pytest.fixture
def start_simulator(certdir: Path) -> Iterator[SimFactory]:
    started: list[Simulator] = []

    def start(scenario: str = "all-on-one", time_scale: float = 0.01, **kwargs: Any) -> Simulator:
        sim = Simulator(load_dump(REPO / "pvebalance" / "scenarios" / f"{scenario}.json"), time_scale=time_scale,
                        **kwargs)
        sim.start(0, certdir=certdir)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()




def _own_database(url: str) -> str:
    """Under pytest-xdist each worker flushes its own database of the given server: gw0 the one
    the URL names, gw1 the one below it, ... (the tests flush whole databases)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker.removeprefix("gw") or 0)
    base, _, db = url.rpartition("/")
    if not db.isdigit() or index == 0:
        return url
    if int(db) - index < 0:
        pytest.fail(f"PVEBALANCE_TEST_REDIS_URL {url}: not enough databases below {db} for xdist worker {worker}")
    return f"{base}/{int(db) - index}"
