"""Backend kinds: what `backend = "..."` in a registry entry means, how the entry's settings are
checked when the file loads, and how its backend is built (registry.py holds the entries).

    onnx     the embedded model's default engine, onnxruntime-genai (backends/onnx_engine.py)
    local    the transformers reference engine (backends/local.py)
    openai   any OpenAI-compatible server (backends/openai.py)
    gemini   the Gemini API (backends/gemini.py)
    server   an engine server batchpredict runs itself (backends/managed.py)
    python   any Backend class, by import path (`class = "pkg.mod:Class"`)
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchpredict.backends.base import Backend
from batchpredict.errors import InvalidArgument

if TYPE_CHECKING:
    from batchpredict.backends.registry import ModelEntry

__all__ = ["BACKEND_KINDS", "BackendKind", "short_name"]


def short_name(model: str) -> str:
    return model.rsplit("/", 1)[-1]


# --- backend kinds ------------------------------------------------------------------------------
def _check_arguments(where: str, cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """`options` checked against `cls`'s constructor: known names and simple types."""
    params = {n: p for n, p in inspect.signature(cls).parameters.items()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    for key, value in options.items():
        if key not in params:
            raise InvalidArgument(
                f"{where}: unknown setting {key!r}. Settings of this backend: "
                f"{', '.join(sorted(params)) or '(none)'}."
            )
        annotation = params[key].annotation
        text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
        _check_type(where, key, value, text)
    return dict(options)


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

    def create(entry: ModelEntry, model: str, data_dir: str) -> Backend:
        mod = __import__(f"batchpredict.backends.{module}", fromlist=[cls_name])
        served = entry.settings.served_model or short_name(model)
        return getattr(mod, cls_name)(served, entry.settings, entry=entry.name)  # type: ignore[no-any-return]

    return validate, create


def _validate_local(where: str, options: dict[str, Any]) -> dict[str, Any]:
    from batchpredict.backends.local import LocalBackend

    return _check_arguments(where, LocalBackend, options)


def _validate_onnx(where: str, options: dict[str, Any]) -> dict[str, Any]:
    from batchpredict.backends.onnx_engine import OnnxGenaiBackend

    return _check_arguments(where, OnnxGenaiBackend, options)


def _onnx(entry: ModelEntry, model: str, data_dir: str) -> Backend:
    from batchpredict.backends.onnx_engine import OnnxGenaiBackend

    return OnnxGenaiBackend(**entry.settings)


def _local(entry: ModelEntry, model: str, data_dir: str) -> Backend:
    from batchpredict.backends.local import LocalBackend

    return LocalBackend(**entry.settings)


@dataclass
class PythonSettings:
    """A `backend = "python"` entry: the Backend subclass and its constructor's arguments."""

    cls: type[Backend]
    path: str
    arguments: dict[str, Any]

    def summary(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.arguments.items())
        return f"{self.path}({args})"


def _validate_python(where: str, options: dict[str, Any]) -> PythonSettings:
    """`class = "package.module:ClassName"`, imported now so a typo fails at load."""
    options = dict(options)
    path = options.pop("class", None)
    if not isinstance(path, str) or not re.fullmatch(r"[\w.]+:[\w.]+", path):
        raise InvalidArgument(
            f"{where}: class must name a Backend subclass as \"package.module:ClassName\", "
            f"got {path!r}."
        )
    module_name, _, qualname = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except ImportError as exc:
        raise InvalidArgument(
            f"{where}: class {path!r} cannot be imported: {exc}. Install its package, or put "
            "the folder that holds it on PYTHONPATH."
        ) from None
    except AttributeError:
        raise InvalidArgument(
            f"{where}: class {path!r}: module {module_name} has no {qualname}."
        ) from None
    if not (isinstance(target, type) and issubclass(target, Backend)):
        raise InvalidArgument(
            f"{where}: class {path!r} is not a subclass of batchpredict.backends.base.Backend."
        )
    if inspect.isabstract(target):
        raise InvalidArgument(
            f"{where}: class {path!r} is abstract (it does not implement generate)."
        )
    return PythonSettings(target, path, _check_arguments(where, target, options))


def _python(entry: ModelEntry, model: str, data_dir: str) -> Backend:
    st: PythonSettings = entry.settings
    return st.cls(**st.arguments)


def _validate_server(where: str, options: dict[str, Any]) -> Any:
    from batchpredict.backends.managed import ManagedSettings

    return ManagedSettings.from_options(where, options)


def _server(entry: ModelEntry, model: str, data_dir: str) -> Backend:
    from batchpredict.backends.managed import ManagedServerBackend

    return ManagedServerBackend(entry.name, entry.settings, data_dir=data_dir)


@dataclass(frozen=True)
class BackendKind:
    """How to check an entry's settings and build its backend."""

    validate: Callable[[str, dict[str, Any]], Any]
    #: (entry, the job's model, the data directory) -> an unstarted backend.
    create: Callable[[ModelEntry, str, str], Backend]
    #: One backend per served model (remote servers), else one per entry.
    per_model: bool = False


_openai = _remote("openai", "OpenAIBackend", "OpenAISettings")
_gemini = _remote("gemini", "GeminiBackend", "GeminiSettings")

#: `backend = "..."` -> how that backend is checked and built.
BACKEND_KINDS: dict[str, BackendKind] = {
    "onnx": BackendKind(_validate_onnx, _onnx),
    "local": BackendKind(_validate_local, _local),
    "openai": BackendKind(_openai[0], _openai[1], per_model=True),
    "gemini": BackendKind(_gemini[0], _gemini[1], per_model=True),
    "server": BackendKind(_validate_server, _server),
    "python": BackendKind(_validate_python, _python),
}
