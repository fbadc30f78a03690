"""The model registry: which backend answers a job's `model`, and with which settings.

A job names its model as Vertex does (`publishers/google/models/gemini-2.5-flash`, a short name
such as `gemini-2.5-flash`, or `projects/P/locations/L/models/M`). The registry tries its entries
in order; an entry's `name` is a model name or a glob pattern (`*`, `?`, `[...]`; `*` also
crosses `/`), compared with the job's model as given, with its short form (the part after the
last `/`), and, for a bare name, with `publishers/google/models/NAME` (what Vertex makes of it).
The first match wins. An unknown model is a 400 that lists what is available.

Without a registry file, the built-in one sends every Gemini name to the embedded model on the
onnx engine (`smollm2-135m`), so an unmodified Vertex job runs offline on a fresh machine; the
response's `modelVersion` names the model that really answered. `smollm2-135m-transformers` is
the same model on the transformers reference engine (`local`).

The file (`BATCHPREDICT_MODELS_FILE`, TOML; see examples/models.toml):

    include_defaults = true          # optional: the built-in entries follow this file's

    [[models]]
    name = "llama-3.1-8b"            # or a glob: "gemini-*", "projects/*/locations/*/models/*"
    backend = "openai"               # onnx | local | openai | gemini | test-double
    description = "vLLM on the GPU box"
    dedupe = true                    # send identical temperature-0 requests of a job once
    # backend settings, at the top level of the entry (or in a [models.options] table):
    base_url = "http://127.0.0.1:8000/v1"
    served_model = "meta-llama/Llama-3.1-8B-Instruct"   # default: the job's model, short form
    api_key_env = "VLLM_API_KEY"     # the variable holding the key; never the key itself
    concurrency = 64                 # requests in flight (and the connection pool size)
    rpm = 0                          # requests per minute, 0: no limit
    tpm = 0                          # tokens per minute, 0: no limit
    timeout = 600                    # seconds per attempt
    retries = 6                      # on 408/429/5xx/timeouts/connection errors

Settings of each backend:
- openai and gemini: `remote.RemoteSettings` (base_url, api_key_env, served_model, concurrency,
  rpm, tpm, timeout, retries, backoff_initial, backoff_max, jitter, max_retry_after,
  default_max_tokens, headers); openai adds `images` and `max_tokens_field`, gemini adds
  `api_version` (and reads GEMINI_API_KEY unless api_key_env says otherwise).
- onnx: the arguments of `OnnxGenaiBackend` (model_path, batch_size, model_version, threads,
  max_batch_tokens, default_temperature); local: those of `LocalBackend` (model_path,
  batch_size, device, dtype, model_version, threads, max_batch_tokens, default_temperature);
  test-double: those of `testing.InstantTestDouble`.
Every entry is checked when the file loads: an unknown backend, an unknown setting or a value of
the wrong type is an error naming the file, the entry and the field. API keys are read when a
job first uses the entry, so `batchpredict models list` works without them.

Backends are started once and shared by every job naming the same entry (and, for remote
backends, the same served model), so concurrency and rate limits hold across jobs.
"""

from __future__ import annotations

import asyncio
import fnmatch
import inspect
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchpredict.backends.base import Backend
from batchpredict.errors import InvalidArgument

__all__ = ["BACKEND_KINDS", "BackendKind", "ModelEntry", "ModelRegistry"]

EMBEDDED = "smollm2-135m"
_ENTRY_KEYS = {"name", "backend", "description", "dedupe", "options"}


def short_name(model: str) -> str:
    return model.rsplit("/", 1)[-1]


# -- backend kinds ------------------------------------------------------------------------------
def _signature_settings(cls_path: str) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
    """A validator from a backend class's constructor: known names and simple types."""

    def validate(where: str, options: dict[str, Any]) -> dict[str, Any]:
        module, _, name = cls_path.rpartition(".")
        cls = getattr(__import__(module, fromlist=[name]), name)
        params = {n: p for n, p in inspect.signature(cls).parameters.items()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        for key, value in options.items():
            if key not in params:
                raise InvalidArgument(
                    f"{where}: unknown setting {key!r}. Settings of this backend: "
                    f"{', '.join(sorted(params))}."
                )
            _check_type(where, key, value, str(params[key].annotation))
        return dict(options)

    return validate


_SIMPLE: dict[str, type | tuple[type, ...]] = {
    "int": int, "float": (int, float), "str": str, "bool": bool,
}


def _check_type(where: str, key: str, value: Any, annotation: str) -> None:
    kinds = [a.strip() for a in annotation.split("|")]
    if value is None or not all(k in _SIMPLE or k == "None" for k in kinds):
        return  # not a simple annotation: the backend checks it
    ok = any(
        k != "None" and isinstance(value, _SIMPLE[k])
        and not (isinstance(value, bool) and k != "bool")
        for k in kinds
    )
    if not ok:
        wanted = " or ".join(k for k in kinds if k != "None")
        raise InvalidArgument(f"{where}: {key} must be {wanted}, got {value!r}.")


def _remote(module: str, cls_name: str, settings_name: str) -> tuple[Any, Any]:
    def validate(where: str, options: dict[str, Any]) -> Any:
        mod = __import__(f"batchpredict.backends.{module}", fromlist=[settings_name])
        return getattr(mod, settings_name).from_options(where, options)

    def create(entry: ModelEntry, model: str) -> Backend:
        mod = __import__(f"batchpredict.backends.{module}", fromlist=[cls_name])
        served = entry.settings.served_model or short_name(model)
        return getattr(mod, cls_name)(served, entry.settings, entry=entry.name)  # type: ignore[no-any-return]

    return validate, create


def _onnx(entry: ModelEntry, model: str) -> Backend:
    from batchpredict.backends.onnx_engine import OnnxGenaiBackend

    return OnnxGenaiBackend(**entry.settings)


def _local(entry: ModelEntry, model: str) -> Backend:
    from batchpredict.backends.local import LocalBackend

    return LocalBackend(**entry.settings)


def _test_double(entry: ModelEntry, model: str) -> Backend:
    from batchpredict.testing import InstantTestDouble

    return InstantTestDouble(**entry.settings)


@dataclass(frozen=True)
class BackendKind:
    """How to check an entry's settings and build its backend."""

    validate: Callable[[str, dict[str, Any]], Any]
    create: Callable[[ModelEntry, str], Backend]
    #: One backend per served model (remote servers), else one per entry.
    per_model: bool = False


_openai = _remote("openai", "OpenAIBackend", "OpenAISettings")
_gemini = _remote("gemini", "GeminiBackend", "GeminiSettings")

#: `backend = "..."` -> how that backend is checked and built.
BACKEND_KINDS: dict[str, BackendKind] = {
    "onnx": BackendKind(
        _signature_settings("batchpredict.backends.onnx_engine.OnnxGenaiBackend"), _onnx
    ),
    "local": BackendKind(_signature_settings("batchpredict.backends.local.LocalBackend"), _local),
    "openai": BackendKind(_openai[0], _openai[1], per_model=True),
    "gemini": BackendKind(_gemini[0], _gemini[1], per_model=True),
    "test-double": BackendKind(
        _signature_settings("batchpredict.testing.InstantTestDouble"), _test_double
    ),
}


# -- entries ------------------------------------------------------------------------------------
@dataclass
class ModelEntry:
    name: str
    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    #: Send identical temperature-0 requests of a job once (backends/dedupe.py).
    dedupe: bool = True
    #: `options` checked by the backend kind: a settings object or a dict of arguments.
    settings: Any = None

    def matches(self, model: str) -> bool:
        names = [model, short_name(model)]
        if "/" not in model:
            names.append(f"publishers/google/models/{model}")
        return any(fnmatch.fnmatchcase(n, self.name) for n in names)

    def summary(self) -> str:
        describe = getattr(self.settings, "summary", None)
        if describe is not None:
            return str(describe())
        return ", ".join(f"{k}={v}" for k, v in (self.settings or {}).items())


DEFAULT_ENTRIES = [
    ModelEntry(EMBEDDED, "onnx", {},
               "SmolLM2-135M-Instruct, embedded: int4 ONNX on onnxruntime-genai, offline, CPU"),
    ModelEntry(f"{EMBEDDED}-transformers", "local", {},
               "the same model on the transformers reference engine (CPU/GPU)"),
    ModelEntry("SmolLM2-135M-Instruct", "onnx", {}, "the embedded model, by its own name"),
    ModelEntry("gemini-*", "onnx", {}, "Gemini names answered by the embedded model"),
]


def _entry_from_toml(where: str, item: Any) -> ModelEntry:
    if not isinstance(item, dict) or "name" not in item or "backend" not in item:
        raise InvalidArgument(
            f"{where} needs a name and a backend, e.g. "
            '[[models]] name = "llama-*" backend = "openai".'
        )
    name, backend = item["name"], item["backend"]
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{where}: name must be a model name or glob, got {name!r}.")
    if not isinstance(backend, str):
        raise InvalidArgument(f"{where}: backend must be a string, got {backend!r}.")
    options = {k: v for k, v in item.items() if k not in _ENTRY_KEYS}
    extra = item.get("options", {})
    if not isinstance(extra, dict):
        raise InvalidArgument(f"{where}: options must be a table, got {extra!r}.")
    options.update(extra)
    dedupe = item.get("dedupe", True)
    if not isinstance(dedupe, bool):
        raise InvalidArgument(f"{where}: dedupe must be true or false, got {dedupe!r}.")
    description = item.get("description", "")
    if not isinstance(description, str):
        raise InvalidArgument(f"{where}: description must be a string, got {description!r}.")
    return ModelEntry(name, backend, options, description, dedupe)


class ModelRegistry:
    def __init__(self, entries: list[ModelEntry], source: str = "the built-in registry") -> None:
        self.entries = entries
        self.source = source
        for i, entry in enumerate(entries):
            if entry.settings is None:
                where = f"{source}: models[{i}] ({entry.name!r})"
                kind = BACKEND_KINDS.get(entry.backend)
                if kind is None:
                    raise InvalidArgument(
                        f"{where}: backend {entry.backend!r} does not exist. "
                        f"Available backends: {', '.join(sorted(BACKEND_KINDS))}."
                    )
                entry.settings = kind.validate(where, entry.options)
        self._backends: dict[tuple[int, str], Backend] = {}
        self._lock = asyncio.Lock()

    @classmethod
    def default(cls) -> ModelRegistry:
        return cls([ModelEntry(e.name, e.backend, dict(e.options), e.description, e.dedupe)
                    for e in DEFAULT_ENTRIES])

    @classmethod
    def load(cls, path: str) -> ModelRegistry:
        """Read a TOML registry (format in the module docstring); every entry is checked."""
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise InvalidArgument(
                f"Model registry file {path} does not exist. Create it or unset "
                "BATCHPREDICT_MODELS_FILE."
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"Model registry file {path} is not valid TOML: {exc}") from None
        unknown = set(data) - {"models", "include_defaults"}
        if unknown:
            raise InvalidArgument(
                f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}. The file holds "
                "[[models]] tables and, optionally, include_defaults = true."
            )
        models = data.get("models", [])
        if not isinstance(models, list):
            raise InvalidArgument(f"{path}: models must be [[models]] tables.")
        entries = [_entry_from_toml(f"{path}: models[{i}]", item) for i, item in enumerate(models)]
        if data.get("include_defaults", False):
            entries.extend(cls.default().entries)
        return cls(entries, source=path)

    def resolve(self, model: str) -> ModelEntry:
        for entry in self.entries:
            if entry.matches(model):
                return entry
        names = ", ".join(e.name for e in self.entries)
        raise InvalidArgument(
            f"Model {model!r} is not in the model registry. Available: {names}. "
            "Add it to the registry file (BATCHPREDICT_MODELS_FILE) to use it."
        )

    def create_backend(self, entry: ModelEntry, model: str | None = None) -> Backend:
        backend = BACKEND_KINDS[entry.backend].create(entry, model or entry.name)
        backend.dedupe = entry.dedupe  # type: ignore[attr-defined]  # read by dedupe.for_job
        return backend

    async def backend_for(self, model: str) -> Backend:
        """The started backend for `model`, shared by every job that names the same entry
        (and, for remote backends, the same served model)."""
        entry = self.resolve(model)
        kind = BACKEND_KINDS[entry.backend]
        served = ""
        if kind.per_model:
            served = getattr(entry.settings, "served_model", "") or short_name(model)
        key = (id(entry), served)
        async with self._lock:
            if key not in self._backends:
                backend = self.create_backend(entry, model)
                await backend.start()
                self._backends[key] = backend
            return self._backends[key]

    async def close(self) -> None:
        for backend in self._backends.values():
            await backend.close()
        self._backends.clear()

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": e.name, "backend": e.backend, "description": e.description,
             "settings": e.summary(), "dedupe": e.dedupe}
            for e in self.entries
        ]
