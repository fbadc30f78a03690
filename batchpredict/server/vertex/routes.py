"""The Vertex face: the BatchPredictionJob REST methods, mounted four times by the app:

    /v1/projects/{project}/locations/{location}/batchPredictionJobs...     Vertex form
    /v1beta1/projects/{project}/locations/{location}/batchPredictionJobs...  (the SDK's default)
    /v1/batchPredictionJobs...    /v1beta1/batchPredictionJobs...          express mode

Each handler authenticates (through its scope), turns the body into a `JobRequest` (job_spec.py),
calls the one `JobService` and renders the job as Vertex does (resource.py); errors are raised as
`BatchPredictError`s, which the app renders as `{"error": {code, message, status}}`.
"""

import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from batchpredict.jobs import Job, format_time, utcnow
from batchpredict.server.vertex.filters import compile_filter
from batchpredict.server.vertex.job_spec import JobSpec
from batchpredict.server.vertex.resource import job_resource
from batchpredict.service import Caller, JobService, Scope, parse_job_id

__all__ = ["JSONResponse", "express_scope", "job_routes", "vertex_scope"]


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def caller(request: Request) -> Caller:
    client = request.client.host if request.client else None
    return request.app.state.access.authenticate(  # type: ignore[no-any-return]
        request.headers, request.query_params, client
    )


async def vertex_scope(
    project: str, location: str, who: Annotated[Caller, Depends(caller)]
) -> Scope:
    return Scope(who, project, location)


async def express_scope(who: Annotated[Caller, Depends(caller)]) -> Scope:
    return Scope(who)


def _service(request: Request) -> JobService:
    return request.app.state.service  # type: ignore[no-any-return]


def _delete_operation(job: Job) -> dict[str, Any]:
    """A done Operation, as Vertex's delete returns."""
    now = format_time(utcnow())
    return {
        "name": f"projects/{job.project}/locations/{job.location}/operations/"
                f"{secrets.randbelow(9 * 10**18) + 10**18}",
        "metadata": {
            "@type": "type.googleapis.com/google.cloud.aiplatform.v1.DeleteOperationMetadata",
            "genericMetadata": {"createTime": now, "updateTime": now},
        },
        "done": True,
        "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
    }


_JOB: dict[int | str, dict[str, Any]] = {200: {"description": "The BatchPredictionJob."}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": 'INVALID_ARGUMENT / FAILED_PRECONDITION: {"error": {...}}'},
    401: {"description": "UNAUTHENTICATED: no or unknown token."},
    404: {"description": "NOT_FOUND: no such job in the caller's projects."},
}


def job_routes(prefix: str, scope_of: Callable[..., Awaitable[Scope]]) -> APIRouter:
    """The job methods under `prefix`, written out in full in each route's path, so metrics can
    label requests by route template."""
    router = APIRouter(tags=["batchPredictionJobs"], responses=_ERRORS)
    InScope = Annotated[Scope, Depends(scope_of)]
    collection = f"{prefix}/batchPredictionJobs"

    @router.post(collection, response_model=None, responses=_JOB)
    async def create(
        request: Request, spec: JobSpec, scope: InScope
    ) -> Response:
        """Create a job; it waits in JOB_STATE_PENDING until a slot is free, then runs."""
        svc = _service(request)
        job = await svc.submit(scope, spec.job_request())
        return JSONResponse(job_resource(job))

    @router.get(collection, response_model=None)
    async def list_jobs(
        request: Request,
        scope: InScope,
        filter: str | None = Query(None, description='e.g. state="JOB_STATE_SUCCEEDED"'),
        page_size: int = Query(0, alias="pageSize", description="At most 1000; 0: 100."),
        page_token: str = Query("", alias="pageToken"),
    ) -> Response:
        """Jobs newest first: {batchPredictionJobs: [...], nextPageToken}."""
        svc = _service(request)
        jobs, token = await svc.list(
            scope, compile_filter(filter), page_size, page_token, filter_text=filter
        )
        body: dict[str, Any] = {"batchPredictionJobs": [job_resource(j) for j in jobs]}
        if token:
            body["nextPageToken"] = token
        return JSONResponse(body)

    @router.get(collection + "/{job_id}", response_model=None, responses=_JOB)
    async def get(request: Request, job_id: str, scope: InScope) -> Response:
        """One job."""
        svc = _service(request)
        return JSONResponse(job_resource(await svc.get(scope, parse_job_id(job_id))))

    @router.post(collection + "/{job_id}:cancel", response_model=None)
    async def cancel(request: Request, job_id: str, scope: InScope) -> Response:
        """Cancel a job (asynchronous): a pending job ends CANCELLED at once; a running one
        becomes CANCELLING and ends CANCELLED keeping every completed row. Replies {}."""
        await _service(request).cancel(scope, parse_job_id(job_id))
        return JSONResponse({})

    @router.delete(collection + "/{job_id}", response_model=None)
    async def delete(request: Request, job_id: str, scope: InScope) -> Response:
        """Delete a finished job (its output stays); replies with a done Operation."""
        job = await _service(request).delete(scope, parse_job_id(job_id))
        return JSONResponse(_delete_operation(job))

    return router
