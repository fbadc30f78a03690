"""Vertex's batch lines: `{"request": GenerateContentRequest, ...}` in; out, the input's other
fields, then `status` ("" or the error in Vertex's form), `processed_time`, `request` and
`response`, as Vertex writes predictions.jsonl."""

from __future__ import annotations

from typing import Any

import orjson

from batchpredict.errors import BatchPredictError, InvalidArgument
from batchpredict.formats import Decoded, LineCodec
from batchpredict.jobs import LineFormat
from batchpredict.schema import parse_request

__all__ = ["VertexLines", "decode_request_line"]

_NEWLINE = orjson.OPT_APPEND_NEWLINE


def decode_request_line(obj: dict[str, Any], where: str, example: str) -> Decoded:
    """A line holding its GenerateContentRequest under `request`; every other field is echoed."""
    request = obj.pop("request", None)
    extras = obj or None
    if request is None:
        return extras, {}, InvalidArgument(
            f'{where} has no "request" field. Put the GenerateContentRequest under "request": '
            f"{example}."
        )
    try:
        return extras, request, parse_request(request)
    except BatchPredictError as exc:
        return extras, request, exc


class VertexLines(LineCodec):
    format = LineFormat.VERTEX
    example = '{"request": {"contents": [...]}}'

    def decode(self, obj: dict[str, Any], where: str) -> Decoded:
        return decode_request_line(obj, where, self.example)

    def success_line(self, extras: dict[str, Any] | None, request: Any,
                     response: dict[str, Any], when: str) -> bytes:
        if extras:
            return orjson.dumps({**extras, "status": "", "processed_time": when,
                                 "request": request, "response": response}, option=_NEWLINE)
        return orjson.dumps({"status": "", "processed_time": when, "request": request,
                             "response": response}, option=_NEWLINE)

    def error_line(self, extras: dict[str, Any] | None, request: Any,
                   error: BatchPredictError, when: str) -> bytes:
        line: dict[str, Any] = dict(extras) if extras else {}
        line["status"] = error.row_status()
        line["processed_time"] = when
        line["request"] = request
        line["response"] = {}
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)

    def outcome(self, line: dict[str, Any]) -> tuple[bool, int, int]:
        if line.get("status"):
            return False, 0, 0
        usage = (line.get("response") or {}).get("usageMetadata") or {}
        return (True, int(usage.get("promptTokenCount") or 0),
                int(usage.get("candidatesTokenCount") or 0))
