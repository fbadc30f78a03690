"""`batchpredict jobs ...`: jobs in the local job store, or on a server with --server URL.

Locally each command calls the job service; with --server it calls the server's REST API through
`client.Client`. Either way it prints from the domain `Job` (`--json` prints the API's JSON).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson

from batchpredict.cli.common import err, fail, local_service
from batchpredict.cli.progress import ProgressBar, print_job, print_jobs_table
from batchpredict.cli.run import exit_with, run_here
from batchpredict.config import DEFAULT_LOCATION, Settings
from batchpredict.jobs import Job, JobState, RunsIn
from batchpredict.server.vertex.resource import job_from_resource, job_resource
from batchpredict.service import JobService, Scope, parse_job_id

__all__ = ["jobs"]

T = TypeVar("T")


@click.group()
def jobs() -> None:
    """Jobs: in the local job store, or on a server with --server URL (BATCHPREDICT_SERVER)."""


def _server_options(f: Any) -> Any:
    """--server/--token/--project/--location, each defaulting to a BATCHPREDICT_* variable."""
    f = click.option("--location", default=DEFAULT_LOCATION, envvar="BATCHPREDICT_LOCATION",
                     show_default=True, help="Location of the jobs.")(f)
    f = click.option("--project", default=None, envvar="BATCHPREDICT_PROJECT",
                     help="Project of the jobs [the token's default project].")(f)
    f = click.option("--token", default=None, envvar="BATCHPREDICT_TOKEN",
                     help="Access token of the server (BATCHPREDICT_TOKEN).")(f)
    f = click.option("--server", default=None, envvar="BATCHPREDICT_SERVER",
                     help="batchpredict server URL, e.g. http://127.0.0.1:8080.")(f)
    f = click.option("--data-dir", default=None,
                     help="Without --server: where the job store lives [~/.batchpredict].")(f)
    return f


def _client(command: str, server: str | None, token: str | None, project: str | None,
            location: str) -> Any:
    from batchpredict.client import Client

    if not server:
        fail(f"`batchpredict jobs {command}` needs a server: pass --server URL (or set "
             "BATCHPREDICT_SERVER), e.g. --server http://127.0.0.1:8080 after "
             "`batchpredict serve`. To run a job here instead, use `batchpredict run`.")
    return Client(str(server), token, project, location)


def _local(data_dir: str | None, call: Callable[[JobService], Awaitable[T]]) -> T:
    """Run one service call on the local job store."""

    async def go() -> T:
        service = local_service(Settings.from_env(data_dir=data_dir))
        try:
            return await call(service)
        finally:
            await service.close()

    return asyncio.run(go())


def _local_id(job_id: str, command: str) -> int:
    if not (job_id.isascii() and job_id.isdigit()):
        fail(f"{job_id!r} is not a job id: give its number, e.g. `batchpredict jobs {command} 3`.")
    return parse_job_id(job_id)


def _show(job: Job, raw: dict[str, Any] | None, as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(raw or job_resource(job), option=orjson.OPT_INDENT_2).decode())
    else:
        print_job(job)


@jobs.command("list")
@click.option("--filter", "filter_text", default=None,
              help='With --server: e.g. state="JOB_STATE_RUNNING" AND labels.team=ml.')
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@_server_options
def jobs_list(
    filter_text: str | None, as_json: bool, data_dir: str | None, server: str | None,
    token: str | None, project: str | None, location: str,
) -> None:
    """List jobs, newest first."""
    if server:
        items = list(_client("list", server, token, project, location).list(filter_text))
        found = [job_from_resource(j) for j in items]
    else:
        if filter_text:
            fail("--filter needs --server: the local job store lists every job.")
        found = _local(data_dir, _list_all)
        items = [job_resource(j) for j in found]
    if as_json:
        click.echo(orjson.dumps({"batchPredictionJobs": items}, option=orjson.OPT_INDENT_2))
    else:
        print_jobs_table(found)


async def _list_all(service: JobService) -> list[Job]:
    found: list[Job] = []
    token = ""
    while True:
        page, token = await service.list(Scope.local(), page_token=token, page_size=1000)
        found.extend(page)
        if not token:
            return found


@jobs.command("get")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@_server_options
def jobs_get(
    job_id: str, as_json: bool, data_dir: str | None, server: str | None, token: str | None,
    project: str | None, location: str,
) -> None:
    """Show one job (JOB_ID: its number, or its full name with --server)."""
    if server:
        raw = _client("get", server, token, project, location).get(job_id)
        _show(job_from_resource(raw), raw, as_json)
        return
    number = _local_id(job_id, "get")
    _show(_local(data_dir, lambda s: s.get(Scope.local(), number)), None, as_json)


@jobs.command("create")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", required=True,
              help="Output prefix: a folder, gs://... or s3://...; or bq://PROJECT.DATASET[.TABLE].")
@click.option("--model", "-m", default="gemini-2.5-flash", show_default=True, help="Model name.")
@click.option("--display-name", default=None, help="Job name shown in lists.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="A label (repeat).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@_server_options
def jobs_create(
    inputs: tuple[str, ...], output: str, model: str, display_name: str | None,
    labels: tuple[str, ...], as_json: bool, data_dir: str | None, server: str | None,
    token: str | None, project: str | None, location: str,
) -> None:
    """Create a job on the server from INPUT files (paths the server can read, gs://, s3://) or
    one BigQuery table (bq://PROJECT.DATASET.TABLE)."""
    from batchpredict.client import job_body

    label_map = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--label {item!r} is not KEY=VALUE, e.g. --label team=ml.")
        label_map[key] = value
    # The server reads the inputs: a relative path means nothing there.
    uris = [os.path.abspath(u) if "://" not in u else u for u in inputs]
    out_uri = os.path.abspath(output) if "://" not in output else output
    name = display_name or f"job-{time.strftime('%Y%m%d-%H%M%S')}"
    client = _client("create", server, token, project, location)
    raw = client.create(job_body(uris, out_uri, model, name, label_map))
    _show(job_from_resource(raw), raw, as_json)


@jobs.command("cancel")
@click.argument("job_id")
@_server_options
def jobs_cancel(
    job_id: str, data_dir: str | None, server: str | None, token: str | None,
    project: str | None, location: str,
) -> None:
    """Cancel a job: it ends CANCELLED, keeping every row completed so far."""
    if server:
        _client("cancel", server, token, project, location).cancel(job_id)
        err.print(f"Cancelling job {job_id}; `batchpredict jobs wait {job_id}` shows when it "
                  "ends.", highlight=False)
        return
    number = _local_id(job_id, "cancel")
    job = _local(data_dir, lambda s: s.cancel(Scope.local(), number))
    if job.state == JobState.JOB_STATE_CANCELLED:
        err.print(f"Cancelled job {job_id}.", highlight=False)
    else:
        err.print(f"Cancelling job {job_id}: its runner writes the completed rows, then it ends "
                  "CANCELLED.", highlight=False)


@jobs.command("delete")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON (an Operation).")
@_server_options
def jobs_delete(
    job_id: str, as_json: bool, data_dir: str | None, server: str | None, token: str | None,
    project: str | None, location: str,
) -> None:
    """Delete a finished job (its output files stay)."""
    if server:
        op = _client("delete", server, token, project, location).delete(job_id)
        if as_json:
            click.echo(orjson.dumps(op, option=orjson.OPT_INDENT_2).decode())
            return
    else:
        number = _local_id(job_id, "delete")
        _local(data_dir, lambda s: s.delete(Scope.local(), number))
    err.print(f"Deleted job {job_id}.", highlight=False)


@jobs.command("resume")
@click.argument("job_id")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_server_options
def jobs_resume(
    job_id: str, quiet: bool, data_dir: str | None, server: str | None, token: str | None,
    project: str | None, location: str,
) -> None:
    """Resume a job that failed because of its job store, storage or disk (or a `run` that was
    interrupted), from its committed rows: a `batchpredict run` job runs here, a server's job
    on its server."""
    if server:
        _client("resume", server, token, project, location).resume(job_id)
        err.print(f"Resumed job {job_id}: it runs on from its committed rows; `batchpredict "
                  f"jobs wait {job_id}` shows its progress.", highlight=False)
        return
    number = _local_id(job_id, "resume")
    final = _local(data_dir, lambda s: _resume_here(s, number, quiet))
    if final.runs_in == RunsIn.SCHEDULER:
        err.print(f"Resumed job {job_id}: the server running this job store's jobs runs it on "
                  "from its committed rows.", highlight=False)
        return
    exit_with(final, resume_command=f"batchpredict jobs resume {job_id}")


async def _resume_here(service: JobService, job_id: int, quiet: bool) -> Job:
    job = await service.get(Scope.local(), job_id)
    if not (job.runs_in == RunsIn.COMMAND and job.state == JobState.JOB_STATE_RUNNING):
        job = await service.resume(Scope.local(), job_id)  # an interrupted run needs no change
    if job.runs_in == RunsIn.SCHEDULER:
        return job
    return await run_here(service, job, quiet)


@jobs.command("wait")
@click.argument("job_id")
@click.option("--interval", type=float, default=2.0, show_default=True,
              help="Seconds between polls.")
@click.option("--json", "as_json", is_flag=True, help="Print the finished job's JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_server_options
def jobs_wait(
    job_id: str, interval: float, as_json: bool, quiet: bool, data_dir: str | None,
    server: str | None, token: str | None, project: str | None, location: str,
) -> None:
    """Wait for a job to finish, showing its progress; exit 0 if it SUCCEEDED, else 1."""
    client = _client("wait", server, token, project, location)
    with ProgressBar(quiet, label=f"job {job_id}") as bar:
        raw = client.wait(job_id, poll_seconds=interval,
                          on_update=lambda j: bar.show_job(job_from_resource(j)))
    final = job_from_resource(raw)
    _show(final, raw, as_json)
    sys.exit(0 if final.state == JobState.JOB_STATE_SUCCEEDED else 1)
