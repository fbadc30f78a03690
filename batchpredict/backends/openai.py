"""The openai backend: any OpenAI-compatible chat completions server (vLLM, llama.cpp server,
Ollama, `transformers serve`, OpenAI itself) answering Gemini requests.

One POST to `{base_url}/chat/completions` per row, through `remote.RemoteCaller` (concurrency,
rpm/tpm limits, timeout, retries). One aiohttp `ClientSession` per backend instance, opened in
`start()`, with a connection pool as large as `concurrency`.

Request, Gemini -> chat completions (messages and settings read through `chat.py`, the mapping
every engine shares):
- `systemInstruction` -> a `system` message; `contents` roles user/model -> user/assistant.
  A content of text parts only becomes one string (parts joined with "\\n", as the embedded
  engines do); with media it becomes a list of typed parts.
- `inlineData` / `fileData` (fetched through `batchpredict.media`, under its URI policy): images
  -> `image_url` data URLs (unless the entry says `images = false`), wav/mp3 -> `input_audio`,
  text/* -> text. Anything else (PDF, video), media in a model turn, function calls, `tools` and
  `cachedContent` make that row a 400 naming the part or field.
- `generationConfig`: temperature (unset: left out, so the server applies its model's default,
  see chat.py), topP -> top_p, topK -> top_k (a vLLM/llama.cpp extension),
  maxOutputTokens -> max_tokens (or `max_completion_tokens`, per `max_tokens_field`),
  stopSequences -> stop, seed, candidateCount -> n, presencePenalty, frequencyPenalty,
  responseMimeType application/json -> response_format json_object, with responseSchema (converted
  from Gemini's OpenAPI subset) or responseJsonSchema -> json_schema, responseLogprobs/logprobs ->
  logprobs/top_logprobs. Non-text responseModalities, speechConfig and imageConfig are 400s;
  safetySettings, labels, thinkingConfig and the other serving hints are ignored.

Response, chat completion -> Gemini: each choice -> a candidate (`content.parts[0].text`, role
model, `index`, finishReason stop -> STOP, length -> MAX_TOKENS, content_filter -> SAFETY), with
`avgLogprobs` (mean of the returned token logprobs) whenever the server returned logprobs and
`logprobsResult` when the request asked for them; `usageMetadata` from the server's usage
(reasoning tokens -> thoughtsTokenCount, cached prompt tokens -> cachedContentTokenCount);
`modelVersion` = the model name the server reports; `responseId` = the completion id.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import mimetypes
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from batchpredict.backends.base import Backend
from batchpredict.backends.chat import (
    Sampling,
    gemini_schema_to_json_schema,
    message_blocks,
    refuse_unsupported,
    response_format,
)
from batchpredict.backends.remote import (
    RemoteCaller,
    RemoteFailure,
    RemoteSettings,
    error_message,
    estimate_tokens,
    parse_retry_after,
    validate_settings,
)
from batchpredict.errors import BatchPredictError, InvalidArgument, error_for_http_status

if TYPE_CHECKING:
    from batchpredict.schema import GenerateContentRequest, Part

__all__ = [
    "OpenAIBackend",
    "OpenAISettings",
    "gemini_schema_to_json_schema",
    "to_chat_messages",
    "to_gemini_response",
]

OPENAI_URL = "https://api.openai.com/v1"
_WHO = "the openai backend"
_FINISH = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
    "tool_calls": "STOP",
    "function_call": "STOP",
    None: "FINISH_REASON_UNSPECIFIED",
}
_AUDIO_FORMATS = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav",
                  "audio/mp3": "mp3", "audio/mpeg": "mp3"}


@dataclass
class OpenAISettings(RemoteSettings):
    base_url: str = OPENAI_URL
    #: Whether the server takes images (`image_url` parts); false: image parts are 400s.
    images: bool = True
    #: `max_tokens` (most servers) or `max_completion_tokens` (OpenAI's reasoning models).
    max_tokens_field: str = "max_tokens"

    @classmethod
    def from_options(cls, where: str, options: dict[str, Any]) -> OpenAISettings:
        settings = validate_settings(cls, where, options)
        if settings.max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            raise InvalidArgument(
                f"{where}: max_tokens_field must be max_tokens or max_completion_tokens, "
                f"got {settings.max_tokens_field!r}."
            )
        if settings.base_url.startswith(OPENAI_URL) and not settings.api_key_env:
            raise InvalidArgument(
                f"{where}: base_url is OpenAI's, which needs an API key. Set "
                'api_key_env = "OPENAI_API_KEY" (the variable that holds the key).'
            )
        return settings


class OpenAIBackend(Backend):
    """Gemini requests answered by an OpenAI-compatible chat completions server."""

    kind = "openai"
    batch_size = 1

    def __init__(self, model: str, settings: OpenAISettings | None = None, *,
                 entry: str | None = None, caller: RemoteCaller | None = None) -> None:
        self.model = model
        self.settings = settings or OpenAISettings()
        self.entry = entry or model
        self.max_concurrency = self.settings.concurrency
        self.url = self.settings.base_url.rstrip("/") + "/chat/completions"
        self.caller = caller or RemoteCaller(self.settings, name=f"{self.url} ({model})")
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.session is not None:
            return
        st = self.settings
        headers = {"Content-Type": "application/json", **st.headers}
        key = st.api_key(self.entry)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=st.concurrency),
            headers=headers,
            # The whole-attempt timeout is RemoteCaller's; this only bounds a hung connect.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(30.0, st.timeout)),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def generate(
        self, requests: list[GenerateContentRequest]
    ) -> list[dict[str, Any] | BatchPredictError]:
        if self.session is None:
            await self.start()
        if len(requests) == 1:
            return [await self._one(requests[0])]
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, req: GenerateContentRequest) -> dict[str, Any] | BatchPredictError:
        try:
            body, prompt_chars = await self.chat_request(req)
        except BatchPredictError as exc:
            return exc
        cfg = req.config
        estimate = estimate_tokens(prompt_chars, cfg.max_output_tokens, cfg.candidate_count,
                                   self.settings.default_max_tokens)
        payload = orjson.dumps(body)
        result = await self.caller.call(lambda: self._post(payload), tokens=estimate)
        if isinstance(result, BatchPredictError):
            return result
        try:
            response = to_gemini_response(result, bool(cfg.response_logprobs), self.model)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            return error_for_http_status(
                502, f"{self.url} answered something that is not a chat completion ({exc!r})."
            )
        usage = response.get("usageMetadata") or {}
        self.caller.settle_tokens(estimate, usage.get("totalTokenCount"))
        return response

    async def _post(self, payload: bytes) -> Any:
        assert self.session is not None
        try:
            async with self.session.post(self.url, data=payload) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise RemoteFailure(
                        resp.status,
                        error_message(raw, resp.reason or f"HTTP {resp.status}"),
                        parse_retry_after(resp.headers),
                    )
        except aiohttp.ClientConnectionError as exc:  # refused, reset, dropped mid-answer
            raise RemoteFailure(503, f"Connection to {self.url} failed: "
                                     f"{type(exc).__name__}: {exc}") from exc
        except aiohttp.ClientPayloadError as exc:
            raise RemoteFailure(502, f"The answer from {self.url} was cut off: {exc}") from exc
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise RemoteFailure(502, f"{self.url} answered invalid JSON: {raw[:200]!r}") from None

    # -- request mapping ------------------------------------------------------------------
    async def chat_request(self, req: GenerateContentRequest) -> tuple[dict[str, Any], int]:
        """The chat completions body for `req`, and its prompt size in characters."""
        refuse_unsupported(req, _WHO)
        messages, chars = await to_chat_messages(req, self.settings.images)
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        body.update(_sampling(Sampling.from_config(req.config), self.settings.max_tokens_field))
        return body, chars


async def to_chat_messages(req: GenerateContentRequest,
                           images: bool = True) -> tuple[list[dict[str, Any]], int]:
    """Chat messages for a request, and the characters of text they hold."""
    messages: list[dict[str, Any]] = []
    chars = 0
    for where, role, content in message_blocks(req):
        items: list[dict[str, Any]] = []
        for j, part in enumerate(content.parts):
            if part.thought:
                continue  # the model's own earlier thoughts: not part of the conversation
            item = await _part(f"{where}.parts[{j}]", part, role, images)
            chars += len(item.get("text", ""))
            items.append(item)
        if all(item["type"] == "text" for item in items):
            messages.append({"role": role, "content": "\n".join(i["text"] for i in items)})
        else:
            messages.append({"role": role, "content": items})
    return messages, chars


async def _part(where: str, part: Part, role: str, images: bool) -> dict[str, Any]:
    if part.text is not None:
        return {"type": "text", "text": part.text}
    kind = part.kind()
    if part.inline_data is None and part.file_data is None:
        raise InvalidArgument(
            f"Unable to submit request because {where} is {kind}, which the openai backend "
            "does not support. Send text, images or audio."
        )
    if part.inline_data is not None:
        mime, uri = part.inline_data.mime_type.lower(), None
    else:
        fd = part.file_data
        assert fd is not None
        uri = fd.file_uri
        mime = (fd.mime_type or mimetypes.guess_type(uri)[0] or "").lower()
    if role != "user":
        raise InvalidArgument(
            f"Unable to submit request because {where} is {kind} ({mime}) in a {role} turn; "
            "OpenAI-compatible servers take media in user turns only."
        )
    if mime.startswith("image/"):
        if not images:
            raise InvalidArgument(
                f"Unable to submit request because {where} is an image ({mime}) and this "
                "model's server takes text only (images = false in the model registry)."
            )
        url = await _data_url(where, part, uri, mime)
        return {"type": "image_url", "image_url": {"url": url}}
    if mime in _AUDIO_FORMATS:
        data = await _base64(where, part, uri, mime)
        audio = {"data": data, "format": _AUDIO_FORMATS[mime]}
        return {"type": "input_audio", "input_audio": audio}
    if mime.startswith("text/") or mime in ("application/json",):
        raw = base64.b64decode(await _base64(where, part, uri, mime))
        return {"type": "text", "text": raw.decode("utf-8", "replace")}
    raise InvalidArgument(
        f"Unable to submit request because {where} is {kind} ({mime or 'unknown type'}), which "
        "the openai backend cannot send. It sends images, wav/mp3 audio and text files."
    )


async def _base64(where: str, part: Part, uri: str | None, mime: str) -> str:
    if uri is None:
        assert part.inline_data is not None
        data = part.inline_data.data
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(
                f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), "
                "Base64 decoding failed."
            ) from None
        return data
    try:
        from batchpredict.media import fetch_file_data
    except ImportError:  # pragma: no cover - media.py is part of the package
        raise InvalidArgument(
            f"Unable to submit request because {where} is fileData, which this installation "
            "cannot fetch. Send the file inline as inlineData."
        ) from None
    return base64.b64encode(await fetch_file_data(uri, mime)).decode("ascii")


async def _data_url(where: str, part: Part, uri: str | None, mime: str) -> str:
    return f"data:{mime};base64,{await _base64(where, part, uri, mime)}"


def _sampling(s: Sampling, max_tokens_field: str) -> dict[str, Any]:
    """The chat completions settings of a request. An unset temperature is left out: the
    server applies its model's default (chat.py's module docstring)."""
    out: dict[str, Any] = {}
    for name in ("temperature", "top_p", "top_k", "seed", "presence_penalty",
                 "frequency_penalty"):
        value = getattr(s, name)
        if value is not None:
            out[name] = value
    if s.max_output_tokens is not None:
        out[max_tokens_field] = s.max_output_tokens
    if s.stop_sequences:
        out["stop"] = list(s.stop_sequences)
    if s.candidate_count != 1:
        out["n"] = s.candidate_count
    if s.response_logprobs or s.logprobs is not None:
        out["logprobs"] = True
        if s.logprobs:
            out["top_logprobs"] = s.logprobs
    if response_format(s, _WHO) == "json":
        if s.json_schema is None:
            out["response_format"] = {"type": "json_object"}
        else:
            out["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "response", "schema": s.json_schema}}
    return out


# -- response mapping ---------------------------------------------------------------------------
def to_gemini_response(data: dict[str, Any], want_logprobs: bool = False,
                       fallback_model: str = "") -> dict[str, Any]:
    """A chat completion as a Gemini `GenerateContentResponse` (camelCase JSON)."""
    candidates = []
    for i, choice in enumerate(data["choices"]):
        message = choice.get("message") or {}
        text = message.get("content")
        if isinstance(text, list):  # some servers answer typed parts
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
        candidate: dict[str, Any] = {
            "content": {"role": "model", "parts": [{"text": text or ""}]},
            "finishReason": _FINISH.get(choice.get("finish_reason"), "OTHER"),
            "index": choice.get("index", i),
        }
        tokens = (choice.get("logprobs") or {}).get("content") or []
        if tokens:
            candidate["avgLogprobs"] = sum(t["logprob"] for t in tokens) / len(tokens)
            if want_logprobs:
                candidate["logprobsResult"] = _logprobs_result(tokens)
        candidates.append(candidate)
    out: dict[str, Any] = {"candidates": candidates,
                           "modelVersion": data.get("model") or fallback_model}
    if data.get("id"):
        out["responseId"] = str(data["id"])
    usage = data.get("usage")
    if usage:
        out["usageMetadata"] = _usage(usage)
    return out


def _usage(usage: dict[str, Any]) -> dict[str, int]:
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    thoughts = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    meta = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": completion - thoughts,
        "totalTokenCount": int(usage.get("total_tokens") or prompt + completion),
    }
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    if cached:
        meta["cachedContentTokenCount"] = cached
    return meta


def _logprobs_result(tokens: list[dict[str, Any]]) -> dict[str, Any]:
    chosen = [{"token": t.get("token", ""), "logProbability": t["logprob"]} for t in tokens]
    top = [
        {"candidates": [{"token": c.get("token", ""), "logProbability": c["logprob"]}
                        for c in t.get("top_logprobs") or []]}
        for t in tokens
    ]
    return {"topCandidates": top, "chosenCandidates": chosen}
