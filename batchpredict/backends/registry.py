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
    backend = "openai"               # onnx | local | openai | gemini | server | python
    description = "vLLM on the GPU box"
    dedupe = true                    # send identical temperature-0 requests of a job once
    num_gpus = 1                     # per worker of the processes/ray executors (default 0)
    num_cpus = 1                     # per Ray actor (default 1)
    # backend settings, at the top level of the entry (or in a [models.options] table):
    base_url = "http://127.0.0.1:8000/v1"
    served_model = "meta-llama/Llama-3.1-8B-Instruct"   # default: the job's model, short form
    api_key_env = "VLLM_API_KEY"     # the variable holding the key; never the key itself
    concurrency = 64                 # requests in flight (and the connection pool size)
    rpm = 0                          # requests per minute, 0: no limit
    tpm = 0                          # tokens per minute, 0: no limit
    timeout = 600                    # seconds per attempt
    retries = 6                      # on 408/429/5xx/timeouts/connection errors

The kinds of backend and their settings:
- `openai`: an OpenAI-compatible server that is already running; `openai.OpenAISettings`
  (`remote.RemoteSettings`: base_url, api_key_env, served_model, concurrency, rpm, tpm, timeout,
  retries, backoff_initial, backoff_max, jitter, max_retry_after, default_max_tokens, headers;
  plus `images` and `max_tokens_field`).
- `gemini`: the Gemini API; RemoteSettings plus `api_version` (reads GEMINI_API_KEY unless
  api_key_env says otherwise).
- `server`: an engine server batchpredict starts, health-checks, restarts after a crash and stops
  when idle or on exit (`managed.py`, which documents the lifecycle): every openai setting plus
  `command` (argv; "{port}" becomes the port), `port` (0: a free one), `health_url`,
  `startup_seconds`, `idle_seconds`, `stop_seconds`, `env`. Without `served_model`, the model
  the server lists at /v1/models. One server per entry.
- `onnx`: the arguments of `OnnxGenaiBackend` (model_path, batch_size, model_version, threads,
  max_batch_tokens, default_temperature): the embedded model's default engine.
- `local`: the arguments of `LocalBackend` (model_path, batch_size, device, dtype, model_version,
  threads, max_batch_tokens, default_temperature): the transformers reference engine.

      [[models]]
      name = "qwen2.5-7b"
      backend = "server"
      command = ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct", "--port", "{port}"]
      concurrency = 256

- `local`: the arguments of `LocalBackend` (model_path, batch_size, device, dtype, model_version,
  threads): the embedded model, or a local transformers folder, in this process.
- `python`: a plugin: `class = "package.module:ClassName"` names a `base.Backend` subclass,
  imported when the file loads (it must be importable: installed, or on PYTHONPATH); the entry's
  other settings are its constructor's keyword arguments, checked against its signature like
  local's. The tests use it for their test doubles:

      [[models]]
      name = "instant"
      backend = "python"
      class = "tests.doubles.instant:InstantTestDouble"
      options = { batch_size = 16 }

Every entry is checked when the file loads: an unknown backend, an unknown setting, a value of
the wrong type or a class that cannot be imported is an error naming the file, the entry and the
field. API keys are read when a job first uses the entry, so `batchpredict models list` works
without them.

Backends are created once and shared by every job naming the same entry (and, for openai and
gemini, the same served model), so concurrency and rate limits hold across jobs. Each job that
takes a backend calls its `start()` (a no-op once started; a managed server stopped while idle
starts again there).
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from batchpredict.backends.base import Backend
from batchpredict.backends.kinds import BACKEND_KINDS, BackendKind, short_name
from batchpredict.errors import InvalidArgument

__all__ = ["BACKEND_KINDS", "BackendKind", "ModelEntry", "ModelRegistry"]  # kinds: kinds.py

EMBEDDED = "smollm2-135m"
#: The `backend` of an entry made by `ModelRegistry.serving` (not a kind a file may name).
INSTANCE = "instance"
_ENTRY_KEYS = {"name", "backend", "description", "dedupe", "options", "num_gpus", "num_cpus"}


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
    #: What each worker of this model asks a Ray cluster for (executors/ray_actors.py).
    num_gpus: float = 0.0
    num_cpus: float = 1.0

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
    resources = {}
    for key, default in (("num_gpus", 0.0), ("num_cpus", 1.0)):
        value = item.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise InvalidArgument(f"{where}: {key} must be a number of 0 or more, got {value!r}.")
        resources[key] = float(value)
    return ModelEntry(name, backend, options, description, dedupe, **resources)


class ModelRegistry:
    def __init__(self, entries: list[ModelEntry], source: str = "the built-in registry",
                 data_dir: str | None = None) -> None:
        self.entries = entries
        self.source = source
        #: Where backends keep files (the logs of managed servers); default: the data dir of
        #: `Settings.from_env()`.
        self.data_dir = data_dir
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
    def serving(cls, backend: Backend, name: str = "*") -> ModelRegistry:
        """Every model matching `name` answered by `backend`, an instance already built: for a
        program that embeds batchpredict with a backend of its own (and for tests)."""
        entry = ModelEntry(name, INSTANCE, {}, f"a {type(backend).__name__} instance",
                           dedupe=getattr(backend, "dedupe", True))
        entry.settings = {"instance": backend}
        return cls([entry], source="a backend instance")

    @classmethod
    def default(cls, data_dir: str | None = None) -> ModelRegistry:
        return cls([ModelEntry(e.name, e.backend, dict(e.options), e.description, e.dedupe)
                    for e in DEFAULT_ENTRIES], data_dir=data_dir)

    @classmethod
    def from_settings(cls, settings: Any) -> ModelRegistry:
        """The registry an app or command is built with: `models_file`, else the built-in one;
        managed servers keep their logs under `data_dir`."""
        if settings.models_file:
            return cls.load(settings.models_file, data_dir=settings.data_dir)
        return cls.default(data_dir=settings.data_dir)

    @classmethod
    def load(cls, path: str, data_dir: str | None = None) -> ModelRegistry:
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
        return cls(entries, source=path, data_dir=data_dir)

    def resolve(self, model: str) -> ModelEntry:
        if any(c in model for c in "*?["):
            raise InvalidArgument(
                f"Model {model!r} is a pattern, not a model: name one model it matches, e.g. "
                f"{_example(model)!r}. `batchpredict models list` shows the registry."
            )
        for entry in self.entries:
            if entry.matches(model):
                return entry
        names = ", ".join(e.name for e in self.entries)
        raise InvalidArgument(
            f"Model {model!r} is not in the model registry. Available: {names}. "
            "Add it to the registry file (BATCHPREDICT_MODELS_FILE) to use it."
        )

    def create_backend(self, entry: ModelEntry, model: str | None = None) -> Backend:
        if entry.backend == INSTANCE:
            return entry.settings["instance"]  # type: ignore[no-any-return]
        data_dir = self.data_dir
        if data_dir is None:
            from batchpredict.config import Settings

            data_dir = Settings.from_env().data_dir
        backend = BACKEND_KINDS[entry.backend].create(
            entry, model or entry.name, os.path.expanduser(data_dir)
        )
        backend.dedupe = entry.dedupe  # type: ignore[attr-defined]  # read by dedupe.for_job
        return backend

    async def backend_for(self, model: str) -> Backend:
        """The started backend for `model`, shared by every job that names the same entry
        (and, for remote backends, the same served model).

        `start()` runs each time a job takes the backend (it does nothing when already
        started): a managed server stopped while idle starts again here, and one that could
        not start is tried again, so its error fails this job rather than its rows."""
        entry = self.resolve(model)
        served = ""
        if entry.backend != INSTANCE and BACKEND_KINDS[entry.backend].per_model:
            served = getattr(entry.settings, "served_model", "") or short_name(model)
        key = (id(entry), served)
        async with self._lock:
            backend = self._backends.get(key)
            if backend is None:
                backend = self.create_backend(entry, model)
                await backend.start()
                self._backends[key] = backend
                return backend
        await backend.start()
        return backend

    async def close(self) -> None:
        for backend in self._backends.values():
            await backend.close()
        self._backends.clear()

    def describe(self) -> list[dict[str, Any]]:
        """The entries in match order; `pattern` is true for a name that stands for many models
        (a job names one model it matches, never the pattern)."""
        return [
            {"name": e.name, "backend": e.backend, "description": e.description,
             "settings": e.summary(), "dedupe": e.dedupe,
             "pattern": any(c in e.name for c in "*?[")}
            for e in self.entries
        ]


def _example(pattern: str) -> str:
    """A model name a pattern matches, for an error message: gemini-* -> gemini-2.5-flash."""
    if pattern.startswith("gemini-"):
        return "gemini-2.5-flash"
    return pattern.replace("*", "name").replace("?", "x").split("[", 1)[0] or "my-model"
