"""The /v1 paths that both the OpenAI face and the Gemini Developer API face answer, each call
handed to its face:

    GET /v1/batches   GET /v1/batches/{id}   GET /v1/files   GET, DELETE /v1/files/{id}

A call is the Gemini face's when it carries the key as `x-goog-api-key` or `?key=` (what the
google-genai SDK sends; the openai SDK sends `Authorization: Bearer`), or, for one batch, when
the id is a bare number (Gemini `batches/123`; OpenAI ids are `batch_123`). Everything else is
the OpenAI face's, with errors in OpenAI's shape.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response

from batchpredict.server.gemini import routes as gemini
from batchpredict.server.gemini.resource import is_gemini_request
from batchpredict.server.openai import routes as openai
from batchpredict.server.vertex.routes import express_scope
from batchpredict.service import Scope

__all__ = ["include_faces", "router"]

InScope = Annotated[Scope, Depends(express_scope)]
router = APIRouter(tags=["OpenAI Batch API", "Gemini Developer API batches"],
                   route_class=openai.OpenAIRoute)

def include_faces(app: FastAPI) -> None:
    """Mount the OpenAI and Gemini faces. Gemini's own routes first: `/v1/files/{id}:download`
    must not be taken for the shared `/v1/files/{id}`."""
    app.include_router(gemini.gemini_routes("v1beta", shared=True))
    app.include_router(gemini.gemini_routes("v1", shared=False))
    app.include_router(openai.router)
    app.include_router(router)


_AFTER = Query(None, description="OpenAI: the last id of the previous page.")
_LIMIT = Query(20, description="OpenAI: batches 1-100 (default 20), files up to 10000.")
_PAGE_SIZE = Query(0, alias="pageSize", description="Gemini: page size.")
_PAGE_TOKEN = Query("", alias="pageToken", description="Gemini: nextPageToken of the last page.")


@router.get("/v1/batches", response_model=None)
async def list_batches(request: Request, scope: InScope, after: str | None = _AFTER,
                       limit: int = _LIMIT, page_size: int = _PAGE_SIZE,
                       page_token: str = _PAGE_TOKEN) -> Response:
    """OpenAI: `{data, has_more, first_id, last_id}`; Gemini: `{operations, nextPageToken}`."""
    if is_gemini_request(request):
        return await gemini.list_batches(request, scope, page_size, page_token)
    return await openai.list_batches(request, scope, after, limit)


@router.get("/v1/batches/{batch_id}", response_model=None)
async def get_batch(request: Request, scope: InScope, batch_id: str) -> Response:
    """One batch: OpenAI's Batch (`batch_123`) or Gemini's operation (`123`)."""
    if is_gemini_request(request) or batch_id.isdigit():
        return await gemini.get_batch(request, scope, batch_id)
    return await openai.get_batch(request, scope, batch_id)


@router.get("/v1/files", response_model=None)
async def list_files(request: Request, scope: InScope, after: str | None = _AFTER,
                     limit: int = Query(10_000), order: str = Query("desc"),
                     purpose: str | None = Query(None), page_size: int = _PAGE_SIZE,
                     page_token: str = _PAGE_TOKEN) -> Response:
    """The caller's files, newest first, in the caller's API's shape."""
    if is_gemini_request(request):
        return await gemini.list_files(request, scope, page_size, page_token)
    return await openai.list_files(request, scope, after, limit, order, purpose)


@router.get("/v1/files/{file_id}", response_model=None)
async def get_file(request: Request, scope: InScope, file_id: str) -> Response:
    """One file: OpenAI's File object or Gemini's File."""
    if is_gemini_request(request):
        return await gemini.get_file(request, scope, file_id)
    return await openai.get_file(request, scope, file_id)


@router.delete("/v1/files/{file_id}", response_model=None)
async def delete_file(request: Request, scope: InScope, file_id: str) -> Response:
    """Delete a file (an upload's bytes go too; a batch output file leaves the job's output)."""
    if is_gemini_request(request):
        return await gemini.delete_file(request, scope, file_id)
    return await openai.delete_file(request, scope, file_id)
