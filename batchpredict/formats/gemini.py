"""The Gemini Developer API's batch file lines: `{"key", "request"}` in; out, `{"key",
"response"}` for an answered row or `{"key", "error": {code, message, status}}` for a failed one.
Other fields of an input line (such as an inlined request's `metadata`) are echoed too, so the
Gemini face can hand inlined responses back with their metadata."""

from __future__ import annotations

from typing import Any

import orjson

from batchpredict.errors import BatchPredictError
from batchpredict.formats import Decoded, LineCodec
from batchpredict.formats.vertex import decode_request_line
from batchpredict.jobs import LineFormat

__all__ = ["GeminiLines"]


class GeminiLines(LineCodec):
    format = LineFormat.GEMINI
    example = '{"key": "request-1", "request": {"contents": [...]}}'

    def decode(self, obj: dict[str, Any], where: str) -> Decoded:
        return decode_request_line(obj, where, self.example)

    def success_line(self, extras: dict[str, Any] | None, request: Any,
                     response: dict[str, Any], when: str) -> bytes:
        line: dict[str, Any] = dict(extras) if extras else {}
        line["response"] = response
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)

    def error_line(self, extras: dict[str, Any] | None, request: Any,
                   error: BatchPredictError, when: str) -> bytes:
        line: dict[str, Any] = dict(extras) if extras else {}
        line["error"] = error.to_json()["error"]
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)

    def outcome(self, line: dict[str, Any]) -> tuple[bool, int, int]:
        if "error" in line or "response" not in line:
            return False, 0, 0
        usage = (line.get("response") or {}).get("usageMetadata") or {}
        return (True, int(usage.get("promptTokenCount") or 0),
                int(usage.get("candidatesTokenCount") or 0))
