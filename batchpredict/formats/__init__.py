"""Line formats: how one input line becomes a request and one answer becomes an output line.

A job's `line_format` (`jobs.LineFormat`) picks its codec; everything else (reading rows, the
runner, chunks, assembling, resume) is the same for every format.

    vertex   {"request": {...}, ...}                      -> {..., status, processed_time, request,
                                                              response}            (vertex.py)
    openai   {"custom_id", "method", "url", "body"}       -> {id, custom_id, response, error}
                                                              (openai.py; chat.py translates)
    gemini   {"key", "request"}                           -> {key, response} | {key, error}
                                                              (gemini.py)

A codec never raises for a bad line: `decode` returns the error, which becomes that row's output
line, so one bad line never stops a job.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import orjson

from batchpredict.errors import BatchPredictError, InvalidArgument
from batchpredict.jobs import LineFormat, RowCounts
from batchpredict.schema import GenerateContentRequest

__all__ = ["Decoded", "LineCodec", "codec_for", "detect_format"]

#: (extras echoed on output, the request as given, the parsed request or why it is bad)
Decoded = tuple[dict[str, Any] | None, Any, GenerateContentRequest | BatchPredictError]


class LineCodec(abc.ABC):
    format: ClassVar[LineFormat]
    #: One valid line, quoted in error messages.
    example: ClassVar[str]

    @abc.abstractmethod
    def decode(self, obj: dict[str, Any], where: str) -> Decoded:
        """One input line (a JSON object); `where` names it in messages ("Line 3 of in.jsonl")."""

    @abc.abstractmethod
    def success_line(self, extras: dict[str, Any] | None, request: Any,
                     response: dict[str, Any], when: str) -> bytes:
        """The output line of a row answered with `response` (a GenerateContentResponse)."""

    @abc.abstractmethod
    def error_line(self, extras: dict[str, Any] | None, request: Any,
                   error: BatchPredictError, when: str) -> bytes:
        """The output line of a row that failed with `error`."""

    @abc.abstractmethod
    def outcome(self, line: dict[str, Any]) -> tuple[bool, int, int]:
        """(succeeded, prompt tokens, output tokens) of one output line, to recount chunks."""

    def failed(self, line: dict[str, Any]) -> bool:
        return not self.outcome(line)[0]

    def count(self, line: dict[str, Any], into: RowCounts) -> None:
        """Add one output line to the counts: tokens only for successful rows."""
        ok, prompt, output = self.outcome(line)
        if not ok:
            into.failed += 1
            return
        into.succeeded += 1
        into.prompt_tokens += prompt
        into.candidates_tokens += output


def codec_for(fmt: LineFormat | str) -> LineCodec:
    from batchpredict.formats import gemini, openai, vertex

    codecs: dict[str, type[LineCodec]] = {
        LineFormat.VERTEX: vertex.VertexLines,
        LineFormat.OPENAI: openai.OpenAILines,
        LineFormat.GEMINI: gemini.GeminiLines,
    }
    try:
        return codecs[LineFormat(fmt)]()
    except ValueError:
        raise InvalidArgument(
            f"Unknown line format {fmt!r}; use one of {', '.join(f.value for f in LineFormat)}."
        ) from None


def detect_format(first_line: bytes) -> LineFormat:
    """The format of a file from its first line: OpenAI's when it has `custom_id` and `body`,
    else Vertex's (a Gemini file line, `{key, request}`, is also a valid Vertex line)."""
    try:
        obj = orjson.loads(first_line)
    except orjson.JSONDecodeError:
        return LineFormat.VERTEX
    if isinstance(obj, dict) and "custom_id" in obj and "body" in obj:
        return LineFormat.OPENAI
    return LineFormat.VERTEX
