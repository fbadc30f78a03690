"""The `batchpredict` command.

    batchpredict run INPUT... --output PREFIX [--model NAME]   create and run a job here (run.py)
    batchpredict serve [--host H --port P]                      the REST API and its scheduler
    batchpredict jobs list|get|cancel|delete|resume             the local job store (jobs.py)
    batchpredict jobs create|get|list|cancel|delete|resume|wait --server URL   a server's jobs
    batchpredict models list|pull                               the model registry (models.py)

Every command goes through the one job service (`batchpredict.service`), locally or on a server
through its REST API; tables and summaries print from the domain `Job` (progress.py).

Errors are printed as one sentence that says what to do, never a traceback. Exit codes (`EXIT`):

    0    the job SUCCEEDED (or the command did what it says)
    1    the job ended FAILED or CANCELLED
    2    bad usage or invalid input: a wrong option, a bad request body, an unwritable output
    3    not found: a missing input file or bucket, an unknown job (no job is created)
    4    not allowed: no token, or a token that may not use the project
    5    unavailable: the server or a store cannot be reached, or answered with an error
    130  interrupted by Ctrl-C; the job is resumable (run the same command again)
"""

from __future__ import annotations

from typing import Any

import click

from batchpredict.cli.common import fail
from batchpredict.errors import (
    BatchPredictError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)

__all__ = ["EXIT", "exit_code", "main"]

#: What each exit code means (the module docstring says it in words).
EXIT = {"succeeded": 0, "job failed": 1, "usage": 2, "not found": 3, "not allowed": 4,
        "unavailable": 5, "interrupted": 130}


def exit_code(exc: BatchPredictError) -> int:
    if isinstance(exc, NotFound):
        return EXIT["not found"]
    if isinstance(exc, Unauthenticated | PermissionDenied):
        return EXIT["not allowed"]
    if exc.http_code < 500 or isinstance(exc, InvalidArgument):
        return EXIT["usage"]
    return EXIT["unavailable"]


class _Group(click.Group):
    """Turns our errors into one line and an exit code instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatchPredictError as exc:
            fail(exc.message, exit_code(exc))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchpredict")
def main() -> None:
    """Vertex AI batch prediction, self-hosted: JSONL of Gemini requests in, predictions out."""


def _register() -> None:
    from batchpredict.cli import jobs, models, run, serve

    main.add_command(run.run)
    main.add_command(serve.serve)
    main.add_command(jobs.jobs)
    main.add_command(models.models)


_register()

if __name__ == "__main__":
    main()
