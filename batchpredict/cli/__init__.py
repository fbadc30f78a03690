"""The `batchpredict` command.

    batchpredict run INPUT... --output PREFIX [--model NAME]   create and run a job here (run.py)
    batchpredict serve [--host H --port P]                      the REST API and its scheduler
    batchpredict jobs list|get|cancel|delete                    the local job store (jobs.py)
    batchpredict jobs create|get|list|cancel|delete|wait --server URL   a server's jobs
    batchpredict models list|pull                               the model registry (models.py)

Every command goes through the one job service (`batchpredict.service`), locally or on a server
through its REST API; tables and summaries print from the domain `Job` (progress.py).

Errors are printed as one sentence that says what to do, never a traceback. Exit codes:
0 job SUCCEEDED, 1 job FAILED or CANCELLED, 2 bad usage or input (a missing input file too: no
job is created), 130 interrupted (resumable).
"""

from __future__ import annotations

from typing import Any

import click

from batchpredict.cli.common import fail
from batchpredict.errors import BatchPredictError

__all__ = ["main"]


class _Group(click.Group):
    """Turns our errors into one line and an exit code instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatchPredictError as exc:
            fail(exc.message)


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
