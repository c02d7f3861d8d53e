"""An operator's first hour (issue 22): the config the CLI reads, `status`, whole ids at 80 columns,
plurals, sizes in qm's units, a second pause, a drain asked twice, what "empty" leaves, the planner
alive metric, and `health api` on the configured port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from redis import Redis
from rich.console import Console
from typer.testing import CliRunner

from pvebalance.cli import UserError, app, config_file
from pvebalance.cli import base as cli_base
from pvebalance.cli.read import parse_size
from pvebalance.cli.render import print_plan
from pvebalance.engine import Policy, plan_balance
from pvebalance.services.planner.planner import Planner
from pvebalance.shared import keys
from pvebalance.shared.apidump import load_dump, snapshot_from_api
from pvebalance.shared.config import Settings
from pvebalance.shared.heartbeat import beat
from pvebalance.shared.jobs import MigrationJob, job_ids
from pvebalance.shared.jobstore import JobStore
from pvebalance.shared.models import ClusterSnapshot, Plan
from pvebalance.shared.plans import PlanState, PlanStatus, PlanStore
from pvebalance.shared.requests import OperatorRequest, RequestAction, RequestState, RequestStore
from tests.api_helpers import OPS, fake_app, settings_with_tokens

MIB, GIB = 2**20, 2**30


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvebalance", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


# --- which config file -------------------------------------------------------------------------------

def test_config_is_c_then_the_variable_then_etc_then_the_defaults_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    given, from_env, in_etc = tmp_path / "given.yaml", tmp_path / "env.yaml", tmp_path / "etc.yaml"
    monkeypatch.setattr(cli_base, "DEFAULT_CONFIG", in_etc)
    monkeypatch.setenv("PVEBALANCE_CONFIG", str(from_env))
    assert config_file(given) == given
    assert config_file(None) == from_env
    monkeypatch.delenv("PVEBALANCE_CONFIG")
    assert config_file(None) is None
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and warning.startswith("warning: no config file (-c, $PVEBALANCE_CONFIG or ")
    in_etc.write_text("redis:\n  url: redis://127.0.0.1:1/3\n")
    assert config_file(None) == in_etc
    assert capsys.readouterr().err == ""


def test_pvebalance_config_is_read_without_c(tmp_path: Path) -> None:
    config = tmp_path / "p.yaml"
    config.write_text("redis:\n  url: redis://127.0.0.1:1/7\n")
    out = run("plans", env={"PVEBALANCE_CONFIG": str(config)})
    assert out.returncode == 2
    assert out.stderr.strip() == "error: Redis at redis://127.0.0.1:1/7 does not answer: Error 111 connecting to " \
        "127.0.0.1:1. Connection refused." or out.stderr.startswith("error: Redis at redis://127.0.0.1:1/7 ")


# --- sizes as qm takes them ----------------------------------------------------------------------------

def test_a_bare_memory_is_mib_as_in_qm_set_and_a_bare_disk_is_refused_with_the_units() -> None:
    assert parse_size("8192", "--memory", bare="m") == 8 * GIB
    assert parse_size("8G", "--memory", bare="m") == parse_size("8GiB", "--memory", bare="m") == 8 * GIB
    assert parse_size("512M", "--memory", bare="m") == 512 * MIB
    with pytest.raises(UserError, match=r"^--disk '32': give a unit, e.g. 32G or 32M$"):
        parse_size("32", "--disk", bare=None)


def test_best_node_memory_8192_is_8_gib() -> None:
    bare = run("best-node", "--scenario", "all-on-one", "--memory", "8192", "--json")
    gib = run("best-node", "--scenario", "all-on-one", "--memory", "8G", "--json")
    assert bare.returncode == 0, bare.stderr
    assert json.loads(bare.stdout) == json.loads(gib.stdout) and json.loads(bare.stdout)["best"] is not None


# --- words ---------------------------------------------------------------------------------------------

def _plan() -> tuple[ClusterSnapshot, Plan]:
    snap = snapshot_from_api(load_dump("all-on-one")["api"]).model_copy(update={"taken_at": datetime.now(UTC)})
    return snap, plan_balance(snap, Policy())


def test_one_migration_is_said_in_the_singular() -> None:
    _, plan = _plan()
    one = plan.model_copy(update={"actions": plan.migrations[:1]})
    console = Console(record=True, width=100)
    print_plan(one, console)
    text = console.export_text()
    assert "1 migration, in order" in text and "\n1 migration, " in text
    assert "1 migrations" not in text


def test_an_infeasible_plan_is_not_said_to_need_nothing() -> None:
    _, plan = _plan()
    stuck = plan.model_copy(update={"actions": [], "outcome": "infeasible", "outcome_reason": "x"})
    console = Console(record=True, width=100)
    print_plan(stuck, console)
    text = console.export_text()
    assert "No migrations needed." not in text
    assert "No migrations: no safe move helps (infeasible; why below)." in text


# --- pause ---------------------------------------------------------------------------------------------

def _ask(planner: Planner, request: OperatorRequest) -> tuple[RequestState, str]:
    RequestStore(planner.redis).submit(request)
    planner.operator.poll()
    status = RequestStore(planner.redis).status(request.request_id)
    assert status is not None
    return status.state, status.reason


def test_a_second_pause_extends_or_is_refused_and_never_drops_the_reason(fake_redis: Redis) -> None:
    planner = Planner(fake_redis, Settings())
    planner.operator.ensure_group()
    pause = RequestAction.PAUSE
    state, _ = _ask(planner, OperatorRequest(action=pause, seconds=7200, reason="patching", who="alice"))
    assert state is RequestState.DONE
    until = json.loads(fake_redis.get(keys.PAUSED))["until"]
    state, reason = _ask(planner, OperatorRequest(action=pause, seconds=1800, who="bob"))
    assert state is RequestState.REFUSED
    assert "by alice (patching): this pause would end sooner; `resume` first, or pause for longer" in reason
    held = json.loads(fake_redis.get(keys.PAUSED))
    assert (held["until"], held["reason"], held["who"]) == (until, "patching", "alice")
    assert fake_redis.ttl(keys.PAUSED) > 7000
    state, reason = _ask(planner, OperatorRequest(action=pause, seconds=3 * 3600, who="bob"))
    assert state is RequestState.DONE and reason.startswith("pause extended until ") and reason.endswith("(patching)")
    held = json.loads(fake_redis.get(keys.PAUSED))
    assert held["reason"] == "patching" and held["until"] > until + 3000 and fake_redis.ttl(keys.PAUSED) > 10000
    state, _ = _ask(planner, OperatorRequest(action=pause, who="carol", reason="freeze"))  # until resume: longer
    assert state is RequestState.DONE and fake_redis.ttl(keys.PAUSED) == -1
    assert json.loads(fake_redis.get(keys.PAUSED))["reason"] == "freeze"
    state, reason = _ask(planner, OperatorRequest(action=pause, seconds=60, who="dave"))
    assert state is RequestState.REFUSED and reason.startswith("balancing is paused until `resume` by carol (freeze)")


# --- drain twice, and what "empty" leaves ---------------------------------------------------------------

def _with(snap: ClusterSnapshot, **changes: dict[int, dict[str, object]]) -> ClusterSnapshot:
    guests = [g.model_copy(update=changes["guests"].get(g.vmid, {})) for g in snap.guests]
    return snap.model_copy(update={"guests": guests, "taken_at": datetime.now(UTC)})


def test_a_drain_of_a_draining_node_follows_it_and_empty_says_what_stays(fake_redis: Redis) -> None:
    snap, _ = _plan()
    on_pve1 = sorted(g.vmid for g in snap.guests if g.node == "pve1")
    stopped = {on_pve1[-1]: {"status": "stopped"}, on_pve1[-2]: {"status": "stopped"}}
    snap = _with(snap, guests=stopped)
    planner = Planner(fake_redis, Settings(planner={"settle_seconds": 0}))
    planner.operator.ensure_group()
    fake_redis.set(keys.SNAPSHOT_LATEST, snap.model_dump_json())
    first = OperatorRequest(action=RequestAction.DRAIN, node="pve1", who="alice")
    state, reason = _ask(planner, first)
    assert state is RequestState.ACCEPTED, reason
    assert reason.endswith("; 2 stopped guests stay on it (`drain --include-stopped` moves them)")
    # its own migrations lock the guests: a fresh drain check would refuse ("locked (migrate)")
    moving = _with(snap, guests={v: {"lock": "migrate"} for v in on_pve1[:3]} | stopped)
    fake_redis.set(keys.SNAPSHOT_LATEST, moving.model_dump_json())
    second = OperatorRequest(action=RequestAction.DRAIN, node="pve1", who="bob")
    state, reason = _ask(planner, second)
    assert state is RequestState.ACCEPTED, reason
    assert f"(request {first.request_id}); following that drain: 38 guests left to move;" in reason
    first_status = RequestStore(fake_redis).status(first.request_id)
    assert first_status is not None and RequestStore(fake_redis).status(second.request_id).plan_id == \
        first_status.plan_id
    emptied = _with(snap, guests={v: {"node": "pve2"} for v in on_pve1[:-2]} | stopped)
    planner.operator.settle_drains(emptied)
    for request in (first, second):
        status = RequestStore(fake_redis).status(request.request_id)
        assert status is not None and (status.state, status.reason) == (RequestState.DONE, (
            "pve1 is empty of running guests; 2 stopped guests stay on it (`drain --include-stopped` moves them)"))


# --- the planner alive metric, health api ----------------------------------------------------------------

def test_one_planner_counts_one_though_it_beats_and_reads_the_stream() -> None:
    from tests.unit.test_api_metrics import scrape, value

    app_, redis = fake_app(settings_with_tokens())
    planner = Planner(redis, Settings())
    planner.ensure_group()
    beat(redis, "planner")
    planner.next_snapshot(block_ms=1)  # a live consumer of the snapshot stream, as a running planner is
    with TestClient(app_) as client:
        assert value(scrape(client), "pvebalance_service_alive", service="planner") == 1
        assert client.get("/readyz", headers=OPS).json()["planners"]  # both signs still shown


def test_health_api_checks_the_configured_port(tmp_path: Path) -> None:
    class Healthz(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    config = tmp_path / "api.yaml"
    config.write_text(yaml.safe_dump({"api": {"port": port}}))
    try:
        result = CliRunner().invoke(app, ["health", "api", "-c", str(config)])
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    assert result.output == f"healthy: api (http://127.0.0.1:{port}/healthz answered 200)\n"


# --- status and whole ids at 80 columns (a real Redis, the CLI as a process) -------------------------------

@pytest.mark.integration
def test_status_and_tables_at_80_columns_keep_every_id_whole(real_redis: Redis, redis_url: str,
                                                              tmp_path: Path) -> None:
    _, plan = _plan()
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump({"redis": {"url": redis_url}, "balancing": {"mode_of_operation": "manual"}}))
    planner = Planner(real_redis, Settings(redis={"url": redis_url}, balancing={"mode_of_operation": "manual"}))
    planner.operator.ensure_group()
    planner.publish_mode()
    PlanStore(real_redis).save(plan, PlanStatus(plan_id=plan.plan_id, state=PlanState.RUNNING, reason="3 jobs"))
    jobs = JobStore(real_redis)
    for m, job_id in list(zip(plan.migrations, job_ids(plan), strict=True))[:3]:
        jobs.create(MigrationJob(job_id=job_id, plan_id=plan.plan_id, vmid=m.vmid, name=m.name, guest_type=m.type,
                                 source=m.source, target=m.target, online=m.online, mem_bytes=m.mem_bytes))
    _ask(planner, OperatorRequest(action=RequestAction.PAUSE, seconds=3600, reason="patching", who="alice"))
    real_redis.hset(keys.DRAINED, "pve4", json.dumps({"request_id": "req-1", "who": "bob", "at": time.time()}))
    narrow = {"COLUMNS": "80", "PVEBALANCE_CONFIG": str(config)}

    def lines(*args: str) -> list[str]:
        out = run(*args, env=narrow)
        assert out.returncode == 0, out.stderr
        assert all(len(line) <= 80 for line in out.stdout.splitlines()), out.stdout
        return out.stdout.splitlines()

    assert any(plan.plan_id in line.split() for line in lines("plans"))
    for job_id in job_ids(plan)[:3]:
        assert any(job_id in line.split() for line in lines("jobs")), job_id
    requests = RequestStore(real_redis).recent()
    assert all(any(s.request.request_id in line.split() for line in lines("requests")) for s in requests)
    text = "\n".join(lines("status"))
    flat = " ".join(text.split())  # lines wrap at 80 columns
    assert "mode: manual: plans wait for `pvebalance approve` (as the running planner reports it)" in flat
    assert "paused: by alice since " in flat and "min left): patching" in flat
    assert "drained: pve4 (by bob since " in flat
    assert f"plan: {plan.plan_id}, made " in flat and ": running (3 jobs)" in flat
    assert "jobs: 3 active jobs" in flat
    assert all(any(job_id in line.split() for line in text.splitlines()) for job_id in job_ids(plan)[:3])
    data = json.loads(run("status", "--json", env=narrow).stdout)
    assert data["mode"] == {"mode_of_operation": "manual", "enable": True, "from": "planner"}
    assert (data["paused"]["who"], data["paused"]["reason"]) == ("alice", "patching")
    assert [d["node"] for d in data["drained"]] == ["pve4"]
    assert (data["plan"]["plan_id"], data["plan"]["state"]) == (plan.plan_id, "running")
    assert sorted(j["job_id"] for j in data["active_jobs"]) == sorted(job_ids(plan)[:3])
