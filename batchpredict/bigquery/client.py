"""The BigQuery client, one per project, and the one place its errors become ours.

Credentials: Application Default Credentials; with BIGQUERY_EMULATOR_HOST (a full URL,
http://127.0.0.1:9050, or host:port) anonymous credentials and that endpoint. Every call has a
deadline (`retry()`, `TIMEOUT`) instead of the client's 600 s of retries. `translate` turns a
client error into ours, naming the table or dataset.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from batchpredict.errors import (
    AlreadyExists,
    BatchPredictError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

__all__ = ["ROW_CALLS", "TIMEOUT", "clear_client_cache", "client", "retry", "translate"]

#: One call's limits: seconds per HTTP request, and seconds of retries (transient errors) in all.
TIMEOUT = 60.0
RETRY_DEADLINE = 120.0

#: A running job's row traffic with BigQuery goes one call at a time in a process: reading its
#: input table's ranges, counting it, publishing output rows (one stream each way, as one reader
#: and one publisher would; bqemulator, which the tests use, answers concurrent calls wrongly).
ROW_CALLS = threading.RLock()

_clients: dict[tuple[str, str, str], Any] = {}
_clients_lock = threading.Lock()


def _emulator() -> str | None:
    host = os.environ.get("BIGQUERY_EMULATOR_HOST", "").strip()
    if not host:
        return None
    return host if host.startswith(("http://", "https://")) else f"http://{host}"


def client(project: str) -> Any:
    """One cached client per project, endpoint and credentials file."""
    emulator = _emulator()
    key = (project, emulator or "", os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", ""))
    with _clients_lock:
        if key in _clients:
            return _clients[key]
        try:
            from google.cloud import bigquery
        except ImportError as exc:
            raise FailedPrecondition(
                "BigQuery tables need the google-cloud-bigquery package: "
                "pip install google-cloud-bigquery"
            ) from exc
        try:
            if emulator:
                from google.api_core.client_options import ClientOptions
                from google.auth.credentials import AnonymousCredentials

                made = bigquery.Client(
                    project=project,
                    credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                    client_options=ClientOptions(api_endpoint=emulator),
                )
            else:
                made = bigquery.Client(project=project)
        except Exception as exc:
            raise translate(f"bq://{project}", exc) from exc
        _clients[key] = made
        return made


def clear_client_cache() -> None:
    """Forget cached clients: the next call reads the environment again (tests)."""
    with _clients_lock:
        _clients.clear()


def retry() -> Any:
    from google.cloud.bigquery.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_deadline(RETRY_DEADLINE)


def translate(what: str, exc: Exception) -> BatchPredictError:
    """A BigQuery client error, as ours, naming `what` (a table or dataset URI)."""
    if isinstance(exc, BatchPredictError):
        return exc
    name = type(exc).__name__
    detail = str(getattr(exc, "message", "") or exc).splitlines()[0] if str(exc) else name
    if name in ("DefaultCredentialsError", "RefreshError"):
        return FailedPrecondition(
            f"No usable Google Cloud credentials to access {what}: {detail}. Set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service account key file or run `gcloud auth "
            "application-default login` (or set BIGQUERY_EMULATOR_HOST for an emulator)."
        )
    code = getattr(exc, "code", None)
    if code == 404:
        return NotFound(f"{what} was not found ({detail}). Check the project, dataset and table.")
    if code in (401, 403):
        return PermissionDenied(
            f"Permission denied on {what} ({detail}). Grant the credentials batchpredict runs "
            "with BigQuery Data Viewer on inputs, Data Editor on the output dataset, and Job User."
        )
    if code == 409:
        return AlreadyExists(f"{what} already exists ({detail}).")
    if code == 400:
        return InvalidArgument(f"BigQuery refused a request on {what}: {detail}")
    return Unavailable(f"BigQuery could not be reached for {what}: {name}: {detail}")
