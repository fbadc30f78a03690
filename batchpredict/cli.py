"""The `batchpredict` command.

    batchpredict run INPUT... --output PREFIX [--model NAME]   create and run a job here
    batchpredict serve [--host H --port P]                      the REST API and its scheduler
    batchpredict jobs list|get                                  read the job store
    batchpredict jobs create|get|list|cancel|delete|wait --server URL   call a server
    batchpredict models list|pull                               the model registry

Errors are printed as one sentence that says what to do, never a traceback; exit codes: 0 job
SUCCEEDED, 1 job FAILED or CANCELLED, 2 bad usage or input, 130 interrupted (resumable).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import time
from typing import Any

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from batchpredict.config import Settings
from batchpredict.errors import BatchPredictError
from batchpredict.jobs import Job, JobState, owner_id, utcnow
from batchpredict.output import ChunkedOutput
from batchpredict.runner import JobRunner
from batchpredict.runner import Progress as RunProgress
from batchpredict.store import open_store

__all__ = ["main"]

err = Console(stderr=True)
out = Console()


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)  # one line
    sys.exit(code)


class _Group(click.Group):
    """Turns our errors into one line and an exit code instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatchPredictError as exc:
            _fail(exc.message)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchpredict")
def main() -> None:
    """Vertex AI batch prediction, self-hosted: JSONL of Gemini requests in, predictions out."""


def load_registry(settings: Settings) -> Any:
    from batchpredict.backends.registry import ModelRegistry

    if settings.models_file:
        return ModelRegistry.load(settings.models_file)
    return ModelRegistry.default()


def _fingerprint(inputs: list[str], output: str, model: str) -> str:
    norm = [os.path.abspath(u) if "://" not in u else u for u in inputs]
    out_norm = os.path.abspath(output) if "://" not in output else output
    return hashlib.sha256(orjson.dumps([norm, out_norm, model])).hexdigest()


# -- run ------------------------------------------------------------------------------------
@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", required=True, help="Output prefix: a folder, gs://... or s3://...")
@click.option("--model", "-m", default="smollm2-135m", show_default=True, help="Model name.")
@click.option("--display-name", default=None, help="Job name shown in lists.")
@click.option("--data-dir", default=None, help="Where the job store lives [~/.batchpredict].")
@click.option("--chunk-rows", type=int, default=None, help="Export a chunk every N rows.")
@click.option("--chunk-seconds", type=float, default=None, help="...or every N seconds.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def run(
    inputs: tuple[str, ...],
    output: str,
    model: str,
    display_name: str | None,
    data_dir: str | None,
    chunk_rows: int | None,
    chunk_seconds: float | None,
    quiet: bool,
) -> None:
    """Run a batch job on INPUT files (JSONL, paths or wildcards) and write predictions.

    Running the same command again after a crash or Ctrl-C resumes the same job.
    """
    settings = Settings.from_env(
        data_dir=data_dir, chunk_rows=chunk_rows, chunk_seconds=chunk_seconds
    )
    registry = load_registry(settings)
    registry.resolve(model)
    store = open_store(settings)
    fp = _fingerprint(list(inputs), output, model)
    job = store.find_by_fingerprint(fp)
    if job is not None:
        done = job.counts.done
        if job.output_dir:  # the chunks are the truth (a kill can precede a checkpoint)
            done = ChunkedOutput(job.output_dir).committed()[0]
        err.print(
            f"Resuming job {job.id} ({done} rows already done) into {job.output_dir}",
            highlight=False,
        )
    else:
        job = store.create(
            Job(
                display_name=display_name or f"run-{time.strftime('%Y%m%d-%H%M%S')}",
                model=model,
                input_uris=list(inputs),
                output_prefix=output,
                fingerprint=fp,
                # owned from birth, so a server sharing this store never schedules it
                owner=owner_id(),
                heartbeat=utcnow(),
            )
        )
        err.print(f"Created job {job.id}", highlight=False)
    final = asyncio.run(_run_job(store, registry, job, settings, quiet))
    _print_summary(final)
    if final.state == JobState.JOB_STATE_RUNNING:
        err.print("Interrupted. Run the same command again to resume.")
        sys.exit(130)
    sys.exit(0 if final.state == JobState.JOB_STATE_SUCCEEDED else 1)


async def _run_job(store: Any, registry: Any, job: Job, settings: Settings, quiet: bool) -> Job:
    interrupt = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        if interrupt.is_set():
            os._exit(130)  # second Ctrl-C: the chunks already written are safe
        err.print("\nStopping: writing completed rows (Ctrl-C again to quit now)...")
        interrupt.set()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    loop.add_signal_handler(signal.SIGTERM, on_sigint)
    with _ProgressBar(quiet) as bar:
        with err.status(f"Loading model {job.model}...", spinner="dots") if not quiet else _null():
            backend = await registry.backend_for(job.model)
        runner = JobRunner(
            store, job, backend, settings.runner_settings(), on_progress=bar.update,
            interrupt=interrupt,
        )
        try:
            return await runner.run()
        finally:
            await registry.close()


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class _ProgressBar:
    """rows, rows/s, tokens/s and ETA, for `run` and `jobs wait`; rates count the rows done
    since the bar appeared."""

    def __init__(self, quiet: bool, label: str = "predict") -> None:
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.completed:,.0f}/{task.fields[total_text]} rows"),
            TextColumn("{task.fields[rate]} rows/s"),
            TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err,
            disable=quiet,
        )
        self.task = self.progress.add_task(label, total=None, total_text="?", rate="-", tps="-")
        self.started = time.monotonic()
        self.first: RunProgress | None = None
        self.last_draw = 0.0

    def __enter__(self) -> _ProgressBar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def label(self, text: str) -> None:
        self.progress.update(self.task, description=text)

    def update(self, p: RunProgress) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first, self.started = p, now
        if now - self.last_draw < 0.1 and p.done != p.total:
            return
        self.last_draw = now
        elapsed = max(now - self.started, 1e-6)
        rows = p.done - self.first.done
        tokens = p.tokens - self.first.tokens
        self.progress.update(
            self.task,
            completed=p.done,
            total=p.total,
            total_text=f"{p.total:,}" if p.total is not None else "?",
            rate=f"{rows / elapsed:,.1f}",
            tps=f"{tokens / elapsed:,.0f}",
        )


def _print_summary(job: Job) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("job", f"{job.id} ({job.display_name})")
    table.add_row("state", _state_text(job.state))
    table.add_row(
        "rows",
        f"{job.counts.succeeded} succeeded, {job.counts.failed} failed, "
        f"{job.incomplete} incomplete",
    )
    table.add_row(
        "tokens",
        f"{job.counts.prompt_tokens} prompt + {job.counts.candidates_tokens} output = "
        f"{job.counts.total_tokens} (successful rows)",
    )
    if job.start_time and job.end_time:
        seconds = (job.end_time - job.start_time).total_seconds()
        table.add_row("time", f"{seconds:.1f} s")
    if job.error:
        table.add_row("error", job.error.get("message", ""))
    out.print(table, highlight=False)
    if job.output_dir:
        # one unbroken line, so the path copies whole however narrow the terminal
        path = f"{job.output_dir}/predictions.jsonl" if job.state.is_terminal else job.output_dir
        out.print(f"output  {path}", soft_wrap=True, highlight=False)


_STATE_COLOURS = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLED": "yellow",
    "CANCELLING": "yellow",
    "RUNNING": "cyan",
    "PENDING": "blue",
}


def _state_text(state: JobState) -> str:
    return f"[{_STATE_COLOURS.get(state.short, 'white')}]{state.short}[/]"


# -- serve ----------------------------------------------------------------------------------
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; beyond loopback only with access tokens configured.")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--data-dir", default=None, help="Where the job store lives [~/.batchpredict].")
@click.option("--models-file", default=None, help="Model registry file (TOML).")
@click.option("--max-running-jobs", type=int, default=None, help="Jobs run at once [1].")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(
    host: str,
    port: int,
    data_dir: str | None,
    models_file: str | None,
    max_running_jobs: int | None,
    log_level: str,
) -> None:
    """Serve Vertex AI's batch prediction REST API (/v1 and /v1beta1) and run its jobs.

    Point the google-genai SDK at it with http_options=HttpOptions(base_url="http://HOST:PORT").
    OpenAPI docs at /docs, Prometheus metrics at /metrics.
    """
    from batchpredict.server.app import serve as serve_app

    settings = Settings.from_env(
        data_dir=data_dir, models_file=models_file, max_running_jobs=max_running_jobs
    )
    serve_app(settings, host=host, port=port, log_level=log_level)


# -- jobs -----------------------------------------------------------------------------------
@main.group()
def jobs() -> None:
    """Jobs: in the local job store, or on a server with --server URL (BATCHPREDICT_SERVER)."""


def _server_options(f: Any) -> Any:
    """--server/--token/--project/--location, each defaulting to a BATCHPREDICT_* variable."""
    f = click.option("--location", default="us-central1", envvar="BATCHPREDICT_LOCATION",
                     show_default=True, help="Location of the jobs.")(f)
    f = click.option("--project", default=None, envvar="BATCHPREDICT_PROJECT",
                     help="Project of the jobs [the token's default project].")(f)
    f = click.option("--token", default=None, envvar="BATCHPREDICT_TOKEN",
                     help="Access token of the server (BATCHPREDICT_TOKEN).")(f)
    f = click.option("--server", default=None, envvar="BATCHPREDICT_SERVER",
                     help="batchpredict server URL, e.g. http://127.0.0.1:8080.")(f)
    return f


def _client(command: str, server: str | None, token: str | None, project: str | None,
            location: str) -> Any:
    from batchpredict.client import Client

    if not server:
        _fail(f"`batchpredict jobs {command}` needs a server: pass --server URL (or set "
              "BATCHPREDICT_SERVER), e.g. --server http://127.0.0.1:8080 after "
              "`batchpredict serve`. To run a job here instead, use `batchpredict run`.")
    return Client(str(server), token, project, location)


def _local_store(data_dir: str | None) -> Any:
    return open_store(Settings.from_env(data_dir=data_dir))


def print_jobs_table(items: list[dict[str, Any]]) -> None:
    """A table of BatchPredictionJob resources (API JSON), one per line."""
    table = Table()
    for col in ("id", "display name", "model", "state", "succeeded", "failed", "created"):
        table.add_column(col)
    for j in items:
        stats = j.get("completionStats") or {}
        table.add_row(
            j["name"].rsplit("/", 1)[-1],
            j.get("displayName", ""),
            j.get("model", ""),
            _state_text(JobState(j["state"])),
            stats.get("successfulCount", "-"),
            stats.get("failedCount", "-"),
            j.get("createTime", ""),
        )
    out.print(table)


def print_job(j: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(j, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(show_header=False, box=None)
    stats = j.get("completionStats") or {}
    progress = j.get("progress") or {}
    rows: list[tuple[str, str]] = [
        ("name", j["name"]),
        ("display name", j.get("displayName", "")),
        ("model", j.get("model", "")),
        ("state", _state_text(JobState(j["state"]))),
        ("input", ", ".join(j["inputConfig"]["gcsSource"]["uris"])),
        ("output", (j.get("outputInfo") or {}).get("gcsOutputDirectory", "")),
        ("rows", f"{stats.get('successfulCount', '0')} succeeded, "
                 f"{stats.get('failedCount', '0')} failed, "
                 f"{stats.get('incompleteCount', '0')} incomplete"
                 f" (of {progress.get('totalCount') or '?'})"),
        ("tokens", progress.get("totalTokenCount", "0")),
        ("created", j.get("createTime", "")),
        ("started", j.get("startTime", "")),
        ("ended", j.get("endTime", "")),
    ]
    if j.get("error"):
        rows.append(("error", j["error"].get("message", "")))
    for k, v in rows:
        table.add_row(k, v)
    out.print(table, highlight=False)


@jobs.command("list")
@click.option("--data-dir", default=None)
@click.option("--filter", "filter_text", default=None,
              help='With --server: e.g. state="JOB_STATE_RUNNING" AND labels.team=ml.')
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@_server_options
def jobs_list(
    data_dir: str | None, filter_text: str | None, as_json: bool, server: str | None,
    token: str | None, project: str | None, location: str,
) -> None:
    """List jobs, newest first."""
    if server:
        items = list(_client("list", server, token, project, location).list(filter_text))
    else:
        if filter_text:
            _fail("--filter needs --server: the local job store lists every job.")
        items = [j.to_api() for j in _local_store(data_dir).list()]
    if as_json:
        click.echo(orjson.dumps({"batchPredictionJobs": items}, option=orjson.OPT_INDENT_2))
    else:
        print_jobs_table(items)


@jobs.command("get")
@click.argument("job_id")
@click.option("--data-dir", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@_server_options
def jobs_get(
    job_id: str, data_dir: str | None, as_json: bool, server: str | None, token: str | None,
    project: str | None, location: str,
) -> None:
    """Show one job (JOB_ID: its number, or its full name with --server)."""
    if server:
        print_job(_client("get", server, token, project, location).get(job_id), as_json)
        return
    if not job_id.isdigit():
        _fail(f"{job_id!r} is not a job id: give its number, e.g. `batchpredict jobs get 3`.")
    print_job(_local_store(data_dir).get(int(job_id)).to_api(), as_json)


@jobs.command("create")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", required=True, help="Output prefix: a folder, gs://... or s3://...")
@click.option("--model", "-m", default="gemini-2.5-flash", show_default=True, help="Model name.")
@click.option("--display-name", default=None, help="Job name shown in lists.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="A label (repeat).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@_server_options
def jobs_create(
    inputs: tuple[str, ...], output: str, model: str, display_name: str | None,
    labels: tuple[str, ...], as_json: bool, server: str | None, token: str | None,
    project: str | None, location: str,
) -> None:
    """Create a job on the server from INPUT files (paths the server can read, gs://, s3://)."""
    from batchpredict.client import job_body

    label_map = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--label {item!r} is not KEY=VALUE, e.g. --label team=ml.")
        label_map[key] = value
    # The server reads the inputs: a relative path means nothing there.
    uris = [os.path.abspath(u) if "://" not in u else u for u in inputs]
    out_uri = os.path.abspath(output) if "://" not in output else output
    name = display_name or f"job-{time.strftime('%Y%m%d-%H%M%S')}"
    client = _client("create", server, token, project, location)
    print_job(client.create(job_body(uris, out_uri, model, name, label_map)), as_json)


@jobs.command("cancel")
@click.argument("job_id")
@_server_options
def jobs_cancel(
    job_id: str, server: str | None, token: str | None, project: str | None, location: str
) -> None:
    """Cancel a job: it ends CANCELLED, keeping every row completed so far."""
    _client("cancel", server, token, project, location).cancel(job_id)
    err.print(f"Cancelling job {job_id}; `batchpredict jobs wait {job_id}` shows when it ends.",
              highlight=False)


@jobs.command("delete")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON (an Operation).")
@_server_options
def jobs_delete(
    job_id: str, as_json: bool, server: str | None, token: str | None, project: str | None,
    location: str,
) -> None:
    """Delete a finished job (its output files stay)."""
    op = _client("delete", server, token, project, location).delete(job_id)
    if as_json:
        click.echo(orjson.dumps(op, option=orjson.OPT_INDENT_2).decode())
    else:
        err.print(f"Deleted job {job_id}.", highlight=False)


@jobs.command("wait")
@click.argument("job_id")
@click.option("--interval", type=float, default=2.0, show_default=True,
              help="Seconds between polls.")
@click.option("--json", "as_json", is_flag=True, help="Print the finished job's JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_server_options
def jobs_wait(
    job_id: str, interval: float, as_json: bool, quiet: bool, server: str | None,
    token: str | None, project: str | None, location: str,
) -> None:
    """Wait for a job to finish, showing its progress; exit 0 if it SUCCEEDED, else 1."""
    client = _client("wait", server, token, project, location)
    with _ProgressBar(quiet, label=f"job {job_id}") as bar:

        def show(j: dict[str, Any]) -> None:
            progress = j.get("progress") or {}
            stats = j.get("completionStats") or {}
            total = progress.get("totalCount")
            bar.label(f"job {job_id} {_state_text(JobState(j['state']))}")
            bar.update(RunProgress(
                done=int(progress.get("doneCount") or 0),
                total=int(total) if total else None,
                succeeded=int(stats.get("successfulCount") or 0),
                failed=int(stats.get("failedCount") or 0),
                tokens=int(progress.get("totalTokenCount") or 0),
            ))

        final = client.wait(job_id, poll_seconds=interval, on_update=show)
    print_job(final, as_json)
    sys.exit(0 if final["state"] == JobState.JOB_STATE_SUCCEEDED.value else 1)


# -- models ---------------------------------------------------------------------------------
@main.group()
def models() -> None:
    """The model registry."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
def models_list(as_json: bool) -> None:
    """Models a job may name, and the backend that answers each."""
    entries = load_registry(Settings.from_env()).describe()
    if as_json:
        click.echo(orjson.dumps(entries, option=orjson.OPT_INDENT_2))
        return
    table = Table()
    for col in ("model", "backend", "settings", "description"):
        table.add_column(col)
    for e in entries:
        table.add_row(e["name"], e["backend"], e.get("settings", ""), e["description"])
    out.print(table)


@models.command("pull")
def models_pull() -> None:
    """Prepare the embedded model: convert the bundled GGUF once into a fast-loading folder, and
    build from it the int4 ONNX model that the default engine runs."""
    from batchpredict.backends.embedded_model import prepare_embedded_model, prepare_onnx_model

    started = time.monotonic()
    with err.status("Preparing the embedded model (about a minute the first time)..."):
        path = prepare_embedded_model()
    out.print(f"Embedded model ready in {path} ({time.monotonic() - started:.1f} s)")
    started = time.monotonic()
    with err.status("Building its ONNX model for the default engine (about 30 s the first "
                    "time)..."):
        onnx = prepare_onnx_model()
    out.print(f"ONNX model ready in {onnx} ({time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()
