"""What a request must look like before any route sees it: the ASGI middleware `HttpGuard`, and
the access-log filter that keeps secrets out of logs.

- Host: without tokens (one trusted local user, loopback only) the Host header must name this
  machine (localhost, 127.x.x.x, [::1], any port) or one of BATCHPREDICT_ALLOWED_HOSTS, so a web
  page cannot reach the server through DNS rebinding. With tokens, the Host is checked only when
  BATCHPREDICT_ALLOWED_HOSTS is set.
- Cross-site: a browser request from another site (`Sec-Fetch-Site: cross-site` or `same-site`,
  or an `Origin` other than the server's own) to the API (/v1, /v1beta1, /batchpredict, /metrics)
  is refused, whatever its method; so is any cross-site request that is not a GET or HEAD. The
  console, /docs and /healthz stay reachable by following a link.
- Content-Type: a body sent to the JSON API must be `application/json` (415 otherwise); the
  console's uploads (`/batchpredict/v1/uploads[:validate]`) and the OpenAI face's `/v1/files`
  must be `multipart/form-data`; the Gemini face's resumable uploads (`/upload/...`) carry raw
  bytes of any type.
- Size: bodies are counted while they stream in; beyond BATCHPREDICT_MAX_REQUEST_BYTES (uploads:
  BATCHPREDICT_MAX_UPLOAD_BYTES) the reply is a 413.
Clients that are not browsers (the google-genai SDK, openai-style clients, curl, `batchpredict
jobs`) send neither Origin nor Sec-Fetch-* headers and pass. Every refusal has the Vertex error
shape `{"error": {"code", "message", "status"}}`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.exceptions import HTTPException

from batchpredict.errors import BatchPredictError, InvalidArgument, PermissionDenied

__all__ = ["HttpGuard", "RedactSecrets", "install_log_redaction"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_API_PREFIXES = ("/v1/", "/v1beta1/", "/v1beta/", "/upload/", "/batchpredict/", "/metrics")
#: Multipart file uploads: their own size limit (BATCHPREDICT_MAX_UPLOAD_BYTES).
_UPLOADS = ("/batchpredict/v1/uploads", "/batchpredict/v1/uploads:validate", "/v1/files")
#: Raw-byte uploads (the Gemini Files API's resumable protocol): any type, the upload limit.
_RAW_UPLOADS = ("/upload/",)
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _reply(error: BatchPredictError, send: Send) -> Awaitable[None]:
    body = orjson.dumps(error.to_json())

    async def go() -> None:
        await send({"type": "http.response.start", "status": error.http_code,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    return go()


def _split_host(value: str) -> tuple[str, int | None]:
    """("host", port) of a Host header or an origin's netloc; host lowercase, IPv6 bracketed."""
    value = value.strip().lower()
    m = re.fullmatch(r"(\[[0-9a-f:.]+\]|[^:\[\]]*)(?::(\d{1,5}))?", value)
    if not m:
        return value, None
    return m.group(1), int(m.group(2)) if m.group(2) else None


def is_loopback_host(host: str) -> bool:
    if host == "localhost" or host == "[::1]":
        return True
    return re.fullmatch(r"127\.\d{1,3}\.\d{1,3}\.\d{1,3}", host) is not None


class HttpGuard:
    """See the module docstring. `open_mode`: no tokens configured."""

    def __init__(self, app: Any, *, open_mode: bool, allowed_hosts: str = "",
                 max_request_bytes: int = 32 * 1024 * 1024,
                 max_upload_bytes: int = 1024 * 1024 * 1024) -> None:
        self.app = app
        self.allowed_hosts = {_split_host(h)[0] for h in allowed_hosts.split(",") if h.strip()}
        self.check_host = open_mode or bool(self.allowed_hosts)
        self.max_request_bytes = max_request_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        refusal = self._refusal(headers, path, method)
        if refusal is not None:
            await _reply(refusal, send)
            return
        upload = path in _UPLOADS or path.startswith(_RAW_UPLOADS)
        limit = self.max_upload_bytes if upload else self.max_request_bytes
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            await _reply(_too_large(int(declared), limit, path), send)
            return
        await self.app(scope, _counting(receive, limit, path), send)

    def _refusal(self, headers: dict[str, str], path: str, method: str) -> BatchPredictError | None:
        host = headers.get("host", "")
        if self.check_host:
            name = _split_host(host)[0]
            if not (is_loopback_host(name) or name in self.allowed_hosts):
                return PermissionDenied(
                    f"Host {host!r} is not served here. Without access tokens this server "
                    "answers only localhost, 127.0.0.1 and [::1]; add other names to "
                    "BATCHPREDICT_ALLOWED_HOSTS (and configure tokens to serve other machines)."
                )
        api = path.startswith(_API_PREFIXES)
        if api or method not in _SAFE_METHODS:
            site = headers.get("sec-fetch-site", "").lower()
            origin = headers.get("origin")
            if site in ("cross-site", "same-site") or (
                    origin is not None and not _same_origin(origin, host)):
                return PermissionDenied(
                    f"Cross-site request refused: a page on {origin or 'another site'} may not "
                    "call this server. Open the console on this server's own address, or call "
                    "the API from a script (no Origin header)."
                )
        if api and method not in _SAFE_METHODS:
            return _content_type_refusal(headers, path)
        return None


def _same_origin(origin: str, host: str) -> bool:
    if origin == "null":
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
        return False
    default = _DEFAULT_PORTS[parts.scheme]
    o_host, o_port = _split_host(parts.netloc)
    h_host, h_port = _split_host(host)
    return o_host == h_host and (o_port or default) == (h_port or default)


def _content_type_refusal(headers: dict[str, str], path: str) -> BatchPredictError | None:
    raw = headers.get("content-type")
    kind = (raw or "").split(";", 1)[0].strip().lower()
    has_body = headers.get("content-length", "0") not in ("", "0") or (
        "transfer-encoding" in headers)
    if path.startswith(_RAW_UPLOADS):
        return None
    if path in _UPLOADS:
        if kind == "multipart/form-data":
            return None
        return InvalidArgument(
            f"{path} takes a file as multipart/form-data (field `file`), not {raw or 'no type'}.",
            http_code=415,
        )
    if raw is None and not has_body:
        return None
    if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
        return None
    return InvalidArgument(
        f"The request body must be JSON sent with Content-Type: application/json, not "
        f"{raw or 'no Content-Type'}.", http_code=415,
    )


def _too_large(size: int | None, limit: int, path: str) -> BatchPredictError:
    setting = ("BATCHPREDICT_MAX_UPLOAD_BYTES" if path in _UPLOADS or path.startswith(_RAW_UPLOADS)
               else "BATCHPREDICT_MAX_REQUEST_BYTES")
    what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return InvalidArgument(
        f"The request body is {what}; the limit is {limit} bytes ({setting}).", http_code=413
    )


def _counting(receive: Receive, limit: int, path: str) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                # FastAPI passes an HTTPException raised while it reads the body through to the
                # app's handler, which renders it in the Vertex shape.
                raise HTTPException(413, _too_large(None, limit, path).message)
        return message

    return counted


# -- secrets out of logs -----------------------------------------------------------------------
_SECRET_QUERY = re.compile(r"(?i)([?&](?:key|api_key|apikey|token|access_token)=)[^&\s\"]*")
_AUTH_HEADER = re.compile(r"(?i)(authorization|x-goog-api-key)(['\"]?\s*[:=]\s*['\"]?)[^'\",\s]+"
                          r"(?:\s+[^'\",\s]+)?")


def redact(text: str) -> str:
    """`text` with ?key=... query values and Authorization / x-goog-api-key values hidden."""
    text = _SECRET_QUERY.sub(r"\1[redacted]", text)
    return _AUTH_HEADER.sub(r"\1\2[redacted]", text)


class RedactSecrets(logging.Filter):
    """Hides access tokens in log records (uvicorn's access log puts the query in its args)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v
                           for k, v in record.args.items()}
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)  # no args: the message is the text
        return True


def install_log_redaction(handlers_too: bool = False) -> None:
    """Add `RedactSecrets` to uvicorn's loggers (idempotent); with `handlers_too`, also to every
    handler of the root and uvicorn loggers, which covers records of any logger (`serve`)."""
    targets: list[logging.Filterer] = []
    for name in ("uvicorn.access", "uvicorn.error"):
        targets.append(logging.getLogger(name))
    if handlers_too:
        for name in ("", "uvicorn", "uvicorn.access", "uvicorn.error"):
            targets.extend(logging.getLogger(name).handlers)
    for target in targets:
        if not any(isinstance(f, RedactSecrets) for f in target.filters):
            target.addFilter(RedactSecrets())
