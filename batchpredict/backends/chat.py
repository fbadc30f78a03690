"""Gemini requests as chat messages and one neutral set of sampling settings, shared by every
chat engine: the embedded engines (`onnx_engine.py`, `local.py`) and OpenAI-compatible servers
(`openai.py`). Also what the embedded engines answer with: a Gemini response built from the
sequences they generated.

Messages: `systemInstruction` becomes a system message, first; `contents` roles user/model become
user/assistant (no role: user). The text parts of one content are joined with "\\n"; thought
parts (the model's own earlier thinking) are left out. `message_blocks` is that walk;
`text_messages` is the text-only form the embedded engines take, where any other part (media,
function calls) makes the row a 400 naming the part. openai.py builds typed parts for media on
the same walk.

Sampling: `Sampling.from_config(generationConfig)` reads every setting an engine may honour once,
and `response_format` checks responseMimeType/responseSchema/responseJsonSchema the same way for
every engine (a Gemini `responseSchema` is converted to JSON Schema by
`gemini_schema_to_json_schema`).

The default temperature (an unset `generationConfig.temperature`). Vertex and the Gemini API
read an unset field as "the model's default", which for Gemini models is sampling at temperature
1.0. batchpredict does the same everywhere:
- the embedded engines sample at `DEFAULT_TEMPERATURE` (1.0) unless their registry entry says
  otherwise (`default_temperature = 0` makes unset mean greedy);
- the openai backend leaves `temperature` out of the request, so the server applies its model's
  own default (1.0 on OpenAI; vLLM reads the model's generation_config).
An explicit temperature 0 is greedy decoding on every engine (and the only setting whose rows
`dedupe.py` shares). Before this module the transformers engine decoded greedily when temperature
was unset, and the openai backend left it to the server: the two disagreed.

Seeds: candidate i of a row draws from its own random stream, seeded by `candidate_seed(seed, i)`,
so a row's output depends only on the row (never on what shares its batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from batchpredict.errors import InvalidArgument
from batchpredict.media import check_allowed

if TYPE_CHECKING:
    from batchpredict.schema import Content, GenerateContentRequest, GenerationConfig, Part

__all__ = [
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "DEFAULT_TEMPERATURE",
    "ROLES",
    "Sampling",
    "candidate_seed",
    "find_stop",
    "gemini_response",
    "gemini_schema_to_json_schema",
    "message_blocks",
    "refuse_unsupported",
    "response_format",
    "text_messages",
]

#: The temperature of a request that sets none (Gemini's default; see the module docstring).
DEFAULT_TEMPERATURE = 1.0
#: The embedded engines' output budget when maxOutputTokens is unset.
DEFAULT_MAX_OUTPUT_TOKENS = 256
ROLES = {"user": "user", "model": "assistant", None: "user"}
_MASK63 = (1 << 63) - 1


# -- messages -----------------------------------------------------------------------------------
def message_blocks(req: GenerateContentRequest) -> list[tuple[str, str, Content]]:
    """(where, chat role, content) for the system instruction and each content, in order."""
    blocks: list[tuple[str, str, Content]] = []
    if req.system_instruction is not None:
        blocks.append(("system_instruction", "system", req.system_instruction))
    for i, content in enumerate(req.contents):
        blocks.append((f"contents[{i}]", ROLES.get(content.role, "user"), content))
    return blocks


def text_messages(req: GenerateContentRequest, model_version: str) -> list[dict[str, str]]:
    """Chat messages of a text-only model; InvalidArgument naming the first part that is not
    text."""
    messages = []
    for where, role, content in message_blocks(req):
        texts = []
        for j, part in enumerate(content.parts):
            if part.thought:
                continue
            kind = part.kind()
            if kind != "text":
                if part.file_data is not None:  # a refused URI is said to be refused first
                    check_allowed(part.file_data.file_uri)
                raise InvalidArgument(
                    _text_only_message(f"{where}.parts[{j}]", part, kind, model_version)
                )
            texts.append(part.text or "")
        messages.append({"role": role, "content": "\n".join(texts)})
    return messages


def _text_only_message(where: str, part: Part, kind: str | None, model_version: str) -> str:
    blob = part.inline_data or part.file_data
    mime = getattr(blob, "mime_type", None)
    if blob is not None:
        what = f"{kind} ({mime})" if mime else kind
        other = f"takes {mime}" if mime else "takes files"
    else:
        what, other = kind, f"supports {kind}"
    return (
        f"Unable to submit request because {where} is {what}, and the model "
        f"{model_version} takes text only. Remove the part or use a model that {other}."
    )


# -- what an engine cannot honour ---------------------------------------------------------------
def _other_modalities(req: GenerateContentRequest) -> bool:
    return any(m.upper() != "TEXT" for m in req.config.response_modalities or [])


_UNSUPPORTED: dict[str, Callable[[GenerateContentRequest], bool]] = {
    "tools": lambda r: bool(r.tools),
    "toolConfig": lambda r: bool(r.tool_config),
    "cachedContent": lambda r: r.cached_content is not None,
    "generationConfig.responseModalities other than TEXT": _other_modalities,
    "generationConfig.speechConfig": lambda r: r.config.speech_config is not None,
    "generationConfig.imageConfig": lambda r: r.config.image_config is not None,
}


def refuse_unsupported(req: GenerateContentRequest, who: str) -> None:
    """InvalidArgument naming the first field that a text chat engine cannot honour (tools,
    cached content, non-text output); `who` says whose limit it is ("the openai backend")."""
    for name, present in _UNSUPPORTED.items():
        if present(req):
            raise InvalidArgument(
                f"Unable to submit request because it sets {name}, which {who} does not "
                "support. Remove it and try again."
            )


# -- sampling -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sampling:
    """generationConfig as an engine reads it; None: unset (the engine's default applies)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_output_tokens: int | None = None
    #: Non-empty stop sequences, in the request's order.
    stop_sequences: tuple[str, ...] = ()
    seed: int | None = None
    candidate_count: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_logprobs: bool = False
    logprobs: int | None = None
    #: Lower-cased; "" when unset.
    response_mime_type: str = ""
    #: responseJsonSchema, else responseSchema converted to JSON Schema; None when neither.
    json_schema: Any = None
    #: Which field `json_schema` came from, for messages.
    schema_field: str | None = None

    @classmethod
    def from_config(cls, cfg: GenerationConfig) -> Sampling:
        schema, schema_field = cfg.response_json_schema, "responseJsonSchema"
        if schema is None and cfg.response_schema is not None:
            schema = gemini_schema_to_json_schema(cfg.response_schema)
            schema_field = "responseSchema"
        return cls(
            temperature=None if cfg.temperature is None else float(cfg.temperature),
            top_p=None if cfg.top_p is None else float(cfg.top_p),
            top_k=None if cfg.top_k is None else int(cfg.top_k),
            max_output_tokens=cfg.max_output_tokens,
            stop_sequences=tuple(s for s in cfg.stop_sequences or [] if s),
            seed=cfg.seed,
            candidate_count=cfg.candidate_count or 1,
            presence_penalty=cfg.presence_penalty,
            frequency_penalty=cfg.frequency_penalty,
            response_logprobs=bool(cfg.response_logprobs),
            logprobs=cfg.logprobs,
            response_mime_type=(cfg.response_mime_type or "").lower(),
            json_schema=schema,
            schema_field=schema_field if schema is not None else None,
        )

    def temperature_or(self, default: float = DEFAULT_TEMPERATURE) -> float:
        """The temperature to decode at: the request's, else the engine's default."""
        return self.temperature if self.temperature is not None else default


def response_format(sampling: Sampling, who: str) -> str:
    """"text" or "json" (constrained to `sampling.json_schema` when set); InvalidArgument for a
    schema without responseMimeType application/json, or another mime type."""
    mime = sampling.response_mime_type
    if mime in ("", "text/plain"):
        if sampling.json_schema is None:
            return "text"
        raise InvalidArgument(
            "Unable to submit request because it sets generationConfig.responseSchema without "
            "responseMimeType application/json. Set responseMimeType and try again."
        )
    if mime != "application/json":
        raise InvalidArgument(
            f"Unable to submit request because generationConfig.responseMimeType {mime} is not "
            f"supported by {who}. Use text/plain or application/json."
        )
    return "json"


def candidate_seed(seed: int, index: int) -> int:
    """Candidate 0 uses `seed` itself (63 bits); the others a value mixed from (seed, index)."""
    if index == 0:
        return seed & _MASK63
    mixed = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    return (mixed ^ (mixed >> 31)) & _MASK63


def find_stop(text: str, stops: Sequence[str], scanned: int = 0) -> int | None:
    """Where the earliest stop sequence starts in `text`, or None. `scanned`: how much of the
    text an earlier call already searched (a stop may straddle that point, and the last few
    characters of a decode can change as tokens arrive)."""
    start = max(0, scanned - max(len(s) for s in stops) - 4)
    hits = [p for p in (text.find(s, start) for s in stops) if p >= 0]
    return min(hits) if hits else None


# -- the response of an embedded engine ---------------------------------------------------------
class GeneratedText(Protocol):
    text: str | None
    finish: str | None
    tokens: list[int]
    logprob_sum: float


def gemini_response(
    prompt_tokens: int, seqs: Iterable[GeneratedText], model_version: str
) -> dict[str, Any]:
    """The GenerateContentResponse of one row: a candidate per sequence (`index` when there are
    several), `avgLogprobs` the mean log-probability of the generated tokens, and real usage:
    the prompt counted once, the tokens of every candidate (end-of-turn included) summed."""
    seqs = list(seqs)
    candidates = []
    for i, seq in enumerate(seqs):
        cand: dict[str, Any] = {
            "content": {"role": "model", "parts": [{"text": seq.text or ""}]},
            "finishReason": seq.finish or "STOP",
            "avgLogprobs": seq.logprob_sum / max(1, len(seq.tokens)),
        }
        if len(seqs) > 1:
            cand["index"] = i
        candidates.append(cand)
    generated = sum(len(s.tokens) for s in seqs)
    return {
        "candidates": candidates,
        "modelVersion": model_version,
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": generated,
            "totalTokenCount": prompt_tokens + generated,
        },
    }


# -- Gemini Schema -> JSON Schema ---------------------------------------------------------------
_SCHEMA_KEYS = {"any_of": "anyOf", "property_ordering": "propertyOrdering",
                "min_items": "minItems", "max_items": "maxItems", "min_length": "minLength",
                "max_length": "maxLength", "min_properties": "minProperties",
                "max_properties": "maxProperties"}
_INT_KEYS = {"minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"}


def gemini_schema_to_json_schema(schema: Any) -> Any:
    """Gemini's `Schema` (an OpenAPI 3.0 subset: TYPE names in capitals, `nullable`,
    `propertyOrdering`, int64 limits as strings) as a JSON Schema."""
    if isinstance(schema, list):
        return [gemini_schema_to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    nullable = False
    for raw_key, value in schema.items():
        key = _SCHEMA_KEYS.get(str(raw_key), str(raw_key))
        if key == "type" and isinstance(value, str):
            out["type"] = value.lower()
        elif key == "nullable":
            nullable = bool(value)
        elif key in ("propertyOrdering", "example"):
            continue
        elif key == "properties" and isinstance(value, dict):
            out[key] = {k: gemini_schema_to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "anyOf", "oneOf", "allOf"):
            out[key] = gemini_schema_to_json_schema(value)
        elif key in _INT_KEYS:
            out[key] = int(value)
        else:
            out[key] = value
    if nullable and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out
