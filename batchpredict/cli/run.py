"""`batchpredict run`: submit a job through the job service and run it here and now.

The job runs in this command (`RunsIn.COMMAND`): a server sharing the store leaves it alone, and
running the same command again (same inputs, output and model) resumes it.

Input lines may be Vertex's (`{"request": ...}`) or OpenAI's batch lines (`{"custom_id", "method",
"url", "body"}`, as `vllm run-batch` reads them), told apart by the first line or `--format`; the
output is written in the same format. `--output-file` (and `--error-file`) write the lines of
succeeded (and failed) rows at a path, as OpenAI's output and error files hold them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shlex
import signal
import sys
import time
from typing import NoReturn

import click
import orjson

from batchpredict.cli import EXIT
from batchpredict.cli.common import err, fail, local_service
from batchpredict.cli.progress import ProgressBar, print_summary
from batchpredict.config import DEFAULT_MODEL, Settings
from batchpredict.errors import plural
from batchpredict.executors import EXECUTORS
from batchpredict.jobs import Face, Job, JobState, LineFormat, RunsIn
from batchpredict.service import JobRequest, JobService, Scope

__all__ = ["exit_with", "run", "run_here"]


def _absolute(uri: str) -> str:
    return os.path.abspath(uri) if "://" not in uri else uri


def fingerprint(inputs: list[str], output: str, model: str) -> str:
    """What makes two `run` commands the same job."""
    norm = [_absolute(u) for u in inputs]
    return hashlib.sha256(orjson.dumps([norm, _absolute(output), model])).hexdigest()


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", default=None,
              help="Output prefix: a folder, gs://... or s3://... (the job's predictions folder); "
                   "or a BigQuery table to create: bq://PROJECT.DATASET[.TABLE].")
@click.option("--output-file", default=None,
              help="Also write the lines of succeeded rows here (OpenAI input: an OpenAI output "
                   "file; other formats: every line). --output may then be left out.")
@click.option("--error-file", default=None,
              help="Write the lines of failed rows here [OpenAI input with --output-file: "
                   "OUTPUT_FILE's name with .errors.jsonl].")
@click.option("--format", "line_format", default="auto", show_default=True,
              type=click.Choice(["auto", "vertex", "openai", "gemini"]),
              help="Input line format; auto: OpenAI's when the first line has custom_id and body.")
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, help="Model name.")
@click.option("--display-name", default=None, help="Job name shown in lists.")
@click.option("--data-dir", default=None, help="Where the job store lives [~/.batchpredict].")
@click.option("--chunk-rows", type=int, default=None, help="Export a chunk every N rows.")
@click.option("--chunk-seconds", type=float, default=None, help="...or every N seconds.")
@click.option("--executor", type=click.Choice(EXECUTORS), default=None,
              help="Where the rows run: local (this process), processes, ray [local].")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Worker processes or Ray actors, each loading the model once [one per CPU "
                   "for processes, what the cluster fits for ray].")
@click.option("--ray-address", default=None,
              help="Ray cluster (ray://HOST:10001) [a local one started for the job].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def run(
    inputs: tuple[str, ...],
    output: str | None,
    output_file: str | None,
    error_file: str | None,
    line_format: str,
    model: str,
    display_name: str | None,
    data_dir: str | None,
    chunk_rows: int | None,
    chunk_seconds: float | None,
    executor: str | None,
    workers: int | None,
    ray_address: str | None,
    quiet: bool,
) -> None:
    """Run a batch job on INPUT files (JSONL, paths or wildcards) or one BigQuery table
    (bq://PROJECT.DATASET.TABLE) and write predictions.

    Running the same command again after a crash or Ctrl-C resumes the same job.
    """
    settings = Settings.from_env(
        data_dir=data_dir, chunk_rows=chunk_rows, chunk_seconds=chunk_seconds,
        executor=executor, workers=workers, ray_address=ray_address,
    )
    if output is None and output_file is None:
        fail("Give --output PREFIX (a folder for the job's predictions) or --output-file PATH.")
    # without --output, the job's chunks go to the local project's own output area
    prefix = output or os.path.join(os.path.expanduser(settings.outputs_uri), "local", "runs")
    request = JobRequest(
        display_name=display_name or f"run-{time.strftime('%Y%m%d-%H%M%S')}",
        model=model,
        input_uris=[_absolute(u) for u in inputs],
        output_prefix=_absolute(prefix),
        runs_in=RunsIn.COMMAND,
        fingerprint=fingerprint(list(inputs), output or f"file:{output_file}", model),
        face=Face.CLI,
    )
    files = Exports(output_file, error_file)
    final = asyncio.run(_submit_and_run(settings, request, quiet, line_format, files))
    exit_with(final, resume_command=shlex.join(["batchpredict", *sys.argv[1:]]))


def exit_with(final: Job, resume_command: str) -> NoReturn:
    """Print what a run ended with and exit with its code (130: interrupted, resumable)."""
    print_summary(final, resume_command=resume_command)
    if final.state == JobState.JOB_STATE_RUNNING:
        sys.exit(EXIT["interrupted"])
    sys.exit(EXIT["succeeded"] if final.state == JobState.JOB_STATE_SUCCEEDED
             else EXIT["job failed"])


class Exports:
    """Where `--output-file` and `--error-file` go, once the job has ended."""

    def __init__(self, output_file: str | None, error_file: str | None) -> None:
        self.output_file, self.error_file = output_file, error_file

    def paths(self, fmt: LineFormat) -> list[tuple[str, str]]:
        """(part, path) to write: OpenAI's split by outcome; other formats keep every line."""
        error_file = self.error_file
        if self.output_file and error_file is None and fmt == LineFormat.OPENAI:
            error_file = self.output_file.removesuffix(".jsonl") + ".errors.jsonl"
        found = []
        if self.output_file:
            found.append(("succeeded" if fmt == LineFormat.OPENAI else "all", self.output_file))
        if error_file:
            found.append(("failed", error_file))
        return [(part, _absolute(path)) for part, path in found]

    async def write(self, service: JobService, job: Job) -> None:
        if not job.state.is_terminal or not job.output_dir:
            return
        for part, path in self.paths(job.line_format):
            count = await service.files.export(job, part, path)
            err.print(f"{path}: {count} lines ({part} rows)", highlight=False, soft_wrap=True)


async def _submit_and_run(settings: Settings, request: JobRequest, quiet: bool,
                          line_format: str, files: Exports) -> Job:
    service = local_service(settings)
    try:
        assert request.fingerprint is not None
        job = await service.find_resumable(request.fingerprint)
        if job is not None:
            if job.resumable:  # it failed because of its store, storage or disk
                err.print(f"Job {job.id} had failed because of its store, storage or disk; "
                          "taking it back to RUNNING.", highlight=False)
                job = await service.resume(Scope.local(), job.id)
            done = await service.committed_rows(job)
            err.print(f"Resuming job {job.id} ({plural(done, 'row')} already done) into "
                      f"{job.output_table or job.output_dir}",
                      highlight=False)
        else:
            request.line_format = None if line_format == "auto" else LineFormat(line_format)
            job = await service.submit(Scope.local(), request)
            err.print(f"Created job {job.id}", highlight=False)
        final = await run_here(service, job, quiet)
        await files.write(service, final)
        return final
    finally:
        await service.close()


async def run_here(service: JobService, job: Job, quiet: bool) -> Job:
    """Run `job` in this command, with a progress bar; Ctrl-C writes its completed rows."""
    interrupt = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        if interrupt.is_set():
            os._exit(130)  # second Ctrl-C: the chunks already written are safe
        err.print("\nStopping: writing completed rows (Ctrl-C again to quit now)...")
        interrupt.set()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    loop.add_signal_handler(signal.SIGTERM, on_sigint)
    with ProgressBar(quiet) as bar:
        return await service.scheduler.run_here(
            job.id, on_progress=bar.update, interrupt=interrupt, on_loading=bar.loading
        )
