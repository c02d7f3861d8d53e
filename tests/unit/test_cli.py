"""The `pvebalance` command as an operator runs it."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from pvebalance.shared.apidump import load_dump, snapshot_from_api
from tests.helpers import REPO


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvebalance", *args], capture_output=True, text=True, timeout=120)


def test_plan_json_runs_in_order_to_the_target_without_overloading() -> None:
    scenario = REPO / "pvebalance" / "scenarios" / "all-on-one.json"
    out = run("plan", "--scenario", str(scenario), "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert {"method", "mode", "balanciness", "before", "after", "migrations", "violations", "unmet"} <= set(plan)
    assert (plan["method"], plan["mode"], plan["balanciness"]) == ("memory", "used", 5.0)
    assert set(plan["before"]) == {"spread_pp", "nodes", "dimensions"}
    # one dimension: its own entry says what spread_pp and nodes say
    assert plan["before"]["dimensions"] == {"memory": {"spread_pp": plan["before"]["spread_pp"],
                                                       "nodes": plan["before"]["nodes"]}}
    assert plan["bands"] == {"memory": 5.0}
    for m in plan["migrations"]:
        assert {"vmid", "name", "type", "source", "target", "reason"} <= set(m)
    # replay the moves, in the printed order, on the recorded memory figures
    snap = snapshot_from_api(load_dump(scenario)["api"])
    used = {n.name: n.mem for n in snap.nodes}
    cap = {n.name: n.maxmem for n in snap.nodes}
    mem = {g.vmid: g.mem for g in snap.guests}
    where = {g.vmid: g.node for g in snap.guests}
    for m in plan["migrations"]:
        assert where[m["vmid"]] == m["source"]
        used[m["source"]] -= mem[m["vmid"]]
        used[m["target"]] += mem[m["vmid"]]
        where[m["vmid"]] = m["target"]
        assert max(100 * used[n] / cap[n] for n in used) <= 95
    percents = [100 * used[n] / cap[n] for n in used]
    assert max(percents) - min(percents) <= 5


def test_plan_options_override_the_policy() -> None:
    out = run("plan", "--scenario", "all-on-one", "--json", "--method", "cpu", "--mode", "assigned",
              "--balanciness", "10")
    plan = json.loads(out.stdout)
    assert (plan["method"], plan["mode"], plan["balanciness"]) == ("cpu", "assigned", 10.0)


def test_plan_table_is_readable() -> None:
    out = run("plan", "--scenario", "all-on-one")
    assert out.returncode == 0
    assert "spread (pp)" in out.stdout and "migrations, in order" in out.stdout


def on_a_terminal(*args: str) -> tuple[int, bytes]:
    """`pvebalance ARGS` with a terminal for its stdout and stderr, as an operator's shell gives it:
    its exit code and all it wrote there."""
    leader, follower = pty.openpty()
    with subprocess.Popen([sys.executable, "-m", "pvebalance", *args], stdin=subprocess.DEVNULL, stdout=follower,
                          stderr=follower) as proc:
        os.close(follower)
        written = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal is closed once the command has exited
                break
            if not chunk:
                break
            written += chunk
        code = proc.wait(timeout=120)
    os.close(leader)
    return code, written


def test_plan_says_what_it_plans_on_a_terminal_and_erases_it_after() -> None:
    code, written = on_a_terminal("plan", "--scenario", "homelab", "--method", "memory,cpu")
    assert code == 0, written
    said = written.index(b"planning 24 guests on 3 nodes by memory, cpu")
    erased = written.index(b"\x1b[2K", said)  # the line cleared before the plan is printed
    assert written.index(b"migrations, in order") > erased


def test_plan_writes_nothing_to_stderr_where_it_is_not_a_terminal() -> None:
    out = run("plan", "--scenario", "homelab", "--json")
    assert out.returncode == 0
    assert out.stderr == ""
    json.loads(out.stdout)


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("balancing:\n  balanciness: -1\n")
    cases = [
        ("plan", "--scenario", "no-such-cluster"),
        ("plan", "--scenario", "all-on-one", "--config", str(bad)),
        ("plan", "--scenario", "all-on-one", "--method", "ram"),
        ("collector", "--config", str(tmp_path / "missing.yaml")),
    ]
    for args in cases:
        out = run(*args)
        assert out.returncode == 2, args
        assert "Traceback" not in out.stderr
        assert out.stderr.startswith("error: "), out.stderr
        assert len(out.stderr.splitlines()) == 1, out.stderr
    out = run("plan", "--scenario", "all-on-one", "--config", str(bad))
    assert "balancing.balanciness" in out.stderr


def test_unreachable_redis_is_a_clear_error(tmp_path: Path) -> None:
    # Commands fail fast; the services (planner, collector, migrator) wait for Redis instead.
    cfg = tmp_path / "c.yaml"
    cfg.write_text("redis:\n  url: redis://127.0.0.1:1/0\n")
    for args in (["jobs"], ["cancel", "migrate-x-100"]):
        out = run(*args, "--config", str(cfg))
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: Redis at redis://127.0.0.1:1/0 does not answer")


def test_an_error_stays_one_line_however_long(tmp_path: Path) -> None:
    # rich wraps at 80 columns when stderr is not a terminal; an error must not be cut into lines
    bad = tmp_path / ("a-rather-long-directory-name-" * 3)
    bad.mkdir()
    cfg = bad / "config.yaml"
    cfg.write_text("balancing:\n  balanciness: -1\n  method: ram\n  balancyness: 3\n")
    out = run("plan", "--scenario", "all-on-one", "--config", str(cfg))
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
    for key in ("balancing.balanciness", "balancing.method", "balancing.balancyness: unknown key"):
        assert key in out.stderr
