"""The BatchPredictionJob resource as Vertex renders it: the one place a `Job` becomes Vertex JSON.

int64 counts are strings and times RFC 3339, as in Vertex's REST API. Two fields are ours alone:
`face` (the API the job came through: vertex, openai, gemini or cli) and `progress` (total, done
and token counts, and while the job waits out an outage of its store, storage or disk,
`waitingFor`, `waitingSince` and `waitingReason`): the google-genai SDK ignores them; progress
bars and the console need them. A job FAILED by such an outage says so in its `error`
(`"resumable": true`): `:resume` runs it on from its committed rows. Every count is of committed
rows (their chunk is durably written), so `completionStats` and `progress` always agree, follow
the job as its chunks commit, and never go backwards, whichever process or replica answers.
"""

from __future__ import annotations

from typing import Any

from batchpredict.jobs import Face, Job, JobState, RowCounts, format_time, parse_time

__all__ = ["input_config", "job_from_resource", "job_resource", "output_config"]

S = JobState


def job_resource(job: Job) -> dict[str, Any]:
    """The BatchPredictionJob resource."""
    out: dict[str, Any] = {
        "name": job.name,
        "displayName": job.display_name,
        "model": job.model,
        "inputConfig": input_config(job.input_uris),
        "outputConfig": output_config(job.output_prefix),
        "state": job.state.value,
        "createTime": format_time(job.create_time),
        "updateTime": format_time(job.update_time),
        "face": job.face.value,
    }
    if job.labels:
        out["labels"] = job.labels
    if job.start_time:
        out["startTime"] = format_time(job.start_time)
    if job.end_time:
        out["endTime"] = format_time(job.end_time)
    if job.error and job.state in (S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED):
        out["error"] = job.error
    if job.output_table:  # a BigQuery output (its chunks stage in output_dir)
        if job.state != S.JOB_STATE_PENDING:
            dataset, _, table = job.output_table.rpartition(".")
            out["outputInfo"] = {"bigqueryOutputDataset": dataset, "bigqueryOutputTable": table}
    elif job.output_dir:
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
    inputs, prefix = _io_from_resource(data)
    info = data.get("outputInfo") or {}
    prompt = int(progress.get("promptTokenCount") or 0)
    total = progress.get("totalCount")
    job = Job(
        display_name=data.get("displayName", ""),
        model=data.get("model", ""),
        input_uris=inputs,
        output_prefix=prefix,
        project=project,
        location=location,
        labels=dict(data.get("labels") or {}),
        id=int(job_id) if job_id.isdigit() else 0,
        state=JobState(data["state"]),
        error=data.get("error"),
        output_dir=info.get("gcsOutputDirectory"),
        counts=RowCounts(
            succeeded=int(stats.get("successfulCount") or 0),
            failed=int(stats.get("failedCount") or 0),
            prompt_tokens=prompt,
            candidates_tokens=int(progress.get("totalTokenCount") or 0) - prompt,
        ),
        incomplete=int(stats.get("incompleteCount") or 0),
        total_rows=int(total) if total else None,
        model_version=data.get("modelVersionId"),
        face=Face(data.get("face") or Face.VERTEX),
        waiting_for=progress.get("waitingFor"),
        waiting_since=parse_time(progress.get("waitingSince")),
        waiting_reason=progress.get("waitingReason"),
    )
    if info.get("bigqueryOutputTable"):
        job.output_table = f"{info.get('bigqueryOutputDataset')}.{info['bigqueryOutputTable']}"
    for key, attr in (("createTime", "create_time"), ("updateTime", "update_time"),
                      ("startTime", "start_time"), ("endTime", "end_time")):
        if data.get(key):
            setattr(job, attr, parse_time(data[key]))
    return job


# -- input and output configs: JSONL files (gcsSource, gcsDestination) or BigQuery tables ------
def _is_table(uri: str) -> bool:
    return uri.strip().lower().startswith("bq://")


def input_config(uris: list[str]) -> dict[str, Any]:
    """inputConfig for `uris`: one bq:// table (bigquerySource) or JSONL files (gcsSource)."""
    if len(uris) == 1 and _is_table(uris[0]):
        return {"instancesFormat": "bigquery", "bigquerySource": {"inputUri": uris[0]}}
    return {"instancesFormat": "jsonl", "gcsSource": {"uris": list(uris)}}


def output_config(prefix: str) -> dict[str, Any]:
    """outputConfig for `prefix`: a bq:// dataset or table, or an output URI prefix."""
    if _is_table(prefix):
        return {"predictionsFormat": "bigquery", "bigqueryDestination": {"outputUri": prefix}}
    return {"predictionsFormat": "jsonl", "gcsDestination": {"outputUriPrefix": prefix}}


def _io_from_resource(data: dict[str, Any]) -> tuple[list[str], str]:
    """(input URIs, output prefix) of a resource, from its gcs or bigquery fields."""
    inp, out = data.get("inputConfig") or {}, data.get("outputConfig") or {}
    table = (inp.get("bigquerySource") or {}).get("inputUri")
    inputs = [table] if table else list((inp.get("gcsSource") or {}).get("uris") or [])
    dest = (out.get("bigqueryDestination") or {}).get("outputUri")
    prefix = dest or (out.get("gcsDestination") or {}).get("outputUriPrefix", "")
    return inputs, str(prefix)
