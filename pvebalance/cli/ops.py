"""Operator commands: drain, undrain, pause, resume, approve, reject, rebalance.

Each writes one request to the planner's request stream and waits for the planner's answer; none
changes a plan or a job itself (the planner is the only writer of plans). A refused request prints
one line, `error: ...`, and exits 2; nothing was changed.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pvebalance.shared import keys
from pvebalance.shared.config import PlannerSettings
from pvebalance.shared.heartbeat import alive
from pvebalance.shared.jobrecord import JobRecord
from pvebalance.shared.jobs import JobState, job_ids
from pvebalance.shared.models import Plan
from pvebalance.shared.planner_mode import published
from pvebalance.shared.requests import OperatorRequest, RequestAction, RequestState, RequestStatus, RequestStore
from pvebalance.shared.words import actions_in_words

from .base import ConfigOpt, UserError, app, err, settings_of
from .render import print_plan

if TYPE_CHECKING:
    from redis import Redis

JsonOpt = Annotated[bool, typer.Option("--json", help="print the request's final status as JSON")]
ANSWER_TIMEOUT = 30.0  # seconds the planner has to take a request on ...
# ... unless it says it is in a long step (a plan of a large cluster takes a minute or more, and the request is
# taken on after it): then up to planner.max_step_seconds's default, past which a planner in one step counts as
# hung and stops beating anyway.
BUSY_TIMEOUT: float = PlannerSettings.model_fields["max_step_seconds"].default


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} (cli)"


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '2h', '1d' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"--for {text!r}: give a duration such as 90s, 15m, 2h or 1d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def ask(redis: Redis, request: OperatorRequest, timeout: float = ANSWER_TIMEOUT,
        busy_timeout: float = BUSY_TIMEOUT) -> RequestStatus:
    """Submit the request and wait until the planner has answered it (any state but pending): `timeout`
    seconds, or up to `busy_timeout` while the planner says it is in a long step (it takes the request on
    after that plan; a line on stderr says so). A planner that beats says so within a third of its
    heartbeat's life of the step's start, so one that beats is given that long past `timeout` to say it."""
    store = RequestStore(redis)
    store.submit(request)
    started = time.monotonic()
    said = False
    while True:
        status = store.status(request.request_id)
        if status is not None and status.state != RequestState.PENDING:
            return status
        waited = time.monotonic() - started
        if waited >= timeout:
            busy_since = _planner_busy_since(redis)
            if busy_since is None:
                if waited >= timeout + keys.HEARTBEAT_TTL / 3 or not alive(redis, "planner"):
                    break
            elif waited >= busy_timeout:
                break
            elif not said:
                err.print(f"the planner has been planning for {max(time.time() - busy_since, 0):.0f} s; the "
                          "request is taken on after that plan: waiting")
                said = True
        time.sleep(0.2)
    raise UserError(f"the planner did not answer within {time.monotonic() - started:.0f} s (is it running?); "
                    f"request {request.request_id} stays queued and will be handled when it starts")


def _planner_busy_since(redis: Redis) -> float | None:
    """When the leading planner's step under way began, if it says it is in a long one."""
    mode = published(redis)
    return mode.busy_since if mode is not None else None


def answered(status: RequestStatus, as_json: bool) -> RequestStatus:
    """Print the answer; a refused request is an error (exit 2)."""
    if as_json and status.state != RequestState.ACCEPTED:
        sys.stdout.write(status.model_dump_json(indent=2) + "\n")
    if status.state == RequestState.REFUSED:
        details = f": {'; '.join(status.details)}" if status.details else ""
        if as_json:
            raise typer.Exit(2)
        raise UserError(f"{status.request.action.value} refused: {status.reason}{details}")
    if not as_json:
        err.print(f"{status.request.action.value} {status.state.value}: {status.reason}", highlight=False,
                  markup=False)
    return status


def _redis(config: Any) -> Redis:
    from pvebalance.shared.redisconn import connect

    return connect(settings_of(config).redis)


@app.command()
def drain(
    node: Annotated[str, typer.Argument(help="the node to empty")],
    wait: Annotated[bool, typer.Option("--wait", help="follow the drain; exit 0 when the node is empty, 1 if a "
                                                      "move failed")] = False,
    include_stopped: Annotated[bool, typer.Option("--include-stopped", help="move stopped guests too")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    timeout: Annotated[float, typer.Option(help="--wait gives up after this many seconds")] = 3600.0,
) -> None:
    """Empty a node for maintenance and hold it empty until `undrain`. Refused, with nothing moved, when
    the other nodes cannot take all of its guests."""
    redis = _redis(config)
    status = answered(ask(redis, OperatorRequest(action=RequestAction.DRAIN, node=node, who=who(),
                                                  include_stopped=include_stopped)), as_json)
    if wait and status.state == RequestState.ACCEPTED:
        status = follow_request(redis, status.request.request_id, timeout, as_json)
    elif as_json and status.state == RequestState.ACCEPTED:
        sys.stdout.write(status.model_dump_json(indent=2) + "\n")
    if status.state == RequestState.FAILED:
        if not as_json:
            for line in status.details:
                err.print(f"  failed: {line}", highlight=False, markup=False)
        raise typer.Exit(1)


def follow_request(redis: Redis, request_id: str, timeout: float, as_json: bool) -> RequestStatus:
    """Show a drain's moves as they end, until the request ends: a progress bar on a terminal, else one
    line per finished move (a log or a pipe gets no bar, and must not wait silently for an hour)."""
    from pvebalance.shared.jobstore import JobStore
    from pvebalance.shared.plans import PlanStore

    store, jobs, plans = RequestStore(redis), JobStore(redis), PlanStore(redis)
    deadline = time.monotonic() + timeout
    console = Console(stderr=True)
    lines = not as_json and not console.is_terminal
    reported: set[str] = set()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=as_json or lines) as progress:
        bar = progress.add_task("waiting for the drain to be planned", total=None)
        while True:
            status = store.status(request_id)
            if status is None:
                raise UserError(f"request {request_id} is gone from Redis (expired, or Redis lost its data)")
            plan = plans.plan(status.plan_id) if status.plan_id else None
            if plan is not None:
                ids = job_ids(plan)
                records = jobs.load_many(ids)
                progress.update(bar, total=len(records), completed=sum(r.terminal for r in records),
                                description=f"draining {status.request.node}")
                for m, job_id, record in zip(plan.actions, ids, records, strict=True):
                    if lines and record.terminal and job_id not in reported:
                        reported.add(job_id)
                        err.print(f"[{len(reported)}/{len(ids)}] {m.describe()}: "
                                  f"{ended_text(record)}", highlight=False, markup=False)
            if status.state.final:
                break
            if time.monotonic() > deadline:
                raise UserError(f"the drain of {status.request.node} did not end within {timeout:g} s; it goes on "
                                f"(`pvebalance requests {request_id}`)")
            time.sleep(0.5)
    if as_json:
        sys.stdout.write(status.model_dump_json(indent=2) + "\n")
    else:
        err.print(f"drain {status.state.value}: {status.reason}", highlight=False, markup=False)
    return status


def ended_text(record: JobRecord) -> str:
    """A finished job in a few words: 'succeeded in 42 s', 'failed: <why>'."""
    state, message, took = record.fields.get("state", "?"), record.message, record.duration_s
    if record.state is JobState.SUCCEEDED:
        return f"succeeded in {took:.0f} s" if took is not None else "succeeded"
    return f"{state}: {message}" if message else state


@app.command()
def undrain(node: Annotated[str, typer.Argument(help="a drained node")], config: ConfigOpt = None,
            as_json: JsonOpt = False) -> None:
    """Let a drained node take guests again."""
    answered(ask(_redis(config), OperatorRequest(action=RequestAction.UNDRAIN, node=node, who=who())), as_json)


@app.command()
def pause(
    duration: Annotated[str | None, typer.Option("--for", help="e.g. 30m, 2h (default: until `resume`)")] = None,
    reason: Annotated[str, typer.Option(help="why, shown to other operators")] = "",
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop making balancing plans (drains still run; running migrations finish)."""
    seconds = parse_duration(duration) if duration else None
    answered(ask(_redis(config), OperatorRequest(action=RequestAction.PAUSE, seconds=seconds, reason=reason,
                                                 who=who())), as_json)


@app.command()
def resume(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Make balancing plans again after `pause`."""
    answered(ask(_redis(config), OperatorRequest(action=RequestAction.RESUME, who=who())), as_json)


@app.command()
def approve(
    plan_id: Annotated[str, typer.Argument(help="a recommended plan, as `pvebalance plans` lists it")],
    moves: Annotated[str | None, typer.Option(help="only these guests' moves: VMID,VMID,...")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a recommended plan (manual mode), or some of its moves."""
    vmids = _vmids(moves) if moves is not None else None
    answered(ask(_redis(config), OperatorRequest(action=RequestAction.APPROVE, plan_id=plan_id, vmids=vmids,
                                                 who=who())), as_json)


@app.command()
def reject(
    plan_id: Annotated[str, typer.Argument(help="a recommended plan")],
    reason: Annotated[str, typer.Option(help="why, kept with the plan's state (`pvebalance plans`)")] = "",
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Drop a recommended plan."""
    answered(ask(_redis(config), OperatorRequest(action=RequestAction.REJECT, plan_id=plan_id, reason=reason,
                                                 who=who())), as_json)


def _vmids(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--moves {text!r}: give guest ids separated by commas, e.g. 101,102") from None


@app.command()
def rebalance(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the plan; run nothing")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="run it without asking")] = False,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan and the jobs' outcome as JSON")] = False,
    timeout: Annotated[float, typer.Option(help="give up following after this many seconds")] = 3600.0,
) -> None:
    """Plan now on the latest snapshot, show the plan, ask, run it and follow it to the end.

    Exit codes: 0 done or nothing to do, 1 some moves failed, 2 bad input or refused."""
    from pvebalance.shared.plans import PlanStore

    redis = _redis(config)
    status = answered(ask(redis, OperatorRequest(action=RequestAction.REBALANCE, dry_run=dry_run, who=who())),
                      as_json=False)
    plan = PlanStore(redis).plan(status.plan_id or "")
    if plan is None:
        raise UserError(f"plan {status.plan_id} is gone from Redis")
    if not as_json:
        print_plan(plan, Console())
    if not plan.actions or dry_run:
        if as_json:
            sys.stdout.write(json.dumps({"plan": plan.model_dump(mode="json"), "jobs": {}}, indent=2) + "\n")
        if plan.outcome == "infeasible" and not dry_run:
            raise UserError(f"no safe plan: {plan.outcome_reason}")
        if not as_json:
            err.print("nothing to do: " + plan.outcome_reason if not plan.actions else "dry run: nothing was run",
                      highlight=False, markup=False)
        return
    if not yes:
        if not sys.stdin.isatty():
            raise UserError("not asking on a non-interactive input: add --yes to run the plan")
        said = actions_in_words(plan.actions)
        if not typer.confirm(f"Run {'this' if len(plan.actions) == 1 else 'these'} {said}?"):
            raise typer.Exit(0)
    answered(ask(redis, OperatorRequest(action=RequestAction.APPROVE, plan_id=plan.plan_id, who=who())), as_json=False)
    outcome = follow_plan(redis, plan, timeout, as_json)
    failed = {job_id: s for job_id, s in outcome.items() if s != "succeeded"}
    if as_json:
        sys.stdout.write(json.dumps({"plan": plan.model_dump(mode="json"),
                                     "jobs": outcome}, indent=2) + "\n")
    if failed:
        if not as_json:
            for job_id, state in sorted(failed.items()):
                err.print(f"  {job_id}: {state}", highlight=False, markup=False)
        raise typer.Exit(1)


def follow_plan(redis: Redis, plan: Plan, timeout: float, as_json: bool) -> dict[str, str]:
    """Follow a plan's jobs with a progress bar until each has ended; job id -> final state (+ message)."""
    from pvebalance.shared.jobstore import JobStore

    jobs = JobStore(redis)
    deadline = time.monotonic() + timeout
    ended: dict[str, str] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=as_json) as progress:
        bar = progress.add_task("migrating", total=len(plan.actions))
        while len(ended) < len(plan.actions):
            for job_id in job_ids(plan):
                record = jobs.load(job_id)
                if record.state is not None and record.terminal and job_id not in ended:
                    state = record.state.value
                    ended[job_id] = state if record.state is JobState.SUCCEEDED else f"{state}: {record.message}"
            progress.update(bar, completed=len(ended))
            if time.monotonic() > deadline:
                raise UserError(f"the plan's jobs did not end within {timeout:g} s; "
                                "they go on (`pvebalance jobs`)")
            time.sleep(0.5)
    if not as_json:
        ok = sum(1 for s in ended.values() if s == "succeeded")
        err.print(f"{ok} of {actions_in_words(plan.actions)} succeeded", highlight=False)
    return ended

