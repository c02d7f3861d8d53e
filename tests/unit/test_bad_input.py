"""Bad input an operator (or a cluster) can hand pvebalance: one clear line and exit code 2, never a traceback.

Each case was a traceback (exit code 1) or a silent wrong answer before; each test here failed then.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from pvebalance.engine import Policy, plan_balance
from pvebalance.services.collector.collector import CollectError, Collector
from pvebalance.shared import keys
from pvebalance.shared.apidump import DumpError, load_dump, snapshot_from_api
from pvebalance.shared.jobs import JobState, JobStatusEvent
from pvebalance.shared.proxmox import ProxmoxClient
from tests.helpers import REPO, SimFactory, api_settings, write_config


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvebalance", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    """The promise: exit code 2 and exactly one line on stderr, no traceback."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# --- 1. the README's own example config ----------------------------------------------------------


def readme_config(tmp_path: Path) -> Path:
    text = (REPO / "docs" / "configuration.md").read_text()
    block = re.search(r"# Configuration.*?```yaml\n(.*?)```", text, re.S)
    assert block, "docs/configuration.md has an example config"
    path = tmp_path / "config.yaml"
    path.write_text(block.group(1))
    return path


@pytest.mark.parametrize("command", [["collect", "--once"], ["record", "out.json"]])
def test_readme_config_names_the_missing_ca_file(tmp_path: Path, command: list[str]) -> None:
    config = readme_config(tmp_path)
    assert "/etc/pvebalance/ca.pem" in config.read_text() and not Path("/etc/pvebalance/ca.pem").exists()
    line = one_error_line(run(*command, "-c", str(config)))
    assert "proxmox_api.ca_file" in line and "/etc/pvebalance/ca.pem does not exist" in line


# --- 2. scenario files that are JSON but wrong inside ---------------------------------------------


def homelab() -> dict[str, Any]:
    return json.loads((REPO / "pvebalance" / "scenarios" / "homelab.json").read_text())


def index_of(doc: dict[str, Any], kind: str, name: str | int) -> int:
    key = "node" if kind == "node" else "vmid"
    return next(i for i, r in enumerate(doc["api"]["/cluster/resources"])
                if r["type"] == kind and r[key] == name)


def _mem_lots(doc: dict[str, Any]) -> None:
    doc["api"]["/cluster/resources"][index_of(doc, "node", "pve2")]["mem"] = "lots"


def _guest_without(field: str) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        del doc["api"]["/cluster/resources"][index_of(doc, "qemu", 102)][field]
    return mutate


def _non_object(doc: dict[str, Any]) -> None:
    doc["api"]["/cluster/resources"].insert(3, "x")


def _ha_rules_x(doc: dict[str, Any]) -> None:
    doc["api"]["/cluster/ha/rules"] = "x"


BAD_SCENARIOS = [
    (_mem_lots, "/cluster/resources[1] (node pve2): mem: not an integer ('lots')"),
    (_guest_without("node"), "(qemu 102): node: missing"),
    (_guest_without("vmid"), "(qemu on pve1): vmid: missing"),
    (_non_object, "/cluster/resources[3]: not an object ('x')"),
    (_ha_rules_x, "/cluster/ha/rules: not a list ('x')"),
]


@pytest.mark.parametrize(("mutate", "expected"), BAD_SCENARIOS, ids=["mem", "no-node", "no-vmid", "non-object",
                                                                     "ha-rules"])
def test_a_wrong_scenario_is_one_line_naming_path_and_field(tmp_path: Path, mutate: Any, expected: str) -> None:
    doc = homelab()
    mutate(doc)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(doc))
    line = one_error_line(run("plan", "--scenario", str(path)))
    assert expected in line, line
    assert str(path) in line
    with pytest.raises(DumpError, match=re.escape(expected)):
        snapshot_from_api(load_dump(path)["api"])


@pytest.mark.parametrize(("mutate", "expected"), BAD_SCENARIOS, ids=["mem", "no-node", "no-vmid", "non-object",
                                                                     "ha-rules"])
def test_the_same_answers_from_the_live_api_are_refused_by_the_collector(mutate: Any, expected: str) -> None:
    doc = homelab()
    mutate(doc)
    collector = Collector(AnswersClient(doc["api"]), None)  # type: ignore[arg-type]
    with pytest.raises(CollectError, match=re.escape(expected)):
        collector.snapshot()


def test_collect_once_on_a_malformed_api_answer_is_one_line(start_simulator: SimFactory, tmp_path: Path) -> None:
    sim = start_simulator("homelab")
    sim.cluster.guests[102].entry["maxdisk"] = "lots"
    config = write_config(tmp_path / "c.yaml", sim, "redis://127.0.0.1:1/0")
    out = run("collect", "--once", "-c", str(config))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "(qemu 102): maxdisk: not an integer ('lots')" in errors[0], out.stderr


class AnswersClient:
    """A Proxmox client that answers from a recorded `api` mapping, malformed answers included."""

    def __init__(self, api: dict[str, Any]) -> None:
        self.api, self.requests, self.host = api, 0, "recorded"

    def get(self, path: str, **params: Any) -> Any:
        self.requests += 1
        return copy.deepcopy(self.api.get(path))


# --- 3. impossible figures -----------------------------------------------------------------------


def _node_figures(doc: dict[str, Any], node: str, **figures: Any) -> dict[str, Any]:
    entry = doc["api"]["/cluster/resources"][index_of(doc, "node", node)]
    for key, value in figures.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    return doc


@pytest.mark.parametrize(("figures", "problem"), [
    ({"maxmem": 0}, "maxmem is 0"),
    ({"maxmem": None}, "maxmem missing"),
    ({"mem": 3_985_385_473_700}, "mem 3,985,385,473,700 is more than 1.5 x maxmem"),
    ({"mem": None, "cpu": None}, "mem and cpu missing"),
])
def test_a_node_with_impossible_figures_is_left_alone(tmp_path: Path, figures: dict[str, Any],
                                                      problem: str) -> None:
    scenario = REPO / "pvebalance" / "scenarios" / "all-on-one.json"
    doc = _node_figures(json.loads(scenario.read_text()), "pve4", **figures)
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(doc))
    out = run("plan", "--scenario", str(path), "--json")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: node pve4 is not planned on"), out.stderr
    assert problem in lines[0]
    plan = json.loads(out.stdout)
    assert all("pve4" not in (m["source"], m["target"]) for m in plan["migrations"])
    assert "pve4" not in plan["before"]["nodes"], "not counted in the spread, nor shown with a made-up figure"
    assert plan["migrations"], "the other nodes are still balanced"
    assert plan["violations"] == []


def test_an_unusable_node_is_no_target_even_when_it_looks_empty() -> None:
    # mem and maxmem missing used to read as 0 of 1 byte: an empty node, the best target of all
    doc = _node_figures(homelab(), "pve3", mem=None, maxmem=None)
    snap = snapshot_from_api(doc["api"])
    pve3 = next(n for n in snap.nodes if n.name == "pve3")
    assert pve3.online and not pve3.usable and pve3.problem == "mem and maxmem missing"
    for mode in ("used", "assigned"):
        plan = plan_balance(snap, Policy(mode=mode))
        assert all("pve3" not in (m.source, m.target) for m in plan.migrations)


def test_an_offline_node_in_pves_shape_is_offline_not_refused(tmp_path: Path) -> None:
    doc = homelab()
    i = index_of(doc, "node", "pve3")
    doc["api"]["/cluster/resources"][i] = {"id": "node/pve3", "node": "pve3", "status": "offline", "type": "node"}
    snap = snapshot_from_api(doc["api"])
    pve3 = next(n for n in snap.nodes if n.name == "pve3")
    assert not pve3.online and pve3.usable
    path = tmp_path / "offline.json"
    path.write_text(json.dumps(doc))
    out = run("plan", "--scenario", str(path), "--json")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert all("pve3" not in (m["source"], m["target"]) for m in json.loads(out.stdout)["migrations"])


# --- 4. an event of a schema this version does not know ----------------------------------------


def test_jobs_skips_an_event_of_an_unknown_schema_with_one_warning(real_redis: Redis, redis_url: str,
                                                                   tmp_path: Path) -> None:
    def event(vmid: int, **extra: Any) -> str:
        doc = json.loads(JobStatusEvent(job_id=f"migrate-p-{vmid}", plan_id="p", vmid=vmid, source="pve1",
                                        target="pve2", state=JobState.SUCCEEDED).model_dump_json())
        return json.dumps({**doc, **extra})

    real_redis.xadd(keys.EVENT_STREAM, {"event": event(100)})
    future = real_redis.xadd(keys.EVENT_STREAM, {"event": event(101, schema_version=2, new_field="x")})
    real_redis.xadd(keys.EVENT_STREAM, {"event": event(102)})
    config = tmp_path / "c.yaml"
    config.write_text(f"redis:\n  url: {redis_url}\n")
    out = run("jobs", "--json", "-c", str(config))
    assert out.returncode == 0, out.stderr
    entry_id = future.decode() if isinstance(future, bytes) else str(future)
    assert out.stderr.splitlines() == [
        f"warning: skipped event {entry_id} in {keys.EVENT_STREAM}: schema_version 2 is not one this version "
        "reads (1)"
    ]
    assert [e["vmid"] for e in json.loads(out.stdout)] == [100, 102]
    table = run("jobs", "-c", str(config))
    assert table.returncode == 0 and "migrate-p-100" in table.stdout and "migrate-p-102" in table.stdout


def test_cancel_of_a_job_of_an_unknown_schema_is_one_line(real_redis: Redis, redis_url: str, tmp_path: Path) -> None:
    real_redis.hset(keys.job("migrate-p-100"), mapping={"payload": json.dumps({"schema_version": 2}),
                                                        "state": "queued"})
    config = tmp_path / "c.yaml"
    config.write_text(f"redis:\n  url: {redis_url}\n")
    line = one_error_line(run("cancel", "migrate-p-100", "-c", str(config)))
    assert "job migrate-p-100 cannot be read by this version" in line and "not cancelled" in line
    assert real_redis.hget(keys.job("migrate-p-100"), "state") == b"queued"


# --- 6. the demo ---------------------------------------------------------------------------------


def test_demo_uses_its_own_redis_and_honours_the_scenarios_pool_rules(tmp_path: Path) -> None:
    import os

    # REDIS_URL names a dead port: the demo must start a Redis of its own and hand it to the workers
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"}
    env.pop("PVEBALANCE_REDIS__URL", None)
    out = run("demo", "--scenario", "groups", "--time-scale", "0.01", "--timeout", "150", env=env, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = " ".join(out.stdout.split())  # rich wraps long lines
    assert "Redis at redis://127.0.0.1:1/0 does not answer" in text
    assert "Redis: redis-server" in text, "a redis-server binary on PATH is preferred to fakeredis"
    assert "pool ci (anti-affinity): 6 guests on 6 nodes" in text, text
    assert out.stdout.rstrip().endswith("balanced") and "not balanced" not in out.stdout


def test_demo_that_does_not_end_balanced_says_why_and_exits_1() -> None:
    out = run("demo", "--scenario", "all-on-one", "--timeout", "1", "--redis-url", "redis://127.0.0.1:1/0",
              timeout=120)
    assert out.returncode == 1
    lines = [line for line in out.stdout.splitlines() if "not balanced" in line]
    assert len(lines) == 1 and lines[0].startswith("not balanced: gave up after 1 s"), out.stdout


def test_demo_workers_get_the_chosen_redis_over_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from pvebalance.demo import worker_env
    from pvebalance.shared.config import load_settings

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    env = worker_env("redis://127.0.0.1:6390/0")
    assert env["PVEBALANCE_REDIS__URL"] == "redis://127.0.0.1:6390/0" and "REDIS_URL" not in env
    monkeypatch.setenv("PVEBALANCE_REDIS__URL", env["PVEBALANCE_REDIS__URL"])
    assert load_settings().redis.url == "redis://127.0.0.1:6390/0", "the variable wins over REDIS_URL"


def test_demo_redis_falls_back_to_fakeredis_without_a_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pvebalance.demo import embedded_redis

    server, what = embedded_redis.local_redis(tmp_path)
    try:
        assert isinstance(server, embedded_redis.RedisServerProcess) and what.startswith("redis-server ")
        assert Redis.from_url(server.url).ping()
    finally:
        server.stop()
    assert server.proc.poll() is not None, "stopped at the end"
    monkeypatch.setattr(embedded_redis.shutil, "which", lambda name: None)
    fallback, what = embedded_redis.local_redis(tmp_path)
    try:
        assert isinstance(fallback, embedded_redis.EmbeddedRedis) and "no redis-server on PATH" in what
        assert Redis.from_url(fallback.url).ping()
    finally:
        fallback.stop()


def test_config_cache_entries_of_another_shape_are_read_again(start_simulator: SimFactory,
                                                              fake_redis: Redis) -> None:
    sim = start_simulator("homelab")
    fake_redis.hset(keys.GUEST_CONFIG_CACHE, mapping={"100": "not json", "101": json.dumps({"fp": 1})})
    fake_redis.hset(keys.GUEST_LOAD, mapping={"100": "lots,of"})
    fake_redis.hset(keys.NODE_RRD, mapping={"pve1": "{}"})
    snap = Collector(ProxmoxClient(api_settings(sim)), fake_redis).snapshot()
    assert len(snap.guests) == 24
