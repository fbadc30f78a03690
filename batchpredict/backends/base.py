"""The one interface every model backend implements.

A backend turns a batch of validated Gemini `GenerateContentRequest`s into one result per request:
either a `GenerateContentResponse` as a JSON-ready dict (camelCase, exactly what goes into the
output line's `response`), or a `BatchPredictError` whose `row_status()` becomes the line's
`status`.
A backend never raises for one bad row; raising from `generate` fails every row of that batch
with the raised error (mapped to INTERNAL when it is not a `BatchPredictError`).

The runner calls `generate` with at most `batch_size` requests and keeps at most
`max_concurrency` calls in flight. A local engine wants big batches and one call at a time; a
remote server wants batch_size 1 and many calls in flight.
"""

from __future__ import annotations

import abc
import logging
from typing import TYPE_CHECKING, Any, ClassVar

from batchpredict.errors import BatchPredictError, Internal

if TYPE_CHECKING:
    from batchpredict.schema import GenerateContentRequest

__all__ = ["Backend", "Result", "generate_per_row"]

log = logging.getLogger(__name__)

Result = "dict[str, Any] | BatchPredictError"


class Backend(abc.ABC):
    """A model that answers generateContent requests."""

    #: Short name used in the model registry's `backend = "..."`.
    kind: ClassVar[str] = ""
    #: Most requests per `generate` call.
    batch_size: int = 1
    #: Most `generate` calls in flight at once.
    max_concurrency: int = 1

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load weights, open connection pools, start a server. Called before the first
        `generate` and again each time a job takes the backend: a no-op when already started."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what `start` took."""

    @abc.abstractmethod
    async def generate(
        self, requests: list[GenerateContentRequest]
    ) -> list[dict[str, Any] | BatchPredictError]:
        """One result per request, in the same order."""


async def generate_per_row(
    backend: Backend, requests: list[GenerateContentRequest]
) -> list[dict[str, Any] | BatchPredictError]:
    """`backend.generate`, with a result for every request whatever the backend does: a raised
    BatchPredictError fails each request with it; any other exception (a backend bug), or the
    wrong number of results, fails each with INTERNAL, so no row is ever lost."""
    try:
        results = await backend.generate(requests)
    except BatchPredictError as exc:
        return [exc] * len(requests)
    except Exception as exc:
        log.exception("backend %s failed a batch", type(backend).__name__)
        return [Internal(f"The backend failed: {type(exc).__name__}: {exc}")] * len(requests)
    if len(results) != len(requests):
        error = Internal(
            f"The backend answered {len(results)} results for {len(requests)} requests."
        )
        return [error] * len(requests)
    return results
