"""The one exception tree of batchpredict, each class mapped to a google.rpc code.

    BatchPredictError                  500 INTERNAL (base; never raised bare for a known cause)
    ├── InvalidArgument                400 INVALID_ARGUMENT   bad request, bad row, bad job spec
    ├── FailedPrecondition             400 FAILED_PRECONDITION  e.g. deleting a running job
    ├── Unauthenticated                401 UNAUTHENTICATED
    ├── PermissionDenied               403 PERMISSION_DENIED
    ├── NotFound                       404 NOT_FOUND
    ├── AlreadyExists                  409 ALREADY_EXISTS
    ├── ResourceExhausted              429 RESOURCE_EXHAUSTED  rate limits, quotas
    ├── Cancelled                      499 CANCELLED
    ├── Internal                       500 INTERNAL
    ├── Unavailable                    503 UNAVAILABLE         backend down or overloaded
    │   └── Outage                     503 UNAVAILABLE         the job store, storage or the disk
    │                                                          failed in a way that may pass
    └── DeadlineExceeded               504 DEADLINE_EXCEEDED   timeouts

The same error renders three ways: an HTTP reply body (`to_json`), a job's `error` field
(`to_job_error`, a google.rpc.Status with the gRPC code number), and the `status` string of a
failed output line (`row_status`), which Vertex writes as the HTTP reason phrase followed by the
reply body, on one line:
`Bad Request: {"error": {"code": 400, "message": "...", "status": "INVALID_ARGUMENT"}}`.
"""

from __future__ import annotations

import functools
import json
from http import HTTPStatus
from typing import Any, ClassVar

__all__ = [
    "AlreadyExists",
    "BatchPredictError",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "Outage",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "error_for_http_status",
    "plural",
]


class BatchPredictError(Exception):
    """Base of every error batchpredict raises on purpose."""

    code: ClassVar[int] = 500
    status: ClassVar[str] = "INTERNAL"
    #: google.rpc.Code number, used where a google.rpc.Status is expected (a job's `error`).
    grpc_code: ClassVar[int] = 13

    def __init__(self, message: str, *, http_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        # A backend may answer with an HTTP code our class does not carry (e.g. 502):
        # keep it so a row's status says exactly what the backend said.
        self.http_code = http_code if http_code is not None else self.code

    def to_job_error(self) -> dict[str, Any]:
        """google.rpc.Status as JSON, for a job's `error` field: the gRPC code number."""
        return {"code": self.grpc_code, "message": self.message}

    def to_json(self) -> dict[str, Any]:
        """The body of an HTTP error reply: the HTTP code and the status name."""
        return {"error": {"code": self.http_code, "message": self.message, "status": self.status}}

    def row_status(self) -> str:
        """The `status` of a failed output line, in Vertex's form."""
        try:
            phrase = HTTPStatus(self.http_code).phrase
        except ValueError:
            phrase = "Error"
        return f"{phrase}: {json.dumps(self.to_json())}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidArgument(BatchPredictError):
    code = 400
    status = "INVALID_ARGUMENT"
    grpc_code = 3


class FailedPrecondition(BatchPredictError):
    code = 400
    status = "FAILED_PRECONDITION"
    grpc_code = 9


class Unauthenticated(BatchPredictError):
    code = 401
    status = "UNAUTHENTICATED"
    grpc_code = 16


class PermissionDenied(BatchPredictError):
    code = 403
    status = "PERMISSION_DENIED"
    grpc_code = 7


class NotFound(BatchPredictError):
    code = 404
    status = "NOT_FOUND"
    grpc_code = 5


class AlreadyExists(BatchPredictError):
    code = 409
    status = "ALREADY_EXISTS"
    grpc_code = 6


class ResourceExhausted(BatchPredictError):
    code = 429
    status = "RESOURCE_EXHAUSTED"
    grpc_code = 8


class Cancelled(BatchPredictError):
    code = 499
    status = "CANCELLED"
    grpc_code = 1


class Internal(BatchPredictError):
    code = 500
    status = "INTERNAL"
    grpc_code = 13


class Unavailable(BatchPredictError):
    code = 503
    status = "UNAVAILABLE"
    grpc_code = 14


class Outage(Unavailable):
    """Infrastructure a job depends on failed in a way that may pass: the job store cannot be
    reached, a bucket answers 5xx or not at all, the disk is full. `resource` names it (a URI, a
    folder, the store). A job rides an outage out (`outages.py`) and, past the deadline, fails
    resumable from its committed rows."""

    def __init__(self, message: str, *, resource: str) -> None:
        super().__init__(message)
        self.resource = resource

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole: from a Ray actor to its driver
        return (functools.partial(type(self), resource=self.resource), (self.message,))


class DeadlineExceeded(BatchPredictError):
    code = 504
    status = "DEADLINE_EXCEEDED"
    grpc_code = 4


_BY_HTTP: dict[int, type[BatchPredictError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    408: DeadlineExceeded,
    409: AlreadyExists,
    429: ResourceExhausted,
    499: Cancelled,
    500: Internal,
    503: Unavailable,
    504: DeadlineExceeded,
}


def error_for_http_status(http_code: int, message: str) -> BatchPredictError:
    """The error a remote backend's HTTP reply stands for, keeping its exact code."""
    if http_code in _BY_HTTP:
        cls = _BY_HTTP[http_code]
    elif 400 <= http_code < 500:
        cls = InvalidArgument
    elif http_code >= 500:
        cls = Unavailable
    else:
        cls = Internal
    return cls(message, http_code=http_code)


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """'1 row', '2 rows', '0 rows': counts in messages read as English."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"
