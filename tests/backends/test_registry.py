"""The model registry file: names and globs to backends, settings checked at load, `models list`."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from batchpredict.backends.dedupe import DedupingBackend, for_job
from batchpredict.backends.gemini import GeminiBackend
from batchpredict.backends.openai import OpenAIBackend
from batchpredict.backends.registry import ModelRegistry
from batchpredict.errors import InvalidArgument
from tests.backends.conftest import write_registry

REPO = Path(__file__).resolve().parents[2]
INSTANT = "tests.doubles.instant:InstantTestDouble"


def test_names_and_globs_resolve_in_order(tmp_path: Path) -> None:
    reg = ModelRegistry.load(str(write_registry(
        tmp_path / "m.toml",
        {"name": "publishers/google/models/gemini-2.5-pro", "backend": "gemini"},
        {"name": "publishers/google/models/gemini-*", "backend": "openai",
         "base_url": "http://127.0.0.1:1/v1"},
        {"name": "projects/*/locations/*/models/*", "backend": "python", "class": INSTANT},
        {"name": "llama-3.?-8b", "backend": "openai", "base_url": "http://127.0.0.1:2/v1"},
        include_defaults=True,
    )))

    def backend(model: str) -> str:
        return reg.resolve(model).backend

    assert backend("publishers/google/models/gemini-2.5-pro") == "gemini"
    assert backend("gemini-2.5-pro") == "gemini"  # a bare name is a Google publisher model
    assert backend("publishers/google/models/gemini-2.5-flash") == "openai"
    assert backend("gemini-2.0-flash-001") == "openai"
    assert backend("projects/p1/locations/us-central1/models/123") == "python"
    assert backend("llama-3.1-8b") == "openai"
    assert backend("smollm2-135m") == "onnx"  # the built-in entries follow
    assert backend("smollm2-135m-transformers") == "local"  # the reference engine
    with pytest.raises(InvalidArgument) as err:
        reg.resolve("mistral-7b")
    assert "Available: publishers/google/models/gemini-2.5-pro" in err.value.message
    assert "llama-3.?-8b" in err.value.message and err.value.code == 400


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "m", "backend": "vllm"},
         "models[0] ('m'): backend 'vllm' does not exist. Available backends: gemini, local, "
         "onnx, openai, python, server."),
        ({"name": "m", "backend": "openai", "base_url": "http://h/v1", "concurrency": "lots"},
         "models[0] ('m'): concurrency must be an integer, got 'lots'."),
        ({"name": "m", "backend": "openai", "base_url": "http://h/v1", "rpm": -1},
         "models[0] ('m'): rpm must be 0 or more, got -1."),
        ({"name": "m", "backend": "openai", "base_url": "http://h/v1", "timeuot": 3},
         "models[0] ('m'): unknown setting 'timeuot'. Settings of this backend:"),
        ({"name": "m", "backend": "openai"},
         "base_url is OpenAI's, which needs an API key. Set api_key_env"),
        ({"name": "m", "backend": "openai", "base_url": "http://h/v1", "max_tokens_field": "x"},
         "max_tokens_field must be max_tokens or max_completion_tokens"),
        ({"name": "m", "backend": "gemini", "retries": 2.5},
         "models[0] ('m'): retries must be an integer, got 2.5."),
        ({"name": "m", "backend": "local", "batch_size": "big"},
         "models[0] ('m'): batch_size must be int, got 'big'."),
        ({"name": "m", "backend": "local", "dedupe": "yes"},
         "models[0]: dedupe must be true or false, got 'yes'."),
        ({"name": "m", "backend": "python", "class": INSTANT, "speed": 1},
         "models[0] ('m'): unknown setting 'speed'. Settings of this backend: batch_size, "
         "delay_seconds, max_concurrency."),
        ({"name": "m", "backend": "python", "class": INSTANT, "delay_seconds": "1s"},
         "models[0] ('m'): delay_seconds must be float, got '1s'."),
        ({"name": "m", "backend": "python"},
         "models[0] ('m'): class must name a Backend subclass as \"package.module:ClassName\", "
         "got None."),
        ({"name": "m", "backend": "python", "class": "tests.doubles.nothing_here:X"},
         "models[0] ('m'): class 'tests.doubles.nothing_here:X' cannot be imported: No module "
         "named 'tests.doubles.nothing_here'. Install its package, or put the folder"),
        ({"name": "m", "backend": "python", "class": "tests.doubles.instant:Missing"},
         "models[0] ('m'): class 'tests.doubles.instant:Missing': module tests.doubles.instant "
         "has no Missing."),
        ({"name": "m", "backend": "python", "class": "tests.doubles.instant:RESPONSE"},
         "models[0] ('m'): class 'tests.doubles.instant:RESPONSE' is not a subclass of "
         "batchpredict.backends.base.Backend."),
        ({"name": "m", "backend": "python", "class": "batchpredict.backends.base:Backend"},
         "models[0] ('m'): class 'batchpredict.backends.base:Backend' is abstract"),
        ({"name": "m", "backend": "server"},
         "models[0] ('m'): command is required: the server's argv"),
        ({"name": "m", "backend": "server", "command": "vllm serve"},
         "models[0] ('m'): command must be a list of strings"),
        ({"name": "m", "backend": "server", "command": ["vllm", "serve", "x"]},
         "models[0] ('m'): command must pass {port} to the server"),
        ({"name": "m", "backend": "server", "command": ["x", "{port}"], "idle_seconds": -1},
         "models[0] ('m'): idle_seconds must be 0 (never) or more."),
        ({"name": "m", "backend": "server", "command": ["x", "{port}"], "startup_secs": 9},
         "models[0] ('m'): unknown setting 'startup_secs'. Settings of this backend:"),
        ({"backend": "openai"}, "models[0] needs a name and a backend"),
    ],
)
def test_bad_settings_name_the_entry_and_field(tmp_path: Path, entry: dict, message: str) -> None:
    path = write_registry(tmp_path / "m.toml", entry)
    with pytest.raises(InvalidArgument) as err:
        ModelRegistry.load(str(path))
    assert str(path) in err.value.message
    assert message in err.value.message


def test_unknown_top_level_keys_and_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('include_default = true\n')
    with pytest.raises(InvalidArgument, match="unknown top-level key"):
        ModelRegistry.load(str(path))
    path.write_text('[[models]\n')
    with pytest.raises(InvalidArgument, match="is not valid TOML"):
        ModelRegistry.load(str(path))


async def test_remote_backends_are_built_from_settings_and_shared(tmp_path: Path,
                                                                 monkeypatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-test")
    reg = ModelRegistry.load(str(write_registry(
        tmp_path / "m.toml",
        {"name": "llama-*", "backend": "openai", "base_url": "http://127.0.0.1:9/v1",
         "api_key_env": "MY_KEY", "concurrency": 5, "rpm": 60, "timeout": 9, "retries": 1},
        {"name": "fixed-*", "backend": "openai", "base_url": "http://127.0.0.1:9/v1",
         "served_model": "org/real-model", "dedupe": False},
        {"name": "gemini-*", "backend": "gemini", "base_url": "http://127.0.0.1:9",
         "api_key_env": "MY_KEY"},
    )))
    try:
        a = await reg.backend_for("llama-8b")
        assert isinstance(a, OpenAIBackend)
        assert (a.model, a.max_concurrency, a.batch_size) == ("llama-8b", 5, 1)
        assert a.settings.rpm == 60 and a.settings.timeout == 9.0 and a.settings.retries == 1
        assert a.session is not None and a.session.connector.limit == 5
        assert a.session.headers["Authorization"] == "Bearer sk-test"
        assert await reg.backend_for("publishers/x/models/llama-8b") is a  # same served model
        assert await reg.backend_for("llama-70b") is not a  # another model: its own limits
        f1 = await reg.backend_for("fixed-1")
        assert f1.model == "org/real-model" and await reg.backend_for("fixed-2") is f1
        assert not isinstance(for_job(f1), DedupingBackend)  # dedupe = false
        assert isinstance(for_job(a), DedupingBackend)
        g = await reg.backend_for("publishers/google/models/gemini-2.5-flash")
        assert isinstance(g, GeminiBackend) and g.model == "gemini-2.5-flash"
    finally:
        await reg.close()


async def test_a_missing_api_key_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    reg = ModelRegistry.load(str(write_registry(
        tmp_path / "m.toml",
        {"name": "m", "backend": "openai", "base_url": "http://127.0.0.1:9/v1",
         "api_key_env": "NOT_SET_KEY"})))
    with pytest.raises(InvalidArgument, match="environment variable NOT_SET_KEY, which is not set"):
        await reg.backend_for("m")


def test_examples_file_loads_and_documents_every_backend() -> None:
    """Loading checks every entry's settings; the managed servers carry the throughput flags."""
    reg = ModelRegistry.load(str(REPO / "examples" / "models.toml"))
    kinds = {e.backend for e in reg.entries}
    assert {"local", "openai", "gemini", "server"} <= kinds
    servers = {e.name: e.settings for e in reg.entries if e.backend == "server"}
    commands = {name: " ".join(st.command) for name, st in servers.items()}
    vllm = next(c for c in commands.values() if " serve " in c and "vllm" in c)
    for flag in ("--max-num-seqs", "--max-model-len", "--gpu-memory-utilization",
                 "--enable-prefix-caching", "--port {port}"):
        assert flag in vllm
    sglang = next(c for c in commands.values() if "sglang.launch_server" in c)
    for flag in ("--max-running-requests", "--mem-fraction-static", "--port {port}"):
        assert flag in sglang
    assert any(c.startswith("transformers serve") for c in commands.values())
    for st in servers.values():
        assert st.startup_seconds > 0 and st.env


def test_a_python_entry_builds_its_class_with_the_entrys_options(tmp_path: Path) -> None:
    from tests.doubles.instant import InstantTestDouble

    reg = ModelRegistry.load(str(write_registry(
        tmp_path / "m.toml",
        {"name": "instant", "backend": "python", "class": INSTANT, "batch_size": 3,
         "delay_seconds": 0},
    )))
    [entry] = reg.entries
    assert entry.summary() == f"{INSTANT}(batch_size=3, delay_seconds=0)"
    backend = reg.create_backend(entry)
    assert isinstance(backend, InstantTestDouble) and backend.batch_size == 3


def test_no_test_backend_ships_in_the_package() -> None:
    from batchpredict.backends.registry import BACKEND_KINDS

    assert set(BACKEND_KINDS) == {"onnx", "local", "openai", "gemini", "python", "server"}
    assert not list((REPO / "batchpredict").rglob("testing*.py"))


def test_models_list_shows_the_registry(run_cli, tmp_path: Path) -> None:
    path = write_registry(
        tmp_path / "m.toml",
        {"name": "llama-*", "backend": "openai", "base_url": "http://127.0.0.1:9/v1",
         "rpm": 600, "description": "vLLM box"},
        include_defaults=True,
    )
    env = {"BATCHPREDICT_MODELS_FILE": str(path)}
    done = run_cli("models", "list", "--json", env=env)
    assert done.returncode == 0, done.stderr
    entries = orjson.loads(done.stdout)
    assert entries[0] == {"name": "llama-*", "backend": "openai", "description": "vLLM box",
                          "settings": "http://127.0.0.1:9/v1, concurrency 64, 600 rpm",
                          "dedupe": True, "pattern": True}
    assert [(e["name"], e["backend"]) for e in entries[1:]] == [
        ("smollm2-135m", "onnx"), ("smollm2-135m-transformers", "local"),
        ("SmolLM2-135M-Instruct", "onnx"), ("gemini-*", "onnx")]
    table = run_cli("models", "list", env=env)
    assert "llama-*" in table.stdout and "600 rpm" in table.stdout
    bad = write_registry(tmp_path / "bad.toml", {"name": "x", "backend": "openai", "rpm": "9"})
    failed = run_cli("models", "list", env={"BATCHPREDICT_MODELS_FILE": str(bad)})
    assert failed.returncode == 2
    assert "models[0] ('x'): rpm must be an integer" in failed.stderr
    unknown = run_cli("run", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o"),
                      "--model", "mistral", env=env)
    assert unknown.returncode == 2 and "Available: llama-*, smollm2-135m" in unknown.stderr


def test_every_backend_kind_is_documented() -> None:
    from batchpredict.backends import registry
    from batchpredict.backends.registry import BACKEND_KINDS

    readme = (REPO / "README.md").read_text()
    for kind in BACKEND_KINDS:
        assert f'backend = "{kind}"' in readme, kind
        assert f"- `{kind}`:" in (registry.__doc__ or ""), kind
