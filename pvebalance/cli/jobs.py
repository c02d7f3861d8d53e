"""`jobs` and `cancel`: the migration jobs in Redis, as the job store keeps them."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from .base import ConfigOpt, UserError, app, err, read_events, settings_of


@app.command()
def jobs(
    job_id: Annotated[str | None, typer.Argument(help="show this job with all its events")] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Migration jobs not yet ended, and the latest state of recent ones."""
    from pvebalance.shared.jobstore import JobStore
    from pvebalance.shared.redisconn import connect

    from .tables import compact, id_column, plural, text_columns, when

    redis = connect(settings_of(config).redis)
    store = JobStore(redis)
    events = [e for _, e in read_events(redis, count=10_000)]
    if job_id is not None:
        record = store.load(job_id)
        if not record:
            raise UserError(f"no job {job_id} (`pvebalance jobs` lists them)")
        mine = [e for e in events if e.job_id == job_id]
        if as_json:
            doc = {"job": dict(record.fields), "events": [e.model_dump(mode="json") for e in mine]}
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
            return
        console = Console()
        for field, value in sorted(record.fields.items()):
            console.print(f"{field}: {value}", markup=False, highlight=False)
        table = compact(plural(len(mine), "event"))
        text_columns(table, "at", "state", "upid", "message")
        for e in mine:
            table.add_row(f"{e.at.astimezone():%H:%M:%S.%f}"[:-3], e.state.value, e.upid or "", e.message)
        console.print(table)
        return
    latest = {e.job_id: e for e in events}
    rows = sorted(latest.values(), key=lambda e: e.at)
    if as_json:
        sys.stdout.write(json.dumps([e.model_dump(mode="json") for e in rows], indent=2) + "\n")
        return
    table = compact(f"{plural(len(store.active_jobs()), 'active job')}, {plural(len(rows), 'recent job')}")
    id_column(table, "job", [e.job_id for e in rows])
    text_columns(table, "vmid", "move", "state", "at", "message", right=("vmid",), whole=("at", "move"))
    for e in rows:
        table.add_row(e.job_id, str(e.vmid), f"{e.source} -> {e.target}", e.state.value, when(e.at), e.message)
    Console().print(table)


@app.command()
def cancel(job_id: Annotated[str, typer.Argument(help="a job id, as `pvebalance jobs` shows it")],
           config: ConfigOpt = None) -> None:
    """Cancel a migration job that has not started migrating yet."""
    from pvebalance.shared.jobs import JobState
    from pvebalance.shared.jobstore import JobStore
    from pvebalance.shared.redisconn import connect

    try:
        state = JobStore(connect(settings_of(config).redis)).cancel(job_id)
    except ValidationError as exc:  # a job written by a version whose schema this one does not know
        first = exc.errors(include_url=False)[0]
        raise UserError(f"job {job_id} cannot be read by this version of pvebalance "
                        f"({'.'.join(str(p) for p in first['loc']) or 'job'}: {first['msg']}); not cancelled") from None
    if state is None:
        raise UserError(f"no job {job_id}")
    if state is not JobState.CANCELLED:
        raise UserError(f"job {job_id} is {state.value}: only queued or waiting jobs can be cancelled")
    err.print(f"job {job_id} cancelled", highlight=False)


