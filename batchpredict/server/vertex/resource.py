"""The BatchPredictionJob resource as Vertex renders it: the one place a `Job` becomes Vertex JSON.

int64 counts are strings and times RFC 3339, as in Vertex's REST API. One field is ours alone,
`progress` (total, done and token counts, and while the job waits out an outage of its store,
storage or disk, `waitingFor`, `waitingSince` and `waitingReason`): the google-genai SDK ignores
it; progress bars and the console need it. A job FAILED by such an outage says so in its `error`
(`"resumable": true`): `:resume` runs it on from its committed rows. Every count is of committed
rows (their chunk is durably written), so `completionStats` and `progress` always agree, follow
the job as its chunks commit, and never go backwards, whichever process or replica answers.
"""

from __future__ import annotations

from typing import Any

from batchpredict.jobs import Job, JobState, RowCounts, format_time, parse_time

__all__ = ["job_from_resource", "job_resource"]

S = JobState


def job_resource(job: Job) -> dict[str, Any]:
    """The BatchPredictionJob resource."""
    out: dict[str, Any] = {
        "name": job.name,
        "displayName": job.display_name,
        "model": job.model,
        "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": job.input_uris}},
        "outputConfig": {
            "predictionsFormat": "jsonl",
            "gcsDestination": {"outputUriPrefix": job.output_prefix},
        },
        "state": job.state.value,
        "createTime": format_time(job.create_time),
        "updateTime": format_time(job.update_time),
    }
    if job.labels:
        out["labels"] = job.labels
    if job.start_time:
        out["startTime"] = format_time(job.start_time)
    if job.end_time:
        out["endTime"] = format_time(job.end_time)
    if job.error and job.state in (S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED):
        out["error"] = job.error
    if job.output_dir:
        out["outputInfo"] = {"gcsOutputDirectory": job.output_dir}
    if job.state != S.JOB_STATE_PENDING:
        out["completionStats"] = {
            "successfulCount": str(job.counts.succeeded),
            "failedCount": str(job.counts.failed),
            "incompleteCount": str(job.incomplete),
        }
    if job.model_version:
        out["modelVersionId"] = job.model_version
    if job.partial_failures:
        out["partialFailures"] = job.partial_failures
    out["progress"] = {
        "totalCount": None if job.total_rows is None else str(job.total_rows),
        "doneCount": str(job.counts.done),
        "promptTokenCount": str(job.counts.prompt_tokens),
        "candidatesTokenCount": str(job.counts.candidates_tokens),
        "totalTokenCount": str(job.counts.total_tokens),
    }
    if job.waiting_for:
        out["progress"].update(waitingFor=job.waiting_for, waitingReason=job.waiting_reason,
                               waitingSince=format_time(job.waiting_since))
    return out


def job_from_resource(data: dict[str, Any]) -> Job:
    """A `Job` from a server's BatchPredictionJob JSON (what the CLI's client receives), so the
    CLI prints every job from the domain type."""
    _, project, _, location, _, job_id = (data["name"].split("/") + [""] * 6)[:6]
    stats = data.get("completionStats") or {}
    progress = data.get("progress") or {}
    source = (data.get("inputConfig") or {}).get("gcsSource") or {}
    dest = (data.get("outputConfig") or {}).get("gcsDestination") or {}
    prompt = int(progress.get("promptTokenCount") or 0)
    total = progress.get("totalCount")
    job = Job(
        display_name=data.get("displayName", ""),
        model=data.get("model", ""),
        input_uris=list(source.get("uris") or []),
        output_prefix=dest.get("outputUriPrefix", ""),
        project=project,
        location=location,
        labels=dict(data.get("labels") or {}),
        id=int(job_id) if job_id.isdigit() else 0,
        state=JobState(data["state"]),
        error=data.get("error"),
        output_dir=(data.get("outputInfo") or {}).get("gcsOutputDirectory"),
        counts=RowCounts(
            succeeded=int(stats.get("successfulCount") or 0),
            failed=int(stats.get("failedCount") or 0),
            prompt_tokens=prompt,
            candidates_tokens=int(progress.get("totalTokenCount") or 0) - prompt,
        ),
        incomplete=int(stats.get("incompleteCount") or 0),
        total_rows=int(total) if total else None,
        model_version=data.get("modelVersionId"),
        waiting_for=progress.get("waitingFor"),
        waiting_since=parse_time(progress.get("waitingSince")),
        waiting_reason=progress.get("waitingReason"),
    )
    for key, attr in (("createTime", "create_time"), ("updateTime", "update_time"),
                      ("startTime", "start_time"), ("endTime", "end_time")):
        if data.get(key):
            setattr(job, attr, parse_time(data[key]))
    return job
