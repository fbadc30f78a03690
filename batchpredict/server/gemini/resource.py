"""A job as the Gemini Developer API's batch operation and a stored file as its File resource: the
one place they become Gemini JSON (camelCase, int64 as strings, RFC 3339 times).

    JOB_STATE_PENDING                BATCH_STATE_PENDING
    JOB_STATE_RUNNING / CANCELLING   BATCH_STATE_RUNNING
    JOB_STATE_SUCCEEDED              BATCH_STATE_SUCCEEDED
    JOB_STATE_FAILED                 BATCH_STATE_FAILED (BATCH_STATE_EXPIRED: the time limit)
    JOB_STATE_CANCELLED              BATCH_STATE_CANCELLED

The google-genai SDK reads an operation's `name` (it must be `batches/ID`) and `metadata`.
"""

from __future__ import annotations

import base64
from typing import Any

from starlette.requests import Request

from batchpredict.errors import NotFound
from batchpredict.files import StoredFile
from batchpredict.jobs import Job, JobState, format_time

__all__ = ["batch_operation", "file_resource", "is_gemini_request", "parse_batch_name"]

S = JobState
BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
_STATE = {
    S.JOB_STATE_PENDING: "BATCH_STATE_PENDING",
    S.JOB_STATE_RUNNING: "BATCH_STATE_RUNNING",
    S.JOB_STATE_CANCELLING: "BATCH_STATE_RUNNING",
    S.JOB_STATE_SUCCEEDED: "BATCH_STATE_SUCCEEDED",
    S.JOB_STATE_FAILED: "BATCH_STATE_FAILED",
    S.JOB_STATE_CANCELLED: "BATCH_STATE_CANCELLED",
}


def is_gemini_request(request: Request) -> bool:
    """A call from the Gemini Developer API's clients: they send the key as `x-goog-api-key` (or
    `?key=`); OpenAI's send `Authorization: Bearer`. Tells the two faces apart on the /v1 paths
    they share (`/v1/batches`, `/v1/files`)."""
    return "x-goog-api-key" in request.headers or "key" in request.query_params


def parse_batch_name(text: str) -> int:
    """The job id of `batches/123` (or `123`, as it appears in a path); else NotFound."""
    digits = text.removeprefix("batches/")
    if not digits.isdigit() or len(digits) > 18:
        raise NotFound(f"Batch {text} was not found: batch names look like batches/123.")
    return int(digits)


def batch_state(job: Job) -> str:
    if job.state == S.JOB_STATE_FAILED and (job.error or {}).get("code") == 4:
        return "BATCH_STATE_EXPIRED"  # DEADLINE_EXCEEDED: the time limit ended it
    return _STATE.get(job.state, "BATCH_STATE_UNSPECIFIED")


def batch_operation(job: Job, output: dict[str, Any] | None) -> dict[str, Any]:
    """The operation the SDK reads for a batch; `output` is `metadata.output` once finished."""
    counts = job.counts
    succeeded, failed, total = counts.succeeded, counts.failed, job.total_rows
    total = total if total is not None else succeeded + failed
    metadata: dict[str, Any] = {
        "@type": BATCH_TYPE,
        "name": f"batches/{job.id}",
        "model": job.model if job.model.startswith("models/") else f"models/{job.model}",
        "displayName": job.display_name,
        "state": batch_state(job),
        "createTime": format_time(job.create_time),
        "updateTime": format_time(job.update_time),
        "batchStats": {
            "requestCount": str(total),
            "successfulRequestCount": str(succeeded),
            "failedRequestCount": str(failed),
            "pendingRequestCount": str(max(0, total - succeeded - failed)),
        },
    }
    source = job.face_info.get("input_file")
    if source and job.face_info.get("src") == "file":
        metadata["inputConfig"] = {"fileName": f"files/{source}"}
    if job.end_time:
        metadata["endTime"] = format_time(job.end_time)
    if output is not None:
        metadata["output"] = output
    operation: dict[str, Any] = {"name": f"batches/{job.id}", "metadata": metadata,
                                 "done": job.state.is_terminal}
    if job.error and job.state == S.JOB_STATE_FAILED:
        operation["error"] = job.error
    return operation


def file_resource(f: StoredFile, base_url: str, version: str) -> dict[str, Any]:
    """A File as the Files API returns it; `base_url` is this server's, for `uri`."""
    uri = f"{base_url.rstrip('/')}/{version}/files/{f.id}"
    out: dict[str, Any] = {
        "name": f"files/{f.id}",
        "displayName": f.filename,
        "mimeType": f.mime_type,
        "sizeBytes": str(f.size_bytes),
        "createTime": format_time(f.create_time),
        "updateTime": format_time(f.update_time),
        "uri": uri,
        "downloadUri": f"{uri}:download?alt=media",
        "state": "ACTIVE",
        "source": "GENERATED" if f.is_output else "UPLOADED",
    }
    if f.expire_time:
        out["expirationTime"] = format_time(f.expire_time)
    if f.sha256:
        out["sha256Hash"] = base64.b64encode(bytes.fromhex(f.sha256)).decode()
    return out
