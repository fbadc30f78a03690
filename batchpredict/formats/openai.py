"""The OpenAI Batch API's lines, as OpenAI (and vLLM's `run-batch`) read and write them.

In: `{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`, the
body a chat completions request (translated by `chat.py`). Out:

    {"id": "batch_req_...", "custom_id": "r1",
     "response": {"status_code": 200, "request_id": "...", "body": <chat.completion>},
     "error": null}

A row the model could not answer, or whose body is not a valid request, gets the HTTP answer it
would have had (`status_code` 400, 429, 500..., body `{"error": {message, type, param, code}}`);
a line that is not a batch request at all (not JSON, no `custom_id`, a method or url other than
POST /v1/chat/completions) gets `"response": null` and `"error": {code, message}`. Both kinds
are failed rows: the OpenAI face puts them in the batch's error file.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from batchpredict.errors import BatchPredictError, InvalidArgument
from batchpredict.formats import Decoded, LineCodec
from batchpredict.formats.chat import CHAT_COMPLETIONS, chat_completion, chat_to_request
from batchpredict.jobs import LineFormat
from batchpredict.schema import parse_request

__all__ = ["OpenAILines"]

#: Marks, in a row's extras, a line that is not a request at all (its error is not an HTTP one).
_LINE_ERROR = "_line_error"
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


class OpenAILines(LineCodec):
    format = LineFormat.OPENAI
    example = ('{"custom_id": "request-1", "method": "POST", "url": "/v1/chat/completions", '
               '"body": {"model": "M", "messages": [...]}}')

    def decode(self, obj: dict[str, Any], where: str) -> Decoded:
        custom_id = obj.get("custom_id")
        extras: dict[str, Any] = {"custom_id": custom_id if isinstance(custom_id, str) else None}
        body = obj.get("body")
        problem = None
        if not isinstance(custom_id, str) or not custom_id:
            problem = f'{where} has no "custom_id": give each request a unique string id.'
        elif obj.get("method") != "POST":
            problem = f'{where} has method {obj.get("method")!r}; batch requests use "POST".'
        elif obj.get("url") != CHAT_COMPLETIONS:
            problem = (f"{where} has url {obj.get('url')!r}; batchpredict answers "
                       f"{CHAT_COMPLETIONS} requests.")
        elif not isinstance(body, dict):
            problem = f'{where} has no "body" object: the chat completions request.'
        if problem is not None:
            extras[_LINE_ERROR] = True
            return extras, body if body is not None else {}, InvalidArgument(
                f"{problem} Each line must look like {self.example}.")
        assert isinstance(body, dict)
        if isinstance(body.get("model"), str):
            extras["model"] = body["model"]
        try:
            return extras, body, parse_request(chat_to_request(body))
        except BatchPredictError as exc:
            return extras, body, exc

    def success_line(self, extras: dict[str, Any] | None, request: Any,
                     response: dict[str, Any], when: str) -> bytes:
        extras = extras or {}
        body = chat_completion(response, extras.get("model") or "", int(time.time()))
        return _line(extras.get("custom_id"),
                     {"status_code": 200, "request_id": secrets.token_hex(16), "body": body},
                     None)

    def error_line(self, extras: dict[str, Any] | None, request: Any,
                   error: BatchPredictError, when: str) -> bytes:
        extras = extras or {_LINE_ERROR: True}
        if extras.get(_LINE_ERROR):
            return _line(extras.get("custom_id"), None,
                         {"code": "invalid_request", "message": error.message})
        code = error.http_code
        kind = _ERROR_TYPES.get(code, "server_error" if code >= 500 else "invalid_request_error")
        body = {"error": {"message": error.message, "type": kind, "param": None,
                          "code": error.status.lower()}}
        return _line(extras.get("custom_id"),
                     {"status_code": code, "request_id": secrets.token_hex(16), "body": body},
                     None)

    def outcome(self, line: dict[str, Any]) -> tuple[bool, int, int]:
        response = line.get("response")
        if line.get("error") is not None or not isinstance(response, dict):
            return False, 0, 0
        if not 200 <= int(response.get("status_code") or 0) < 300:
            return False, 0, 0
        usage = (response.get("body") or {}).get("usage") or {}
        reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
                        or 0)
        return (True, int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0) - reasoning)


def _line(custom_id: str | None, response: dict[str, Any] | None,
          error: dict[str, Any] | None) -> bytes:
    line = {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": custom_id,
            "response": response, "error": error}
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
