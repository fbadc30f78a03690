"""The Gemini Developer API face: batches and the Files API as the unmodified google-genai SDK
calls them with `genai.Client(api_key=TOKEN, http_options=HttpOptions(base_url=SERVER))`, under
`/v1beta` and `/v1` (the SDK's default version with a custom base_url):

    POST   /{v}/models/{model}:batchGenerateContent     inlined requests or a `fileName`
    GET    /{v}/batches[/{id}]   DELETE /{v}/batches/{id}   POST /{v}/batches/{id}:cancel
    POST   /upload/{v}/files     the resumable upload: start, upload, finalize
    GET    /{v}/files[/{id}]     DELETE /{v}/files/{id}     GET /{v}/files/{id}:download

A batch is a job with `face` gemini and Gemini file lines (`{key, request}` in, `{key, response}`
or `{key, error}` out). Inlined requests become a file in the project's file store first (keys
are their positions, their `metadata` rides along), so the runner reads every batch the same way;
their responses come back inlined, in input order, with their metadata. A file batch answers
with `responsesFile`, a file of every output line. The key (`x-goog-api-key`) is one of the
server's tokens; this face lists and shows only batches made through it.

On /v1, the paths this face shares with the OpenAI face are routed by `server/batch_paths.py`.
"""

from __future__ import annotations

import io
from typing import Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from batchpredict.errors import BatchPredictError, InvalidArgument, NotFound
from batchpredict.jobs import Face, Job, LineFormat
from batchpredict.server.gemini.resource import batch_operation, file_resource, parse_batch_name
from batchpredict.server.vertex.routes import JSONResponse, caller, express_scope
from batchpredict.service import JobRequest, JobService, Scope

__all__ = ["delete_file", "gemini_routes", "get_batch", "get_file", "list_batches",
           "list_files"]

InScope = Annotated[Scope, Depends(express_scope)]


def _service(request: Request) -> JobService:
    return request.app.state.service  # type: ignore[no-any-return]


def _version(request: Request) -> str:
    path = request.url.path.removeprefix("/upload")
    return path.split("/", 2)[1]


# -- batches ----------------------------------------------------------------------------------
async def create_batch(request: Request, scope: Scope, model: str,
                       body: dict[str, Any]) -> Response:
    svc = _service(request)
    batch = body.get("batch")
    if not isinstance(batch, dict):
        raise InvalidArgument('The body must be {"batch": {"displayName": ..., "inputConfig": '
                              '{"requests": {"requests": [...]}} or {"fileName": "files/ID"}}}.')
    if batch.get("webhookConfig"):
        raise InvalidArgument("batch.webhookConfig is not supported: poll the batch instead.")
    config = batch.get("inputConfig") or {}
    inlined = (config.get("requests") or {}).get("requests")
    if isinstance(inlined, list) and inlined:
        lines = b"".join(orjson.dumps(_inlined_line(i, item)) + b"\n"
                         for i, item in enumerate(inlined))
        source = await svc.files.upload(scope, io.BytesIO(lines), "inlined-requests.jsonl",
                                        "batch")
        src = "inlined"
    elif isinstance(config.get("fileName"), str):
        source = await svc.files.get(scope, config["fileName"].removeprefix("files/"))
        src = "file"
    else:
        raise InvalidArgument("batch.inputConfig needs requests.requests (a non-empty list) "
                              "or fileName (files/ID).")
    name = model.removeprefix("models/")
    job = await svc.submit(scope, JobRequest(
        display_name=str(batch.get("displayName") or f"batch of {name}"),
        model=f"models/{name}",
        input_uris=[source.uri],
        output_prefix=svc.output_prefix_for(scope),
        face=Face.GEMINI,
        line_format=LineFormat.GEMINI,
        face_info={"src": src, "input_file": source.id},
    ))
    return JSONResponse(await _render(svc, scope, job))


def _inlined_line(index: int, item: Any) -> dict[str, Any]:
    line: dict[str, Any] = {"key": str(index)}
    if isinstance(item, dict):
        line.update({k: item[k] for k in ("request", "metadata") if k in item})
    return line


async def _job(svc: JobService, scope: Scope, batch_id: str) -> Job:
    job = await svc.get(scope, parse_batch_name(batch_id))
    if job.face != Face.GEMINI:
        raise NotFound(f"Batch batches/{batch_id} was not found.")
    return job


async def _render(svc: JobService, scope: Scope, job: Job) -> dict[str, Any]:
    output: dict[str, Any] | None = None
    if job.state.is_terminal and job.output_dir:
        if job.face_info.get("src") == "inlined":
            output = {"inlinedResponses": {"inlinedResponses": await _inlined(svc, scope, job)}}
        else:
            files = await svc.files.job_outputs(job, ("all",))
            if "all" in files:
                output = {"responsesFile": f"files/{files['all'].id}"}
    return batch_operation(job, output)


async def _inlined(svc: JobService, scope: Scope, job: Job) -> list[dict[str, Any]]:
    _, reader = await svc.output(scope, job.id)

    def read() -> list[dict[str, Any]]:
        out = []
        for raw in reader.lines():
            line = orjson.loads(raw)
            item = {k: line[k] for k in ("response", "error", "metadata") if k in line}
            out.append(item)
        return out

    return await anyio.to_thread.run_sync(read)


async def get_batch(request: Request, scope: Scope, batch_id: str) -> Response:
    svc = _service(request)
    return JSONResponse(await _render(svc, scope, await _job(svc, scope, batch_id)))


async def list_batches(request: Request, scope: Scope, page_size: int,
                       page_token: str) -> Response:
    svc = _service(request)
    jobs, token = await svc.list(scope, lambda j: j.face == Face.GEMINI, page_size, page_token,
                                 filter_text="face=gemini")
    body: dict[str, Any] = {"operations": [await _render(svc, scope, j) for j in jobs]}
    if token:
        body["nextPageToken"] = token
    return JSONResponse(body)


async def cancel_batch(request: Request, scope: Scope, batch_id: str) -> Response:
    svc = _service(request)
    await svc.cancel(scope, (await _job(svc, scope, batch_id)).id)
    return JSONResponse({})


async def delete_batch(request: Request, scope: Scope, batch_id: str) -> Response:
    svc = _service(request)
    await svc.delete(scope, (await _job(svc, scope, batch_id)).id)
    return JSONResponse({})


# -- files ------------------------------------------------------------------------------------
async def upload(request: Request) -> Response:
    """The resumable upload protocol: `start` (authenticated) answers an upload URL carrying a
    secret; `upload` and `upload, finalize` send the bytes to it."""
    token = request.query_params.get("upload_id")
    if token is None:
        return await _start_upload(request)
    commands = {c.strip() for c in request.headers.get("x-goog-upload-command", "").split(",")}
    try:
        offset = int(request.headers.get("x-goog-upload-offset") or 0)
        f = await _service(request).files.append_upload(
            token, offset, await request.body(), "finalize" in commands)
    except BatchPredictError as exc:  # the status header stops the SDK from retrying
        return JSONResponse(exc.to_json(), status_code=exc.http_code,
                            headers={"x-goog-upload-status": "final"})
    except ValueError:
        err = InvalidArgument("X-Goog-Upload-Offset must be a number of bytes.")
        return JSONResponse(err.to_json(), 400, headers={"x-goog-upload-status": "final"})
    if "finalize" not in commands:
        return Response(headers={"x-goog-upload-status": "active"})
    body = {"file": file_resource(f, str(request.base_url), _version(request))}
    return JSONResponse(body, headers={"x-goog-upload-status": "final"})


async def _start_upload(request: Request) -> Response:
    scope = Scope(await caller(request))
    headers = request.headers
    if headers.get("x-goog-upload-protocol") != "resumable" or "start" not in headers.get(
            "x-goog-upload-command", ""):
        raise InvalidArgument("Uploads use the resumable protocol: X-Goog-Upload-Protocol: "
                              "resumable and X-Goog-Upload-Command: start.")
    raw = await request.body()
    try:
        meta = (orjson.loads(raw) if raw.strip() else {}).get("file") or {}
    except (orjson.JSONDecodeError, AttributeError):
        raise InvalidArgument('The start request body must be {"file": {...}} or empty.') from None
    def field(camel: str, snake: str) -> Any:  # protobuf JSON takes either spelling
        return meta.get(camel) if meta.get(camel) is not None else meta.get(snake)

    size = headers.get("x-goog-upload-header-content-length") or field("sizeBytes", "size_bytes")
    _, token = await _service(request).files.start_upload(
        scope,
        field("displayName", "display_name") or headers.get("x-goog-upload-file-name")
        or "upload",
        headers.get("x-goog-upload-header-content-type") or field("mimeType", "mime_type")
        or "application/octet-stream",
        int(size) if size is not None and str(size).isdigit() else None,
    )
    url = (f"{str(request.base_url).rstrip('/')}/upload/{_version(request)}/files"
           f"?upload_id={token}&upload_protocol=resumable")
    return Response(headers={"x-goog-upload-url": url, "x-goog-upload-status": "active"})


async def get_file(request: Request, scope: Scope, file_id: str) -> Response:
    f = await _service(request).files.get(scope, file_id)
    return JSONResponse(file_resource(f, str(request.base_url), _version(request)))


async def list_files(request: Request, scope: Scope, page_size: int,
                     page_token: str) -> Response:
    size = max(1, min(page_size or 10, 100))
    files, more = await _service(request).files.list(scope, size, page_token or None)
    base, version = str(request.base_url), _version(request)
    body: dict[str, Any] = {"files": [file_resource(f, base, version) for f in files]}
    if more and files:
        body["nextPageToken"] = files[-1].id
    return JSONResponse(body)


async def delete_file(request: Request, scope: Scope, file_id: str) -> Response:
    await _service(request).files.delete(scope, file_id)
    return JSONResponse({})


async def download(request: Request, scope: Scope, file_id: str) -> Response:
    _, blocks = await _service(request).files.content(scope, file_id)

    async def stream() -> Any:
        while (block := await anyio.to_thread.run_sync(next, blocks, None)) is not None:
            yield block

    return StreamingResponse(stream(), media_type="application/octet-stream")


def gemini_routes(version: str, shared: bool) -> APIRouter:
    """The face under /{version}; with `shared`, also the paths it shares with the OpenAI face
    (on /v1 `batch_paths.py` serves those)."""
    router = APIRouter(tags=["Gemini Developer API batches"])
    v = f"/{version}"
    PageSize = Query(0, alias="pageSize")
    PageToken = Query("", alias="pageToken")

    @router.post(v + "/models/{model}:batchGenerateContent", response_model=None)
    async def batch_generate_content(request: Request, scope: InScope, model: str,
                                     body: Annotated[dict[str, Any], Body()]) -> Response:
        """Create a batch of inlined requests or from an uploaded file; its operation."""
        return await create_batch(request, scope, model, body)

    @router.post(v + "/batches/{batch_id}:cancel", response_model=None)
    async def cancel(request: Request, scope: InScope, batch_id: str) -> Response:
        """Cancel a batch; replies {}."""
        return await cancel_batch(request, scope, batch_id)

    @router.delete(v + "/batches/{batch_id}", response_model=None)
    async def delete(request: Request, scope: InScope, batch_id: str) -> Response:
        """Delete a finished batch (its output files stay); replies {}."""
        return await delete_batch(request, scope, batch_id)

    @router.post("/upload" + v + "/files", response_model=None)
    async def upload_file(request: Request) -> Response:
        """The resumable upload protocol (X-Goog-Upload-* headers)."""
        return await upload(request)

    @router.get(v + "/files/{file_id}:download", response_model=None)
    async def download_file(request: Request, scope: InScope, file_id: str) -> Response:
        """A file's bytes (`alt=media`)."""
        return await download(request, scope, file_id)

    if shared:
        @router.get(v + "/batches", response_model=None)
        async def batches(request: Request, scope: InScope, page_size: int = PageSize,
                          page_token: str = PageToken) -> Response:
            """Batches newest first: {operations, nextPageToken}."""
            return await list_batches(request, scope, page_size, page_token)

        @router.get(v + "/batches/{batch_id}", response_model=None)
        async def batch(request: Request, scope: InScope, batch_id: str) -> Response:
            """One batch's operation."""
            return await get_batch(request, scope, batch_id)

        @router.get(v + "/files", response_model=None)
        async def files(request: Request, scope: InScope, page_size: int = PageSize,
                        page_token: str = PageToken) -> Response:
            """Files newest first: {files, nextPageToken}."""
            return await list_files(request, scope, page_size, page_token)

        @router.get(v + "/files/{file_id}", response_model=None)
        async def file(request: Request, scope: InScope, file_id: str) -> Response:
            """One File."""
            return await get_file(request, scope, file_id)

        @router.delete(v + "/files/{file_id}", response_model=None)
        async def remove_file(request: Request, scope: InScope, file_id: str) -> Response:
            """Delete a file; replies {}."""
            return await delete_file(request, scope, file_id)

    return router
