"""The OpenAI face: the Batch API and the Files API it uses, as the unmodified `openai` SDK calls
them with `OpenAI(base_url=SERVER + "/v1", api_key=TOKEN)`:

    POST /v1/files                       multipart: file, purpose, expires_after
    GET  /v1/files[/{id}]   DELETE /v1/files/{id}   GET /v1/files/{id}/content
    POST /v1/batches        GET /v1/batches[/{id}]  POST /v1/batches/{id}/cancel

The token is the same as everywhere (`Authorization: Bearer TOKEN`); files and batches go to the
token's default project, and a token that may not use a project sees none of its files or
batches (404). A batch is a job with `face` openai and OpenAI lines: its model is the one its
input file's first line names (`body.model`), every line runs on it. Its output file holds the
lines of succeeded rows, its error file those of failed rows (views of the job's output).
This face lists and shows only the batches made through it; the console shows every job.

`GET /v1/files`, `/v1/files/{id}`, `/v1/batches` and `/v1/batches/{id}` are also the Gemini
face's paths: `server/batch_paths.py` routes each call to its face. Errors come back in OpenAI's
shape, `{"error": {message, type, param, code}}` (`OpenAIRoute`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from batchpredict.errors import BatchPredictError, InvalidArgument, NotFound
from batchpredict.formats.chat import CHAT_COMPLETIONS
from batchpredict.jobs import Face, Job, LineFormat
from batchpredict.server.gemini.resource import is_gemini_request
from batchpredict.server.openai.resource import (
    batch_object,
    error_body,
    file_object,
    parse_batch_id,
)
from batchpredict.server.vertex.job_spec import describe_validation_errors
from batchpredict.server.vertex.routes import JSONResponse, express_scope
from batchpredict.service import JobRequest, JobService, Scope

__all__ = ["OpenAIRoute", "delete_file", "get_batch", "get_file", "list_batches", "list_files",
           "router"]

InScope = Annotated[Scope, Depends(express_scope)]
#: Endpoints OpenAI batches may name, and why the ones other than chat completions are refused.
_OTHER_ENDPOINTS = ("/v1/responses", "/v1/embeddings", "/v1/completions", "/v1/moderations")


class OpenAIRoute(APIRoute):
    """A route whose errors are worded as OpenAI's API words them (unless the call came from a
    Gemini client, on the paths the two faces share)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                if is_gemini_request(request):
                    raise
                err = InvalidArgument(describe_validation_errors(list(exc.errors())))
                return JSONResponse(error_body(err), status_code=400)
            except BatchPredictError as exc:
                if is_gemini_request(request):
                    raise
                return JSONResponse(error_body(exc), status_code=exc.http_code)

        return answer


router = APIRouter(tags=["OpenAI Batch API"], route_class=OpenAIRoute)


def _service(request: Request) -> JobService:
    return request.app.state.service  # type: ignore[no-any-return]


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(min_length=1)
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_expires_after: dict[str, Any] | None = None


# -- files ------------------------------------------------------------------------------------
@router.post("/v1/files", response_model=None)
async def upload_file(
    request: Request,
    scope: InScope,
    file: Annotated[UploadFile, File(description="A JSONL file of batch requests.")],
    purpose: Annotated[str, Form(description='"batch" for a batch input file.')],
    anchor: Annotated[str | None, Form(alias="expires_after[anchor]")] = None,
    seconds: Annotated[int | None, Form(alias="expires_after[seconds]")] = None,
) -> Response:
    """Upload a file (purpose `batch` for a batch's input); the File object."""
    if anchor not in (None, "created_at"):
        raise InvalidArgument("expires_after[anchor] must be created_at.")
    stored = await _service(request).files.upload(
        scope, file.file, file.filename, purpose, expires_after=seconds)
    return JSONResponse(file_object(stored))


async def list_files(request: Request, scope: Scope, after: str | None, limit: int,
                     order: str, purpose: str | None) -> Response:
    if order != "desc":
        raise InvalidArgument("order must be desc: files are listed newest first.")
    files, more = await _service(request).files.list(
        scope, max(1, min(limit, 10_000)), after, purpose)
    return JSONResponse(_page([file_object(f) for f in files], more))


async def get_file(request: Request, scope: Scope, file_id: str) -> Response:
    return JSONResponse(file_object(await _service(request).files.get(scope, file_id)))


async def delete_file(request: Request, scope: Scope, file_id: str) -> Response:
    deleted = await _service(request).files.delete(scope, file_id)
    return JSONResponse({"id": deleted.id, "object": "file", "deleted": True})


@router.get("/v1/files/{file_id}/content", response_model=None)
async def file_content(request: Request, scope: InScope, file_id: str) -> Response:
    """A file's bytes (a batch's output file: its lines so far)."""
    _, blocks = await _service(request).files.content(scope, file_id)
    return StreamingResponse(_in_thread(blocks), media_type="application/octet-stream")


async def _in_thread(blocks: Any) -> Any:
    while (block := await anyio.to_thread.run_sync(next, blocks, None)) is not None:
        yield block


# -- batches ----------------------------------------------------------------------------------
@router.post("/v1/batches", response_model=None)
async def create_batch(request: Request, scope: InScope, body: BatchCreate) -> Response:
    """Create a batch from an uploaded `batch` file; it starts `validating` (pending)."""
    svc = _service(request)
    if body.completion_window != "24h":
        raise InvalidArgument("completion_window must be 24h.")
    if body.endpoint != CHAT_COMPLETIONS:
        why = ("batchpredict's backends generate text; they serve no embedding, moderation or "
               "raw-completion model" if body.endpoint in _OTHER_ENDPOINTS else "unknown endpoint")
        raise InvalidArgument(f"endpoint {body.endpoint} is not supported ({why}): use "
                              f"{CHAT_COMPLETIONS}.")
    metadata = body.metadata or {}
    if len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise InvalidArgument("metadata takes at most 16 pairs, keys up to 64 characters and "
                              "values up to 512.")
    source = await svc.files.get(scope, body.input_file_id)
    if source.purpose != "batch" or source.is_output:
        raise InvalidArgument(f"File {source.id} has purpose {source.purpose}; a batch's input "
                              "file must be uploaded with purpose batch.")
    expires = (body.output_expires_after or {}).get("seconds")
    request_ = JobRequest(
        display_name=metadata.get("name") or f"openai batch of {source.filename}",
        model=await _model_of(svc, source),
        input_uris=[source.uri],
        output_prefix=svc.output_prefix_for(scope),
        labels=dict(metadata),
        face=Face.OPENAI,
        line_format=LineFormat.OPENAI,
        face_info={"input_file_id": source.id, "endpoint": body.endpoint,
                   "completion_window": body.completion_window,
                   "output_expires_after": expires},
    )
    return JSONResponse(await _render(svc, await svc.submit(scope, request_)))


async def _model_of(svc: JobService, source: Any) -> str:
    """The model the batch runs: the first line that names one (`body.model`)."""
    for raw in await svc.files.head(source, 20):
        try:
            model = (orjson.loads(raw).get("body") or {}).get("model")
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if isinstance(model, str) and model:
            return model
    raise InvalidArgument(f"File {source.id} names no model: each line's body needs "
                          '"model", as in {"custom_id": "r1", "method": "POST", "url": '
                          '"/v1/chat/completions", "body": {"model": "M", "messages": [...]}}.')


async def _job(svc: JobService, scope: Scope, batch_id: str) -> Job:
    job = await svc.get(scope, parse_batch_id(batch_id))
    if job.face != Face.OPENAI:
        raise NotFound(f"No batch found with id '{batch_id}'.")
    return job


async def _render(svc: JobService, job: Job) -> dict[str, Any]:
    files = await svc.files.job_outputs(
        job, ("succeeded", "failed"), job.face_info.get("output_expires_after"))
    return batch_object(job, files)


async def get_batch(request: Request, scope: Scope, batch_id: str) -> Response:
    svc = _service(request)
    return JSONResponse(await _render(svc, await _job(svc, scope, batch_id)))


async def list_batches(request: Request, scope: Scope, after: str | None,
                       limit: int) -> Response:
    svc = _service(request)
    below = parse_batch_id(after) if after else None
    jobs, token = await svc.list(scope, lambda j: j.face == Face.OPENAI,
                                 max(1, min(limit, 100)), filter_text="face=openai", below=below)
    return JSONResponse(_page([await _render(svc, j) for j in jobs], bool(token)))


@router.post("/v1/batches/{batch_id}/cancel", response_model=None)
async def cancel_batch(request: Request, scope: InScope, batch_id: str) -> Response:
    """Cancel a batch: `cancelling`, then `cancelled` with every completed row in its output."""
    svc = _service(request)
    job = await _job(svc, scope, batch_id)
    await svc.cancel(scope, job.id)
    return JSONResponse(await _render(svc, await svc.get(scope, job.id)))


def _page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": more}

