"""A job as OpenAI's Batch object and a stored file as OpenAI's File object: the one place they
become OpenAI JSON. Times are unix seconds; errors are `{"error": {message, type, param, code}}`.

    JOB_STATE_PENDING                          validating
    JOB_STATE_RUNNING                          in_progress (finalizing while assembling output)
    JOB_STATE_SUCCEEDED                        completed
    JOB_STATE_FAILED                           failed (expired when the time limit ended it)
    JOB_STATE_CANCELLING / _CANCELLED          cancelling / cancelled
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from batchpredict.errors import BatchPredictError, NotFound
from batchpredict.files import StoredFile
from batchpredict.jobs import Job, JobState

__all__ = ["batch_object", "error_body", "file_object", "parse_batch_id"]

S = JobState
_STATUS = {
    S.JOB_STATE_PENDING: "validating",
    S.JOB_STATE_RUNNING: "in_progress",
    S.JOB_STATE_SUCCEEDED: "completed",
    S.JOB_STATE_FAILED: "failed",
    S.JOB_STATE_CANCELLING: "cancelling",
    S.JOB_STATE_CANCELLED: "cancelled",
}
_DEADLINE_EXCEEDED = 4  # google.rpc.Code of a job ended by its time limit
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 409: "invalid_request_error", 429: "rate_limit_error"}


def _unix(t: datetime | None) -> int | None:
    return int(t.timestamp()) if t is not None else None


def parse_batch_id(text: str) -> int:
    """The job id of `batch_123`; NotFound for anything else."""
    digits = text.removeprefix("batch_")
    if not text.startswith("batch_") or not digits.isdigit() or len(digits) > 18:
        raise NotFound(f"No batch found with id '{text}'.")
    return int(digits)


def status_of(job: Job) -> str:
    if job.state == S.JOB_STATE_RUNNING and job.checkpoint.phase == "assembling":
        return "finalizing"
    if job.state == S.JOB_STATE_FAILED and (job.error or {}).get("code") == _DEADLINE_EXCEEDED:
        return "expired"
    return _STATUS.get(job.state, "in_progress")


def batch_object(job: Job, files: dict[str, StoredFile]) -> dict[str, Any]:
    """OpenAI's Batch for `job`; `files` its output files by part. Counts are of committed
    rows, as every face shows them."""
    info = job.face_info
    status = status_of(job)
    counts = job.counts
    succeeded, failed = counts.succeeded, counts.failed
    total = job.total_rows
    end = _unix(job.end_time)
    errors = None
    if job.error and job.state == S.JOB_STATE_FAILED:
        errors = {"object": "list", "data": [{
            "code": "batch_expired" if status == "expired" else "batch_failed",
            "message": job.error.get("message", ""), "param": None, "line": None}]}
    return {
        "id": f"batch_{job.id}",
        "object": "batch",
        "endpoint": info.get("endpoint", "/v1/chat/completions"),
        "model": job.model,
        "errors": errors,
        "input_file_id": info.get("input_file_id", ""),
        "completion_window": info.get("completion_window", "24h"),
        "status": status,
        "output_file_id": files["succeeded"].id if "succeeded" in files else None,
        "error_file_id": files["failed"].id if "failed" in files else None,
        "created_at": _unix(job.create_time),
        "in_progress_at": _unix(job.start_time),
        "expires_at": _unix(job.create_time + timedelta(hours=24)),
        "finalizing_at": _unix(job.update_time) if status == "finalizing" else None,
        "completed_at": end if status == "completed" else None,
        "failed_at": end if status == "failed" else None,
        "expired_at": end if status == "expired" else None,
        "cancelling_at": _unix(job.update_time) if status == "cancelling" else None,
        "cancelled_at": end if status == "cancelled" else None,
        "request_counts": {"total": total or succeeded + failed, "completed": succeeded,
                           "failed": failed},
        "usage": {
            "input_tokens": counts.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": counts.candidates_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": counts.total_tokens,
        },
        "metadata": dict(job.labels) or None,
    }


def file_object(f: StoredFile) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.size_bytes,
        "created_at": _unix(f.create_time),
        "expires_at": _unix(f.expire_time),
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": None,
    }


def error_body(exc: BatchPredictError) -> dict[str, Any]:
    """An error as OpenAI's API words it."""
    code = exc.http_code
    kind = _TYPES.get(code, "server_error" if code >= 500 else "invalid_request_error")
    return {"error": {"message": exc.message, "type": kind, "param": None,
                      "code": exc.status.lower()}}
