"""The gemini backend: the Gemini API through the google-genai SDK, for users who hold a key.

Requests pass through untouched: the model is the entry's `served_model` (else the job's model,
short form), `contents` are the request's, and everything else the request sets
(`systemInstruction`, `generationConfig`, `safetySettings`, `tools`, `toolConfig`,
`cachedContent`, `labels`, `modelArmorConfig`) goes into the SDK's `GenerateContentConfig`.
The answer is the SDK's `GenerateContentResponse` dumped as camelCase JSON (the SDK's own client
fields left out), which is already what a Vertex output line holds.

Each call goes through `remote.RemoteCaller` (concurrency, rpm/tpm, timeout, retries with
backoff); the SDK's own retries are off so that one policy applies. `base_url` points the SDK
elsewhere (a test double, a proxy); `api_key_env` names the variable holding the key
(GEMINI_API_KEY by default).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from batchpredict.backends.base import Backend
from batchpredict.backends.remote import (
    RemoteCaller,
    RemoteFailure,
    RemoteSettings,
    estimate_tokens,
    parse_retry_after,
    validate_settings,
)
from batchpredict.errors import BatchPredictError, InvalidArgument

if TYPE_CHECKING:
    from batchpredict.schema import GenerateContentRequest

__all__ = ["GeminiBackend", "GeminiSettings"]

#: Request fields that the SDK takes in GenerateContentConfig rather than beside `contents`.
_CONFIG_FIELDS = ("systemInstruction", "safetySettings", "tools", "toolConfig", "cachedContent",
                  "labels", "modelArmorConfig")
#: Response fields of the SDK's own making, not the API's.
_SDK_FIELDS = {"sdk_http_response", "automatic_function_calling_history", "parsed"}


@dataclass
class GeminiSettings(RemoteSettings):
    api_key_env: str = "GEMINI_API_KEY"
    #: API version path (`v1beta` by default, the SDK's).
    api_version: str = ""

    @classmethod
    def from_options(cls, where: str, options: dict[str, Any]) -> GeminiSettings:
        return validate_settings(cls, where, options)


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Connection errors of the HTTP clients the SDK may use."""
    found: list[type[BaseException]] = [ConnectionError]
    try:
        import aiohttp

        found += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    except ImportError:  # pragma: no cover
        pass
    for name in ("httpx", "httpx2"):
        try:
            module = __import__(name)
            found.append(module.TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


class GeminiBackend(Backend):
    """Gemini requests answered by the Gemini API (or anything that speaks it)."""

    kind = "gemini"
    batch_size = 1

    def __init__(self, model: str, settings: GeminiSettings | None = None, *,
                 entry: str | None = None, caller: RemoteCaller | None = None) -> None:
        self.model = model
        self.settings = settings or GeminiSettings()
        self.entry = entry or model
        self.max_concurrency = self.settings.concurrency
        where = self.settings.base_url or "the Gemini API"
        self.caller = caller or RemoteCaller(self.settings, name=f"{where} ({model})")
        self.client: Any = None
        self._transient = _transient_errors()

    async def start(self) -> None:
        if self.client is not None:
            return
        from google import genai
        from google.genai import types

        st = self.settings
        options: dict[str, Any] = {"headers": dict(st.headers)} if st.headers else {}
        if st.base_url:
            options["base_url"] = st.base_url
        if st.api_version:
            options["api_version"] = st.api_version
        key = st.api_key(self.entry)
        # One attempt per call: retries are RemoteCaller's. (Without retry options the SDK
        # quietly retries a dropped connection after sleeping 1-10 s.)
        retry = types.HttpRetryOptions(attempts=1)
        self.client = genai.Client(
            api_key=key, http_options=types.HttpOptions(retry_options=retry, **options)
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aio.aclose()
            self.client = None

    async def generate(
        self, requests: list[GenerateContentRequest]
    ) -> list[dict[str, Any] | BatchPredictError]:
        if self.client is None:
            await self.start()
        if len(requests) == 1:
            return [await self._one(requests[0])]
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    def sdk_arguments(self, req: GenerateContentRequest) -> tuple[list[Any], Any]:
        """The request as the SDK's `contents` and `GenerateContentConfig`."""
        from google.genai import types
        from pydantic import TypeAdapter, ValidationError

        body = req.to_json()
        config = dict(body.get("generationConfig") or {})
        for name in _CONFIG_FIELDS:
            if name in body:
                config[name] = body[name]
        try:
            # JSON mode, so base64 strings become bytes as the API's JSON means them.
            contents = TypeAdapter(list[types.Content]).validate_json(
                orjson.dumps(body["contents"]))
            return contents, types.GenerateContentConfig.model_validate_json(orjson.dumps(config))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidArgument(
                f"Invalid JSON payload received. The Gemini SDK refused {where}: {first['msg']}."
            ) from None

    async def _one(self, req: GenerateContentRequest) -> dict[str, Any] | BatchPredictError:
        try:
            contents, config = self.sdk_arguments(req)
        except BatchPredictError as exc:
            return exc
        cfg = req.config
        chars = sum(len(p.text or "") for c in req.contents for p in c.parts)
        estimate = estimate_tokens(chars, cfg.max_output_tokens, cfg.candidate_count,
                                   self.settings.default_max_tokens)
        result = await self.caller.call(lambda: self._send(contents, config), tokens=estimate)
        if isinstance(result, BatchPredictError):
            return result
        out: dict[str, Any] = result.model_dump(
            mode="json", by_alias=True, exclude_none=True, exclude=_SDK_FIELDS
        )
        usage = out.get("usageMetadata") or {}
        self.caller.settle_tokens(estimate, usage.get("totalTokenCount"))
        out.setdefault("modelVersion", self.model)
        return out

    async def _send(self, contents: list[Any], config: Any) -> Any:
        from google.genai import errors

        try:
            return await self.client.aio.models.generate_content(
                model=self.model, contents=contents, config=config
            )
        except errors.APIError as exc:
            headers = getattr(getattr(exc, "response", None), "headers", None)
            raise RemoteFailure(
                int(exc.code or 500), exc.message or str(exc), parse_retry_after(headers)
            ) from exc
        except self._transient as exc:
            raise RemoteFailure(
                503, f"Connection to {self.settings.base_url or 'the Gemini API'} failed: "
                     f"{type(exc).__name__}: {exc}"
            ) from exc
        except ValueError as exc:  # the SDK refused the request before sending it
            raise RemoteFailure(400, str(exc)) from exc
