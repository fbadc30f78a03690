"""The model registry: which backend answers a job's `model`.

A job names its model as Vertex does (`publishers/google/models/gemini-2.5-flash`, a short name
such as `gemini-2.5-flash`, or `projects/P/locations/L/models/M`). The registry matches that name,
and its short form (the part after the last `/`), against its entries in order; names may be
glob patterns. An unknown model is a 400 that lists what is available.

Without a registry file, the built-in one sends every Gemini name to the embedded model, so an
unmodified Vertex job runs offline on a fresh machine; the response's `modelVersion` names the
model that really answered.
"""

from __future__ import annotations

import asyncio
import fnmatch
import tomllib
from dataclasses import dataclass, field
from typing import Any

from batchpredict.backends.base import Backend
from batchpredict.errors import InvalidArgument

__all__ = ["BACKEND_KINDS", "ModelEntry", "ModelRegistry"]

EMBEDDED = "smollm2-135m"


def _local(**options: Any) -> Backend:
    from batchpredict.backends.local import LocalBackend

    return LocalBackend(**options)


def _test_double(**options: Any) -> Backend:
    from batchpredict.testing import InstantTestDouble

    return InstantTestDouble(**options)


#: backend kind -> factory taking the entry's options.
BACKEND_KINDS: dict[str, Any] = {"local": _local, "test-double": _test_double}


@dataclass
class ModelEntry:
    name: str
    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def matches(self, model: str) -> bool:
        short = model.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(n, self.name) for n in (model, short))


DEFAULT_ENTRIES = [
    ModelEntry(EMBEDDED, "local", {}, "SmolLM2-135M-Instruct, embedded, runs offline on CPU/GPU"),
    ModelEntry("SmolLM2-135M-Instruct", "local", {}, "the embedded model, by its own name"),
    ModelEntry("gemini-*", "local", {}, "Gemini names answered by the embedded model"),
]


class ModelRegistry:
    def __init__(self, entries: list[ModelEntry]) -> None:
        self.entries = entries
        self._backends: dict[int, Backend] = {}
        self._lock = asyncio.Lock()

    @classmethod
    def default(cls) -> ModelRegistry:
        return cls([ModelEntry(e.name, e.backend, dict(e.options), e.description)
                    for e in DEFAULT_ENTRIES])

    @classmethod
    def load(cls, path: str) -> ModelRegistry:
        """Read a TOML registry: `[[models]]` tables with name, backend, description, [options].
        With `include_defaults = true` at the top, the built-in entries follow the file's."""
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
        entries = []
        for i, item in enumerate(data.get("models", [])):
            if not isinstance(item, dict) or "name" not in item or "backend" not in item:
                raise InvalidArgument(
                    f"{path}: models[{i}] needs a name and a backend, e.g. "
                    '[[models]] name = "llama-*" backend = "openai".'
                )
            entries.append(
                ModelEntry(
                    str(item["name"]),
                    str(item["backend"]),
                    dict(item.get("options", {})),
                    str(item.get("description", "")),
                )
            )
        if data.get("include_defaults", False):
            entries.extend(cls.default().entries)
        return cls(entries)

    def resolve(self, model: str) -> ModelEntry:
        for entry in self.entries:
            if entry.matches(model):
                return entry
        names = ", ".join(e.name for e in self.entries)
        raise InvalidArgument(
            f"Model {model!r} is not in the model registry. Available: {names}. "
            "Add it to the registry file (BATCHPREDICT_MODELS_FILE) to use it."
        )

    def create_backend(self, entry: ModelEntry) -> Backend:
        factory = BACKEND_KINDS.get(entry.backend)
        if factory is None:
            raise InvalidArgument(
                f"Model {entry.name!r} names backend {entry.backend!r}, which does not exist. "
                f"Available backends: {', '.join(sorted(BACKEND_KINDS))}."
            )
        return factory(**entry.options)  # type: ignore[no-any-return]

    async def backend_for(self, model: str) -> Backend:
        """The started backend for `model`, shared by every job that names the same entry."""
        entry = self.resolve(model)
        async with self._lock:
            key = id(entry)
            if key not in self._backends:
                backend = self.create_backend(entry)
                await backend.start()
                self._backends[key] = backend
            return self._backends[key]

    async def close(self) -> None:
        for backend in self._backends.values():
            await backend.close()
        self._backends.clear()

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": e.name, "backend": e.backend, "description": e.description}
            for e in self.entries
        ]
