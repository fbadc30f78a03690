"""The FastAPI app: Vertex's batch prediction REST API, the scheduler that runs its jobs, health
and metrics. `create_app(settings)` builds it; `serve(settings, host, port)` runs it with uvicorn.

    /v1[beta1]/projects/{p}/locations/{l}/batchPredictionJobs[/{id}[:cancel]]   see routes.py
    /v1[beta1]/batchPredictionJobs[/{id}[:cancel]]                              express mode
    /v1/files, /v1/batches                      the OpenAI Batch API (openai/)
    /v1[beta]/batches, /v1[beta]/files, /upload/v1[beta]/files, :batchGenerateContent
                                                the Gemini Developer API (gemini/); on /v1 the
                                                paths both faces use go through batch_paths.py
    /healthz   /metrics   /docs (OpenAPI)
    /console   the web console (console/), and the extra endpoints it uses

`app.state` holds what a page of the console needs: settings, store, registry, scheduler,
service (the job methods), access (the token policy) and metrics.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from batchpredict.config import Settings
from batchpredict.errors import (
    BatchPredictError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    error_for_http_status,
)
from batchpredict.server import batch_paths, console
from batchpredict.server.auth import HOW_TO_CONFIGURE, AccessPolicy, is_loopback
from batchpredict.server.http_guard import HttpGuard, install_log_redaction
from batchpredict.server.metrics import CONTENT_TYPE, LatencyMiddleware, Metrics
from batchpredict.server.vertex.job_spec import describe_validation_errors
from batchpredict.server.vertex.routes import (
    JSONResponse,
    caller,
    express_scope,
    job_routes,
    vertex_scope,
)
from batchpredict.service import JobService
from batchpredict.store.base import JobStore

__all__ = ["check_bind_address", "create_app", "serve"]

log = logging.getLogger(__name__)
VERSIONS = ("v1", "v1beta1")


def create_app(
    settings: Settings | None = None, store: JobStore | None = None, registry: Any = None
) -> FastAPI:
    """The server app. Without `store`/`registry`, they come from `settings` (and are closed
    when the app shuts down)."""
    settings = settings or Settings.from_env()
    access = AccessPolicy.from_settings(settings)
    own_store = store is None
    # the data policy of every project (restricted once tokens are configured), through the gate
    service = JobService.open(settings, store, registry, restricted=not access.is_open)
    store, registry, scheduler = service.store, service.registry, service.scheduler
    metrics = Metrics(store, scheduler)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await scheduler.start()
        try:
            yield
        finally:
            await service.close(store=own_store)

    # FastAPIOffline serves /docs with Swagger UI bundled in the package, not from a CDN:
    # the docs work on a machine without internet.
    app = FastAPIOffline(
        title="batchpredict",
        description="Vertex AI batch prediction for Gemini, self-hosted.",
        version=_version(),
        lifespan=lifespan,
        default_response_class=JSONResponse,
        strict_content_type=False,  # a JSON body without a Content-Type is still JSON
    )
    app.state.settings = settings
    app.state.store = store
    app.state.registry = registry
    app.state.scheduler = scheduler
    app.state.service = service
    app.state.access = access
    app.state.gate = service.gate
    app.state.metrics = metrics

    _install_routes(app, scheduler, metrics)
    _install_error_handlers(app)
    app.add_middleware(LatencyMiddleware, histogram=metrics.latency)
    # Host, cross-site, Content-Type and body size, before any route (http_guard.py)
    app.add_middleware(
        HttpGuard, open_mode=access.is_open, allowed_hosts=settings.allowed_hosts,
        max_request_bytes=settings.max_request_bytes, max_upload_bytes=settings.max_upload_bytes,
    )
    install_log_redaction()  # no ?key= tokens in access logs
    return app


def _install_routes(app: FastAPI, scheduler: Any, metrics: Metrics) -> None:
    """Every face's routes, health and metrics, and the console."""
    for version in VERSIONS:
        parent = f"/{version}/projects/{{project}}/locations/{{location}}"
        app.include_router(job_routes(parent, vertex_scope))
        app.include_router(job_routes(f"/{version}", express_scope))
    batch_paths.include_faces(app)  # the OpenAI Batch API and the Gemini Developer API

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> Response:
        """Liveness: the process answers and its scheduler loop is alive (else 503)."""
        if not scheduler.alive:
            return JSONResponse({"status": "scheduler stopped"}, status_code=503)
        return JSONResponse({"status": "ok", "runningJobs": len(scheduler.running)})

    @app.get("/metrics", tags=["operations"])
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus exposition: jobs by state, rows, tokens, request latency. With tokens
        configured, any valid token may read it (figures cover every project)."""
        await caller(request)
        body = await anyio.to_thread.run_sync(metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

    console.mount(app)  # the web console at /console and its /batchpredict/v1 endpoints


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BatchPredictError)
    async def our_error(request: Request, exc: BatchPredictError) -> Response:
        return JSONResponse(exc.to_json(), status_code=exc.http_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        err = InvalidArgument(describe_validation_errors(list(exc.errors())))
        return JSONResponse(err.to_json(), status_code=err.http_code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = (f"{request.url.path} is not a batchpredict path. Jobs live under "
                       "/v1/projects/P/locations/L/batchPredictionJobs; see /docs.")
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs."
        else:
            message = str(exc.detail)
        err = error_for_http_status(exc.status_code, message)
        return JSONResponse(err.to_json(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        err = Internal(f"Internal error: {type(exc).__name__}. The server log has the details.")
        return JSONResponse(err.to_json(), status_code=500)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batchpredict")
    except PackageNotFoundError:
        return "0"


def check_bind_address(settings: Settings, host: str) -> None:
    """Refuse to listen beyond this machine when no access token is configured."""
    if is_loopback(host):
        return
    if AccessPolicy.from_settings(settings).is_open:
        raise InvalidArgument(
            f"Refusing to listen on {host} without access tokens: anyone who can reach it could "
            f"read and run jobs. {HOW_TO_CONFIGURE} Or serve on 127.0.0.1."
        )


def check_port_free(host: str, port: int) -> None:
    """A clear error, before anything starts, when the address is taken (uvicorn's own is a
    raw OSError line after start-up)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise FailedPrecondition(
                f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Another program (another "
                "`batchpredict serve`?) is using that port: stop it, or pass --port with a free "
                "port."
            ) from None


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8080,
          log_level: str = "info") -> None:
    """Run the server until SIGINT/SIGTERM; shutdown interrupts runners, which keep their rows."""
    import uvicorn

    check_bind_address(settings, host)
    check_port_free(host, port)
    logging.basicConfig(level=log_level.upper(), format="%(levelname)-9s %(name)s: %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="on",
        timeout_graceful_shutdown=10,
    )
    install_log_redaction(handlers_too=True)  # after uvicorn configured its logging
    uvicorn.Server(config).run()
