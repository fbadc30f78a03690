"""An HTTP client for a batchpredict server (the CLI's `jobs ... --server URL`).

It speaks the same REST API as Vertex AI: with a `project` it calls
`{server}/v1/projects/{project}/locations/{location}/batchPredictionJobs`, without one the express
form `{server}/v1/batchPredictionJobs` (the server then uses the token's default project). Replies
are the API's JSON, unchanged. Errors come back as our own exceptions, built from the server's
`{"error": {code, message, status}}`; a server that cannot be reached is `Unavailable`.

Synchronous on purpose: a command makes one call at a time, and the standard library's urllib is
all it needs.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from batchpredict.config import DEFAULT_LOCATION
from batchpredict.errors import (
    BatchPredictError,
    DeadlineExceeded,
    InvalidArgument,
    Unavailable,
    error_for_http_status,
)
from batchpredict.server.vertex.resource import input_config, output_config

__all__ = ["Client", "job_body"]

FINISHED = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
            "JOB_STATE_EXPIRED", "JOB_STATE_PARTIALLY_SUCCEEDED")


def job_body(
    inputs: list[str],
    output_prefix: str,
    model: str,
    display_name: str,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The create body for `inputs` (JSONL files or one bq:// table) written to `output_prefix`
    (an output prefix, or a bq:// dataset or table)."""
    body: dict[str, Any] = {
        "displayName": display_name,
        "model": model,
        "inputConfig": input_config(list(inputs)),
        "outputConfig": output_config(output_prefix),
    }
    if labels:
        body["labels"] = dict(labels)
    return body


class Client:
    def __init__(
        self,
        server: str,
        token: str | None = None,
        project: str | None = None,
        location: str = DEFAULT_LOCATION,
        timeout: float = 60.0,
    ) -> None:
        if not server.startswith(("http://", "https://")):
            raise InvalidArgument(
                f"--server {server!r} is not a URL: give it as http://HOST:PORT, e.g. "
                "http://127.0.0.1:8080."
            )
        self.server = server.rstrip("/")
        self.token = token
        self.project = project
        self.location = location or DEFAULT_LOCATION
        self.timeout = timeout

    # -- the REST methods -----------------------------------------------------------------
    @property
    def collection(self) -> str:
        if self.project:
            return (f"/v1/projects/{self.project}/locations/{self.location}"
                    "/batchPredictionJobs")
        return "/v1/batchPredictionJobs"

    def job_path(self, job: str | int) -> str:
        """The path of a job named by its id or its full resource name."""
        text = str(job).strip()
        if text.startswith("projects/"):
            return f"/v1/{text}"
        if not text.isdigit():
            raise InvalidArgument(
                f"{text!r} is not a job: give its number (123) or its name "
                "(projects/P/locations/L/batchPredictionJobs/123)."
            )
        return f"{self.collection}/{text}"

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", self.collection, body)

    def get(self, job: str | int) -> dict[str, Any]:
        return self._call("GET", self.job_path(job))

    def list(
        self, filter: str | None = None, page_size: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every job matching `filter`, newest first, fetching page after page."""
        token = ""
        while True:
            query = {"filter": filter or None, "pageSize": page_size, "pageToken": token or None}
            page = self._call("GET", self.collection, query=query)
            yield from page.get("batchPredictionJobs", [])
            token = page.get("nextPageToken", "")
            if not token:
                return

    def cancel(self, job: str | int) -> None:
        self._call("POST", self.job_path(job) + ":cancel", {})

    def resume(self, job: str | int) -> dict[str, Any]:
        """Resume a job FAILED by its store, storage or disk (the server's extra endpoint
        /batchpredict/v1/{name}:resume); the job as it is now."""
        name = self.get(job)["name"]
        return self._call("POST", f"/batchpredict/v1/{name}:resume", {})

    def delete(self, job: str | int) -> dict[str, Any]:
        return self._call("DELETE", self.job_path(job))

    def wait(
        self,
        job: str | int,
        poll_seconds: float = 2.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the job until it is finished; `on_update` sees every reply."""
        while True:
            current = self.get(job)
            if on_update is not None:
                on_update(current)
            if current.get("state") in FINISHED:
                return current
            time.sleep(poll_seconds)

    # -- transport ------------------------------------------------------------------------
    def _call(
        self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        url = self.server + urllib.parse.quote(path, safe="/:")
        if query:
            params = {k: v for k, v in query.items() if v is not None}
            if params:
                url += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                raw = reply.read()
        except urllib.error.HTTPError as exc:
            raise _error_from_reply(exc.code, exc.read()) from None
        except TimeoutError:
            raise DeadlineExceeded(
                f"{self.server} did not answer {method} {path} within {self.timeout:g} s."
            ) from None
        except urllib.error.URLError as exc:
            raise Unavailable(
                f"Cannot reach the server at {self.server}: {exc.reason}. Is `batchpredict "
                "serve` running there, and is --server (BATCHPREDICT_SERVER) right?"
            ) from None
        if not raw:
            return {}
        try:
            return orjson.loads(raw)  # type: ignore[no-any-return]
        except orjson.JSONDecodeError:
            raise Unavailable(
                f"{self.server} answered {method} {path} with something that is not JSON: "
                f"{raw[:120]!r}. Is --server a batchpredict server?"
            ) from None


def _error_from_reply(code: int, raw: bytes) -> BatchPredictError:
    try:
        error = orjson.loads(raw)["error"]
        message = str(error.get("message") or error.get("status") or raw[:200])
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        message = f"HTTP {code}: {raw[:200].decode(errors='replace').strip() or 'no details'}"
    return error_for_http_status(code, message)
