"""The web console at /console: static HTML, CSS and JavaScript (no build step) that drive the
server through its public REST API, as any script could.

    /console, /console/...      the single page (index.html); the path picks the view:
                                /console (jobs), /console/create,
                                /console/projects/P/locations/L/batchPredictionJobs/ID (one job)
    /console/static/NAME        its assets
    /batchpredict/v1/...        the extra endpoints it uses (api.py), listed in /docs

`mount(app)` adds all of them to the server's app. The pages hold no data and need no token; the
JavaScript asks for one when the API answers 401 and keeps it in sessionStorage.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse, Response

from batchpredict.errors import NotFound
from batchpredict.server.console import api

__all__ = ["STATIC_DIR", "mount", "pages"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
#: The page renders untrusted text (job names, row statuses) through the DOM's textContent only;
#: this policy is the second line of defence: nothing but our own files may run or load.
_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": _POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _assets() -> dict[str, Path]:
    """Every file under static/, by its relative path: nothing else can be served."""
    return {
        p.relative_to(STATIC_DIR).as_posix(): p
        for p in STATIC_DIR.rglob("*")
        if p.is_file() and p.suffix in _TYPES
    }


def pages() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    assets = _assets()

    def index() -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type=_TYPES[".html"],
                            headers=_HEADERS)

    @router.get("/")
    async def root() -> Response:
        return RedirectResponse("/console/", status_code=307)

    @router.get("/console")
    async def console_root() -> Response:
        return RedirectResponse("/console/", status_code=307)

    @router.get("/console/static/{name:path}")
    async def asset(name: str) -> Response:
        path = assets.get(name)
        if path is None:
            raise NotFound(f"/console/static/{name} is not a console file.")
        return FileResponse(path, media_type=_TYPES[path.suffix], headers=_HEADERS)

    @router.get("/console/{view:path}")
    async def page(view: str) -> Response:
        return index()

    return router


def mount(app: FastAPI) -> None:
    """Add the console's pages and its extra API endpoints to the server's app."""
    app.include_router(api.router)
    app.include_router(pages())
