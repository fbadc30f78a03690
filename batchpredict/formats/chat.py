"""OpenAI chat completions <-> Gemini GenerateContent: the inverse of the openai backend's mapping
(`backends/openai.py` sends Gemini requests to chat servers; this takes chat requests to any
backend and writes their answers as chat completions).

Request, chat completion body -> GenerateContentRequest (camelCase JSON, then validated by
`schema.parse_request` like any Gemini request):
- `messages`: system/developer -> `systemInstruction`; user -> user; assistant -> model. Content
  is a string or typed parts: `text`; `image_url` (a data: URL -> `inlineData`, any other URL ->
  `fileData`, fetched under the media policy); `input_audio` (wav/mp3 -> `inlineData`); `file`
  with `file_data` (a data: URL). Tool messages and tool calls are 400s.
- max_tokens / max_completion_tokens -> maxOutputTokens; temperature; top_p -> topP; top_k
  (a vLLM extension) -> topK; n -> candidateCount; stop -> stopSequences; seed;
  presence_penalty; frequency_penalty; response_format json_object / json_schema ->
  responseMimeType application/json (+ responseJsonSchema); logprobs / top_logprobs ->
  responseLogprobs / logprobs.
- `model`, `user`, `store`, `metadata`, `service_tier` and other routing hints are ignored (a batch
  runs on its own model); tools, streaming, logit_bias and unknown fields are 400s naming them.

Response, GenerateContentResponse -> chat completion: each candidate -> a choice (its text parts
joined, thoughts left out), finishReason STOP -> stop, MAX_TOKENS -> length, safety reasons ->
content_filter; logprobsResult -> logprobs.content; usageMetadata -> usage (thoughts count as
completion tokens, reported as reasoning_tokens).
"""

from __future__ import annotations

import mimetypes
import secrets
from typing import Any

from batchpredict.errors import InvalidArgument

__all__ = ["CHAT_COMPLETIONS", "chat_completion", "chat_to_request"]

CHAT_COMPLETIONS = "/v1/chat/completions"

_IGNORED = frozenset({
    "model", "user", "store", "metadata", "service_tier", "stream_options", "safety_identifier",
    "prompt_cache_key", "prompt_cache_retention", "parallel_tool_calls",
})
_UNSUPPORTED = frozenset({
    "tools", "tool_choice", "functions", "function_call", "logit_bias", "audio", "prediction",
    "web_search_options",
})
_SAMPLING = {
    "temperature": "temperature", "top_p": "topP", "top_k": "topK", "seed": "seed",
    "presence_penalty": "presencePenalty", "frequency_penalty": "frequencyPenalty",
    "n": "candidateCount", "max_tokens": "maxOutputTokens",
    "max_completion_tokens": "maxOutputTokens",
}
_ROLES = {"user": "user", "assistant": "model"}
_AUDIO = {"wav": "audio/wav", "mp3": "audio/mp3"}
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter",
           "RECITATION": "content_filter", "BLOCKLIST": "content_filter",
           "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
           "IMAGE_SAFETY": "content_filter"}


def chat_to_request(body: Any) -> dict[str, Any]:
    """A chat completions request body as a GenerateContentRequest (camelCase JSON)."""
    if not isinstance(body, dict):
        raise InvalidArgument(f"'body' must be an object (a chat completions request), got "
                              f"{type(body).__name__}.")
    for name in body:
        if name in _UNSUPPORTED:
            raise InvalidArgument(f"'{name}' is not supported in a batch here: batchpredict's "
                                  "backends answer plain chat requests. Remove it.")
        if name not in _IGNORED and name not in _SAMPLING and name not in (
                "messages", "stop", "stream", "response_format", "logprobs", "top_logprobs",
                "modalities"):
            raise InvalidArgument(f"Unrecognized request argument supplied: {name}")
    if body.get("stream"):
        raise InvalidArgument("'stream' must be false in a batch: each answer is one line.")
    if body.get("modalities") not in (None, ["text"]):
        raise InvalidArgument("Only the text modality is supported: set 'modalities' to "
                              '["text"] or leave it out.')
    request: dict[str, Any] = _messages(body.get("messages"))
    config = _config(body)
    if config:
        request["generationConfig"] = config
    return request


def _messages(messages: Any) -> dict[str, Any]:
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("'messages' is a required property: a non-empty list of "
                              '{"role": "user", "content": "..."} objects.')
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidArgument(f"Invalid type for '{where}': expected an object.")
        role = message.get("role")
        if message.get("tool_calls") or message.get("function_call"):
            raise InvalidArgument(f"'{where}.tool_calls' is not supported: tool calling is not "
                                  "available in batches here.")
        if role in ("system", "developer"):
            system += [p for p in _parts(message.get("content"), where) if "text" in p] or [
                {"text": ""}]
        elif role in _ROLES:
            contents.append({"role": _ROLES[role], "parts": _parts(message.get("content"), where)})
        else:
            raise InvalidArgument(
                f"Invalid value for '{where}.role': {role!r}. Supported roles: system, developer, "
                "user, assistant (tool messages are not supported)."
            )
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    return request


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list) or not content:
        raise InvalidArgument(f"Invalid type for '{where}.content': expected a string or a "
                              "non-empty list of content parts.")
    return [_part(part, f"{where}.content[{j}]") for j, part in enumerate(content)]


def _part(part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return {"text": part["text"]}
    if kind == "image_url":
        url = (part.get("image_url") or {}).get("url")
        if not isinstance(url, str) or not url:
            raise InvalidArgument(f"'{where}.image_url.url' is required.")
        return _media(url, where, "image/jpeg")
    if kind == "input_audio":
        audio = part.get("input_audio") or {}
        if audio.get("format") not in _AUDIO or not isinstance(audio.get("data"), str):
            raise InvalidArgument(f"'{where}.input_audio' needs base64 'data' and a 'format' of "
                                  "wav or mp3.")
        return {"inlineData": {"mimeType": _AUDIO[audio["format"]], "data": audio["data"]}}
    if kind == "file" and isinstance((part.get("file") or {}).get("file_data"), str):
        return _media(part["file"]["file_data"], where, "application/octet-stream")
    raise InvalidArgument(
        f"Invalid content part at '{where}': supported types are text, image_url, input_audio "
        "and file (with file_data)."
    )


def _media(url: str, where: str, default_mime: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        mime, _, encoding = header.partition(";")
        if not sep or encoding != "base64":
            raise InvalidArgument(f"'{where}' has a data: URL that is not base64 "
                                  "(data:MIME;base64,...).")
        return {"inlineData": {"mimeType": mime or default_mime, "data": data}}
    mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or default_mime
    return {"fileData": {"fileUri": url, "mimeType": mime}}


def _config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {
        name: body[key] for key, name in _SAMPLING.items() if body.get(key) is not None
    }
    stop = body.get("stop")
    if stop is not None:
        config["stopSequences"] = [stop] if isinstance(stop, str) else stop
    if body.get("logprobs"):
        config["responseLogprobs"] = True
    if body.get("top_logprobs") is not None:
        config["logprobs"] = body["top_logprobs"]
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        config["responseMimeType"] = "application/json"
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        config["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema is not None:
            config["responseJsonSchema"] = schema
    elif fmt is not None and fmt != {"type": "text"}:
        raise InvalidArgument("'response_format' must be {\"type\": \"text\"}, "
                              '{"type": "json_object"} or {"type": "json_schema", ...}.')
    return config


def chat_completion(response: dict[str, Any], model: str, created: int) -> dict[str, Any]:
    """A GenerateContentResponse as OpenAI's chat.completion object."""
    choices = []
    for i, candidate in enumerate(response.get("candidates") or []):
        parts = (candidate.get("content") or {}).get("parts") or []
        text = "".join(p.get("text", "") for p in parts if not p.get("thought"))
        choices.append({
            "index": candidate.get("index", i),
            "message": {"role": "assistant", "content": text},
            "logprobs": _logprobs(candidate.get("logprobsResult")),
            "finish_reason": _FINISH.get(candidate.get("finishReason", "STOP"), "stop"),
        })
    usage = response.get("usageMetadata") or {}
    prompt = int(usage.get("promptTokenCount") or 0)
    thoughts = int(usage.get("thoughtsTokenCount") or 0)
    completion = int(usage.get("candidatesTokenCount") or 0) + thoughts
    body: dict[str, Any] = {
        "id": f"chatcmpl-{response.get('responseId') or secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": created,
        "model": response.get("modelVersion") or model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
    }
    if thoughts:
        body["usage"]["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return body


def _logprobs(result: Any) -> dict[str, Any] | None:
    if not isinstance(result, dict) or not result.get("chosenCandidates"):
        return None
    top = result.get("topCandidates") or []
    content = []
    for i, chosen in enumerate(result["chosenCandidates"]):
        alternatives = (top[i].get("candidates") or []) if i < len(top) else []
        content.append({
            "token": chosen.get("token", ""),
            "logprob": chosen.get("logProbability", 0.0),
            "top_logprobs": [{"token": c.get("token", ""), "logprob": c.get("logProbability", 0.0)}
                             for c in alternatives],
        })
    return {"content": content}
