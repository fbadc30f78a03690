"""Endpoints beside Vertex's API that the console needs, public and documented so a script can call
them too (they appear in /docs under "batchpredict extras"). Each authenticates like the job
methods (`Authorization: Bearer TOKEN`, `x-goog-api-key` or `?key=`).

    GET  /batchpredict/v1/models                  the model registry: names a job may use
    GET  /batchpredict/v1/defaults                the caller's project, uploads root, output prefix
    POST /batchpredict/v1/uploads:validate        check a JSONL file line by line; store nothing
    POST /batchpredict/v1/uploads                 check and store a JSONL file; reply with its URI
    POST /batchpredict/v1/inputs:validate         check input URIs (wildcards) line by line
    GET  /batchpredict/v1/{job}/predictions.jsonl the job's output so far (download)
    GET  /batchpredict/v1/{job}/failedRows        the first failed output lines, with `status`
    GET  /batchpredict/v1/{job}/progressHistory   samples of its committed counts over time
    POST /batchpredict/v1/{job}:resume            run a job FAILED by its store, storage or disk
                                                  on from its committed rows

where {job} is projects/{p}/locations/{l}/batchPredictionJobs/{id}, the job's `name`.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from batchpredict.errors import NotFound
from batchpredict.jobs import Job, format_time
from batchpredict.output import OutputReader
from batchpredict.server.vertex.resource import job_resource
from batchpredict.server.vertex.routes import JSONResponse, express_scope, vertex_scope
from batchpredict.service import JobService, Scope, parse_job_id

__all__ = ["PREFIX", "router"]

PREFIX = "/batchpredict/v1"
JOB_PATH = PREFIX + "/projects/{project}/locations/{location}/batchPredictionJobs/{job_id}"

router = APIRouter(
    tags=["batchpredict extras"],
    responses={
        400: {"description": 'INVALID_ARGUMENT: {"error": {"code", "message", "status"}}'},
        401: {"description": "UNAUTHENTICATED: no or unknown token."},
    },
)
AnyScope = Annotated[Scope, Depends(express_scope)]
JobScope = Annotated[Scope, Depends(vertex_scope)]


class InputUris(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uris: list[str] = Field(min_length=1, description="JSONL files or wildcards, as in gcsSource.")


def _service(request: Request) -> JobService:
    return request.app.state.service  # type: ignore[no-any-return]


async def _output(request: Request, scope: Scope, job_id: str) -> tuple[Job, OutputReader]:
    return await _service(request).output(scope, parse_job_id(job_id))


@router.get(PREFIX + "/models", response_model=None)
async def list_models(request: Request, scope: AnyScope) -> Response:
    """The model registry, in match order: `{"models": [{name, backend, description}]}`. A name
    may be a glob pattern (`gemini-*`): a job's `model` matching it goes to that backend."""
    return JSONResponse({"models": request.app.state.registry.describe()})


@router.get(PREFIX + "/defaults", response_model=None)
async def defaults(request: Request, scope: AnyScope) -> Response:
    """What a create form starts from: the caller's default project and location, where uploads
    are stored, and a suggested output prefix: the project's own output area
    (`{outputs root}/{project}`, BATCHPREDICT_OUTPUTS_ROOT). `projects`
    lists the projects the caller may use, sorted; for a caller allowed every project ("*"),
    `allProjects` is true and `projects` names those that have jobs, and its default project."""
    return JSONResponse(await _service(request).defaults(scope))


_UPLOAD = File(description="A JSONL file: one {\"request\": GenerateContentRequest} per line.")


@router.post(PREFIX + "/uploads:validate", response_model=None)
async def validate_upload(
    request: Request, scope: AnyScope, file: Annotated[UploadFile, _UPLOAD]
) -> Response:
    """Check every line of a JSONL file as the runner will, without storing it. Replies with
    `rowCount`, `validRowCount`, `invalidRowCount` and `problems`: the first 100 bad lines, each
    `{file, line (1-based), row (0-based), message}`. A file with bad lines is still a 200."""
    report = await _service(request).validate_upload(scope, file.file, file.filename)
    return JSONResponse(report.to_api())


@router.post(PREFIX + "/uploads", response_model=None)
async def upload(
    request: Request,
    scope: AnyScope,
    file: Annotated[UploadFile, _UPLOAD],
    allow_invalid_lines: bool = Query(
        False, alias="allowInvalidLines",
        description="Store the file even if some lines are bad (each becomes a failed row).",
    ),
) -> Response:
    """Check and store a JSONL file under the uploads root (BATCHPREDICT_UPLOADS_ROOT), then use
    the reply's `uri` in a job's `inputConfig.gcsSource.uris`. A file with bad lines is refused
    (400 naming the first) unless allowInvalidLines=true. The reply is the validation report
    plus `uri`."""
    uri, report = await _service(request).store_upload(
        scope, file.file, file.filename, allow_invalid_lines
    )
    return JSONResponse({"uri": uri, **report.to_api()})


@router.post(PREFIX + "/inputs:validate", response_model=None)
async def validate_inputs(
    request: Request,
    scope: AnyScope,
    body: InputUris,
    max_rows: int = Query(
        100_000, alias="maxRows", ge=1, le=10_000_000,
        description="Stop after this many rows (the reply says `truncated`).",
    ),
    project: str | None = Query(
        None, description="Whose data policy applies; default: the caller's default project.",
    ),
) -> Response:
    """Check the files that input URIs name (local paths, gs://, s3://, wildcards) line by line,
    as the runner will, under the project's data policy (403 for a URI it may not read). 404
    when a URI names nothing. Same reply as uploads:validate; reading stops after `maxRows`
    rows, BATCHPREDICT_VALIDATE_MAX_BYTES bytes or BATCHPREDICT_STORAGE_CALL_SECONDS seconds,
    with `truncated` true and `stoppedBy` naming the limit ("rows", "bytes", "deadline")."""
    report = await _service(request).validate_inputs(scope, body.uris, max_rows, project)
    return JSONResponse(report)


@router.get(JOB_PATH + "/predictions.jsonl", response_model=None)
async def download_predictions(request: Request, job_id: str, scope: JobScope) -> Response:
    """The job's predictions.jsonl; while it runs, the rows completed so far (its incremental
    chunks in row order), with the header `X-Batchpredict-Partial: true`. 404 when it has no
    predictions: not started, or no row completed (so far)."""
    job, reader = await _output(request, scope, job_id)
    if not job.output_dir:
        raise NotFound(f"Job {job.id} has no output yet: it has not started.")
    blocks = reader.blocks()
    first = await anyio.to_thread.run_sync(next, blocks, None)
    if first is None:
        raise NotFound(_no_predictions_message(job))
    partial = not job.state.is_terminal
    name = f"job-{job.id}-{'partial-' if partial else ''}predictions.jsonl"
    return StreamingResponse(
        itertools.chain([first], blocks),
        media_type="application/jsonl",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Batchpredict-Partial": "true" if partial else "false",
            "Cache-Control": "no-store",
        },
    )


@router.get(JOB_PATH + "/failedRows", response_model=None)
async def failed_rows(
    request: Request,
    job_id: str,
    scope: JobScope,
    page_size: int = Query(20, alias="pageSize", ge=1, le=1000),
) -> Response:
    """The first `pageSize` failed lines of the job's output so far (predictions.jsonl, or the
    incremental chunks while it runs): each output line as written (`status`, `request`,
    `response`, your own fields) plus `outputLine`, its 1-based line number in the output."""
    _, reader = await _output(request, scope, job_id)
    rows, read = await anyio.to_thread.run_sync(reader.first_failed, page_size)
    return JSONResponse({"failedRows": rows, "linesRead": read})


@router.get(JOB_PATH + "/progressHistory", response_model=None)
async def progress_history(request: Request, job_id: str, scope: JobScope) -> Response:
    """How the job's committed rows and tokens grew while it ran, for throughput charts:
    `{"samples": [{time, doneCount, totalTokenCount}]}`, oldest first, from its start. At most
    200 samples, spread evenly over the run (a long run keeps a coarser record); counts are
    cumulative, as in `progress`, so a rate is the difference of two samples over their time."""
    job = await _service(request).get(scope, parse_job_id(job_id))
    samples = [
        {
            "time": format_time(datetime.fromtimestamp(t, UTC)),
            "doneCount": str(int(done)),
            "totalTokenCount": str(int(tokens)),
        }
        for t, done, tokens in job.progress_history
    ]
    return JSONResponse({"samples": samples})


@router.post(JOB_PATH + ":resume", response_model=None)
async def resume_job(request: Request, job_id: str, scope: JobScope) -> Response:
    """Resume a job that FAILED because of its job store, storage or disk (its `error` says
    `"resumable": true`): it goes back to JOB_STATE_RUNNING and runs on from its committed
    rows, which are never sent to the model again; predictions.jsonl is assembled once, when
    it ends. Replies with the job. 400 FAILED_PRECONDITION for any other job (one that failed
    because of its input would fail the same way again)."""
    job = await _service(request).resume(scope, parse_job_id(job_id))
    return JSONResponse(job_resource(job))


def _no_predictions_message(job: Job) -> str:
    """Why a job's download has nothing in it, for its 404."""
    if not job.state.is_terminal:
        return (f"Job {job.id} has no predictions yet: no row has completed. Try again once "
                "its progress shows completed rows.")
    why = f" ({job.error['message']})" if job.error and job.error.get("message") else ""
    return (f"Job {job.id} has no predictions: it ended {job.state.short} before any row "
            f"completed{why}.")
