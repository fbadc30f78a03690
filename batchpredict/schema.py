"""Gemini `GenerateContentRequest` as pydantic models, and its validation in Vertex's words.

Field names are snake_case in Python; JSON takes camelCase or snake_case, as protobuf JSON does.
Unknown fields are refused the way Vertex refuses them (`Unknown name "x" at 'contents[0]'`), so a
typo in `generationConfig` is an error line, not a silently ignored setting.

`parse_request(obj)` is the one entry point: it returns a `GenerateContentRequest` or raises
`InvalidArgument` whose message names the field.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from batchpredict.errors import InvalidArgument

__all__ = [
    "Blob",
    "Content",
    "FileData",
    "GenerateContentRequest",
    "GenerationConfig",
    "Part",
    "parse_request",
]

VALID_ROLES = ("user", "model")


class _Message(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
    )

    def to_json(self) -> dict[str, Any]:
        """camelCase JSON with unset fields left out: what the Gemini API itself accepts."""
        return self.model_dump(exclude_none=True, by_alias=True)


class Blob(_Message):
    mime_type: str
    data: str  # base64, as in the JSON form of bytes


class FileData(_Message):
    mime_type: str | None = None
    file_uri: str
    display_name: str | None = None


class Part(_Message):
    text: str | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None
    function_call: dict[str, Any] | None = None
    function_response: dict[str, Any] | None = None
    executable_code: dict[str, Any] | None = None
    code_execution_result: dict[str, Any] | None = None
    video_metadata: dict[str, Any] | None = None
    thought: bool | None = None
    thought_signature: str | None = None
    media_resolution: Any = None

    def kind(self) -> str | None:
        """Which `data` field this part carries: 'text', 'inlineData', ... or None."""
        for name in _DATA_FIELDS:
            if getattr(self, name) is not None:
                return to_camel(name)
        return None


_DATA_FIELDS = (
    "text",
    "inline_data",
    "file_data",
    "function_call",
    "function_response",
    "executable_code",
    "code_execution_result",
)


class Content(_Message):
    role: str | None = None
    parts: list[Part] = []


class GenerationConfig(_Message):
    temperature: float | None = None
    top_p: float | None = None
    top_k: float | None = None
    candidate_count: int | None = None
    max_output_tokens: int | None = None
    stop_sequences: list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    response_mime_type: str | None = None
    response_schema: dict[str, Any] | None = None
    response_json_schema: Any = None
    response_logprobs: bool | None = None
    logprobs: int | None = None
    response_modalities: list[str] | None = None
    media_resolution: str | None = None
    speech_config: dict[str, Any] | None = None
    thinking_config: dict[str, Any] | None = None
    image_config: dict[str, Any] | None = None
    routing_config: dict[str, Any] | None = None
    audio_timestamp: bool | None = None
    enable_affective_dialog: bool | None = None


class GenerateContentRequest(_Message):
    contents: list[Content] = []
    system_instruction: Content | None = None
    generation_config: GenerationConfig | None = None
    safety_settings: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_config: dict[str, Any] | None = None
    labels: dict[str, str] | None = None
    cached_content: str | None = None
    model: str | None = None
    model_armor_config: dict[str, Any] | None = None

    @property
    def config(self) -> GenerationConfig:
        return self.generation_config or _DEFAULT_CONFIG


_DEFAULT_CONFIG = GenerationConfig()

# (field, low inclusive, high exclusive as Vertex prints it)
_RANGES = (
    ("temperature", 0, "2.0001", 2.0001),
    ("top_p", 0, "1.0001", 1.0001),
    ("candidate_count", 1, "9", 9),
    ("max_output_tokens", 1, "65537", 65537),
    ("presence_penalty", -2, "2", 2),
    ("frequency_penalty", -2, "2", 2),
)

_PROTO_TYPES = {
    "string_type": "TYPE_STRING",
    "int_type": "TYPE_INT32",
    "int_parsing": "TYPE_INT32",
    "int_from_float": "TYPE_INT32",
    "float_type": "TYPE_FLOAT",
    "float_parsing": "TYPE_FLOAT",
    "bool_type": "TYPE_BOOL",
    "bool_parsing": "TYPE_BOOL",
    "dict_type": "TYPE_MESSAGE",
    "model_type": "TYPE_MESSAGE",
    "model_attributes_type": "TYPE_MESSAGE",
    "list_type": "TYPE_LIST",
}

_CAMEL_HUMP = re.compile(r"(?<!^)(?=[A-Z])")


def _snake(name: str) -> str:
    return _CAMEL_HUMP.sub("_", name).lower()


def _field_path(loc: tuple[Any, ...]) -> str:
    """('contents', 0, 'parts', 1, 'text') -> 'contents[0].parts[1].text'."""
    out = ""
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
        else:
            out += ("." if out else "") + _snake(str(item))
    return out


def _describe(exc: ValidationError) -> str:
    """The first problem pydantic found, in protobuf-JSON wording."""
    err = exc.errors(include_url=False)[0]
    loc, kind = tuple(err["loc"]), err["type"]
    if kind == "extra_forbidden":
        parent = _field_path(loc[:-1])
        where = f" at '{parent}'" if parent else ""
        return f'Invalid JSON payload received. Unknown name "{loc[-1]}"{where}: Cannot find field.'
    if kind == "missing":
        return f"Invalid JSON payload received. Missing required field '{_field_path(loc)}'."
    value = err.get("input")
    shown = repr(value) if not isinstance(value, str) else f'"{value}"'
    proto = _PROTO_TYPES.get(kind, "")
    proto = f" ({proto})" if proto else ""
    return f"Invalid value at '{_field_path(loc)}'{proto}, {shown}: {err['msg']}."


def _check_ranges(config: GenerationConfig) -> None:
    for field, low, high_text, high in _RANGES:
        value = getattr(config, field)
        if value is not None and not (low <= value < high):
            raise InvalidArgument(
                f"Unable to submit request because it has a {to_camel(field)} value of {value} "
                f"but the supported range is from {low} (inclusive) to {high_text} (exclusive). "
                "Update the value and try again."
            )
    if config.top_k is not None and config.top_k < 1:
        raise InvalidArgument(
            f"Unable to submit request because it has a topK value of {config.top_k} "
            "but the supported range is from 1 (inclusive) to 41 (exclusive). "
            "Update the value and try again."
        )


def _check_content(content: Content, where: str) -> None:
    if not content.parts:
        raise InvalidArgument(
            "Unable to submit request because it must have at least one parts field, which "
            f"describes the prompt input. Add a part to '{where}' and try again."
        )
    for i, part in enumerate(content.parts):
        kind = part.kind()
        if kind is None:
            raise InvalidArgument(
                f"Unable to submit request because '{where}.parts[{i}]' has no data. Set one of "
                "text, inlineData, fileData, functionCall or functionResponse and try again."
            )
        if kind == "text" and part.text == "" and len(content.parts) == 1:
            raise InvalidArgument(
                "Unable to submit request because it has an empty text parameter. "
                "Add a value to the parameter and try again."
            )


def parse_request(obj: Any) -> GenerateContentRequest:
    """Validate one `request` object; raise InvalidArgument naming the first bad field."""
    if not isinstance(obj, dict):
        raise InvalidArgument(
            f"Invalid JSON payload received. 'request' must be an object, got {type(obj).__name__}."
        )
    try:
        req = GenerateContentRequest.model_validate(obj)
    except ValidationError as exc:
        raise InvalidArgument(_describe(exc)) from None
    if not req.contents:
        raise InvalidArgument(
            "Unable to submit request because it has an empty contents field. "
            "Add at least one content with a text part and try again."
        )
    for i, content in enumerate(req.contents):
        if content.role not in VALID_ROLES and content.role is not None:
            raise InvalidArgument("Please use a valid role: user, model.")
        _check_content(content, f"contents[{i}]")
    if req.system_instruction is not None:
        _check_content(req.system_instruction, "system_instruction")
    if req.generation_config is not None:
        _check_ranges(req.generation_config)
    return req
