"""Throughput of the local engine (LocalBackend) by batch size.

Every measurement sends the same fixed prompt set through `LocalBackend.generate` in calls of
`batch_size` rows (as the runner does), each row greedy with a fixed output length
(`--new-tokens`, end-of-turn ignored), and prints one JSON line. At the end a markdown table goes to
stdout. `--hf-generate` adds the same batches through `model.generate` for comparison, and
`--load` measures the model's cold (GGUF conversion) and warm (cached folder) load times.

    python bench/engine.py                                  # embedded model, CPU
    python bench/engine.py --device cuda --random-weights --batch-sizes 1,64,256,512

`--random-weights` builds the SmolLM2-135M architecture with random weights and a synthetic
word-level tokenizer (throughput does not depend on weight values), so it runs where the GGUF
and the converted folder are absent, e.g. on a GPU machine without network.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchpredict.backends.local import LocalBackend
from batchpredict.schema import parse_request

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain photosynthesis to a ten-year-old.",
    "List three uses of a paperclip.",
    "Why is the sky blue? Answer in two sentences.",
    "Translate 'good morning, how are you today?' into Spanish.",
    "Give me a recipe for a simple tomato soup with basil and garlic.",
    "Summarise the plot of Romeo and Juliet.",
]

# SmolLM2-135M-Instruct's architecture, for --random-weights when no converted folder exists.
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


def random_model_folder(out: Path, source: Path | None) -> Path:
    """A folder with the SmolLM2-135M architecture, random weights and a tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    if source is not None and (source / "config.json").is_file():
        config = AutoConfig.from_pretrained(source, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    else:
        config = LlamaConfig(**{k: v for k, v in SMOLLM2_135M.items() if k != "architectures"})
        tokenizer = synthetic_tokenizer(config.vocab_size)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def synthetic_tokenizer(vocab_size: int):
    """A word-level tokenizer over `vocab_size` ids: one token per whitespace-separated word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=specials[0], bos_token=specials[1],
        eos_token=specials[2], pad_token=specials[2],
    )  # fmt: skip


def prompt(i: int, extra_words: int = 0) -> str:
    """Prompt i of the fixed set, optionally lengthened by `extra_words` filler words."""
    filler = " ".join(f"w{(i * 7919 + j) % 40000 + 100}" for j in range(extra_words))
    return PROMPTS[i % len(PROMPTS)] + (" " + filler if filler else "")


def requests(rows: int, new_tokens: int, extra_words: int = 0) -> list:
    return [
        parse_request(
            {
                "contents": [{"role": "user", "parts": [{"text": prompt(i, extra_words)}]}],
                "generationConfig": {"temperature": 0, "maxOutputTokens": new_tokens},
            }
        )
        for i in range(rows)
    ]


async def bench_backend(
    backend: LocalBackend, batch: int, rows: int, new_tokens: int, extra_words: int = 0
) -> dict:
    backend.batch_size = batch
    reqs = requests(rows, new_tokens, extra_words)
    await backend.generate(reqs[: min(batch, 2)])  # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    results = []
    for i in range(0, rows, batch):
        results += await backend.generate(reqs[i : i + batch])
    seconds = time.perf_counter() - t0
    usage = [r["usageMetadata"] for r in results]
    generated = sum(u["candidatesTokenCount"] for u in usage)
    return {
        "engine": "local",
        "batch_size": batch,
        "rows": rows,
        "prompt_tokens": sum(u["promptTokenCount"] for u in usage),
        "generated_tokens": generated,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(generated / seconds, 1),
        "rows_per_s": round(rows / seconds, 2),
    }


def bench_hf_generate(
    backend: LocalBackend, batch: int, rows: int, new_tokens: int, extra_words: int = 0
) -> dict:
    """The same work through `model.generate` (greedy, left padding, fixed length)."""
    import torch

    tok, model = backend.tokenizer, backend.model
    tok.padding_side = "left"
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": prompt(i, extra_words)}],
            tokenize=False, add_generation_prompt=True,
        ) if tok.chat_template else f"user: {prompt(i, extra_words)}\nassistant: "
        for i in range(rows)
    ]  # fmt: skip
    kw = {"do_sample": False, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    kw["pad_token_id"] = tok.pad_token_id
    with torch.inference_mode():
        enc = tok(texts[:1], return_tensors="pt", add_special_tokens=False).to(backend.device)
        model.generate(**enc, **{**kw, "max_new_tokens": 2, "min_new_tokens": 2})
        t0 = time.perf_counter()
        generated = 0
        for i in range(0, rows, batch):
            enc = tok(texts[i : i + batch], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(backend.device)  # fmt: skip
            out = model.generate(**enc, **kw)
            generated += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
        if backend.device.type == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {
        "engine": "hf_generate",
        "batch_size": batch,
        "rows": rows,
        "generated_tokens": generated,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(generated / seconds, 1),
        "rows_per_s": round(rows / seconds, 2),
    }


def bench_load(device: str) -> list[dict]:
    """Cold: GGUF -> fresh cache folder, then load. Warm: load the now-cached folder."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BATCHPREDICT_MODEL_CACHE"] = str(Path(tmp) / "SmolLM2-135M-Instruct")
        for phase in ("cold", "warm"):
            backend = LocalBackend(device=device)
            t0 = time.perf_counter()
            asyncio.run(backend.start())
            out.append(
                {"measure": "load", "phase": phase, "seconds": round(time.perf_counter() - t0, 2)}
            )
            asyncio.run(backend.close())
        del os.environ["BATCHPREDICT_MODEL_CACHE"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    ap.add_argument("--batch-sizes", default="1,8,16,32")
    ap.add_argument("--rows", type=int, default=0, help="rows per measurement (0: max(8, batch))")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-words", type=int, default=0, help="filler words added per prompt")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: backend's)")
    ap.add_argument("--model-path", default=None, help="a local transformers folder")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--hf-generate", action="store_true", help="also time model.generate")
    ap.add_argument("--load", action="store_true", help="also time cold/warm model loads")
    args = ap.parse_args()

    import torch

    lines: list[dict] = []

    def emit(rec: dict) -> None:
        rec.update(device=meta["device"], dtype=meta["dtype"], weights=meta["weights"])
        lines.append(rec)
        print(json.dumps(rec), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model_path
        if args.random_weights:
            source = Path(model_path) if model_path else None
            if source is None:
                from batchpredict.backends.embedded_model import default_cache_dir

                source = default_cache_dir()
            model_path = str(random_model_folder(Path(tmp) / "random-smollm2-135m", source))
        backend = LocalBackend(
            model_path=model_path, device=args.device, dtype=args.dtype, threads=args.threads
        )
        asyncio.run(backend.start())
        backend._eos = set()  # fixed output length: never stop at end-of-turn
        meta = {
            "device": str(backend.device)
            + (f" ({torch.cuda.get_device_name()})" if backend.device.type == "cuda" else ""),
            "dtype": str(backend.model.dtype).removeprefix("torch."),
            "weights": "random" if args.random_weights else backend.model_version,
        }
        if backend.device.type == "cpu":
            meta["device"] += f" ({torch.get_num_threads()} threads)"
        emit({"measure": "load", "phase": "start()", "seconds": round(backend.load_seconds, 2)})
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            rows = args.rows or max(8, batch)
            work = (backend, batch, rows, args.new_tokens, args.prompt_words)
            emit(asyncio.run(bench_backend(*work)))
            if args.hf_generate:
                emit(bench_hf_generate(*work))
        asyncio.run(backend.close())
    if args.load and not args.random_weights:
        for rec in bench_load(args.device):
            emit(rec)

    print(f"\n### Local engine, {meta['weights']}, {meta['device']}, {meta['dtype']}, "
          f"{args.new_tokens} new tokens per row\n")  # fmt: skip
    print("| engine | batch | rows | tokens/s | rows/s | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in lines:
        if "tokens_per_s" in r:
            print(f"| {r['engine']} | {r['batch_size']} | {r['rows']} | {r['tokens_per_s']} | "
                  f"{r['rows_per_s']} | {r['seconds']} |")  # fmt: skip
    for r in lines:
        if r.get("measure") == "load":
            print(f"\nload {r['phase']}: {r['seconds']} s", end="")
    print()


if __name__ == "__main__":
    main()
