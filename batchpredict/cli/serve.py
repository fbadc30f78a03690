"""`batchpredict serve`: the REST API, the console and the scheduler that runs their jobs."""

from __future__ import annotations

import click

from batchpredict.config import Settings

__all__ = ["serve"]


@click.command()
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
