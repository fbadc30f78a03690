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

where {job} is projects/{p}/locations/{l}/batchPredictionJobs/{id}, the job's `name`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from batchpredict import storage
from batchpredict.data_gate import DataGate
from batchpredict.errors import InvalidArgument, NotFound
from batchpredict.jobs import Job
from batchpredict.server.console import inputs, outputs
from batchpredict.server.routes import JSONResponse, express_scope, vertex_scope
from batchpredict.server.service import DEFAULT_LOCATION, JobService, Scope, parse_job_id

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


def _settings(request: Request) -> Any:
    return request.app.state.settings


def _gate(request: Request) -> DataGate:
    """security: the data policy and bounded storage threads (data_gate.py)."""
    return request.app.state.gate  # type: ignore[no-any-return]


async def _job(request: Request, scope: Scope, job_id: str) -> Job:
    service: JobService = request.app.state.service
    return await service.get(scope, parse_job_id(job_id))


@router.get(PREFIX + "/models", response_model=None)
async def list_models(request: Request, scope: AnyScope) -> Response:
    """The model registry, in match order: `{"models": [{name, backend, description}]}`. A name
    may be a glob pattern (`gemini-*`): a job's `model` matching it goes to that backend."""
    return JSONResponse({"models": request.app.state.registry.describe()})


@router.get(PREFIX + "/defaults", response_model=None)
async def defaults(request: Request, scope: AnyScope) -> Response:
    """What a create form starts from: the caller's default project and location, where uploads
    are stored, and a suggested output prefix: the project's own output area
    (`{outputs root}/{project}`, BATCHPREDICT_OUTPUTS_ROOT)."""
    settings, project = _settings(request), scope.caller.default_project
    return JSONResponse({
        "project": project,
        "location": DEFAULT_LOCATION,
        "uploadsRoot": settings.uploads_uri.rstrip("/"),
        "outputUriPrefix": storage.join(settings.outputs_uri,
                                        _gate(request).upload_folder(project)),
    })


async def _check_upload(request: Request, file: UploadFile) -> inputs.InputReport:
    name = inputs.safe_file_name(file.filename)
    limit = _settings(request).max_line_bytes
    report = await _gate(request).run(
        inputs.check_stream, file.file, name, inputs.InputReport(), limit
    )
    inputs.require_rows(report, name)
    return report


_UPLOAD = File(description="A JSONL file: one {\"request\": GenerateContentRequest} per line.")


@router.post(PREFIX + "/uploads:validate", response_model=None)
async def validate_upload(
    request: Request, scope: AnyScope, file: Annotated[UploadFile, _UPLOAD]
) -> Response:
    """Check every line of a JSONL file as the runner will, without storing it. Replies with
    `rowCount`, `validRowCount`, `invalidRowCount` and `problems`: the first 100 bad lines, each
    `{file, line (1-based), row (0-based), message}`. A file with bad lines is still a 200."""
    report = await _check_upload(request, file)
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
    report = await _check_upload(request, file)
    if report.invalid and not allow_invalid_lines:
        raise InvalidArgument(report.summary())
    gate, project = _gate(request), scope.caller.default_project
    root = _settings(request).uploads_uri
    uri = await gate.run(
        inputs.store_upload, file.file, file.filename or "", root, gate.upload_folder(project)
    )
    gate.check_upload_uri(project, uri)
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
    project = project or scope.caller.default_project
    Scope(scope.caller, project, DEFAULT_LOCATION).check_parent()
    limit = _settings(request).max_line_bytes
    report = await _gate(request).validate_inputs(project, body.uris, limit, max_rows)
    return JSONResponse(report)


@router.get(JOB_PATH + "/predictions.jsonl", response_model=None)
async def download_predictions(request: Request, job_id: str, scope: JobScope) -> Response:
    """The job's predictions.jsonl; while it runs, the rows completed so far (its incremental
    chunks in row order), with the header `X-Batchpredict-Partial: true`."""
    job = await _job(request, scope, job_id)
    if not job.output_dir:
        raise NotFound(f"Job {job.id} has no output yet: it has not started.")
    _gate(request).check_download(job.project, job.output_dir)  # security: data policy
    partial = not job.state.is_terminal
    name = f"job-{job.id}-{'partial-' if partial else ''}predictions.jsonl"
    return StreamingResponse(
        outputs.iter_output_blocks(job),
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
    job = await _job(request, scope, job_id)
    if not job.output_dir:
        return JSONResponse({"failedRows": [], "linesRead": 0})
    _gate(request).check_download(job.project, job.output_dir)  # security: data policy
    rows, read = await _gate(request).run(outputs.first_failed_rows, job, page_size)
    return JSONResponse({"failedRows": rows, "linesRead": read})
