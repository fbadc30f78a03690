"""Throughput of the embedded engines: the default (onnx: int4 on onnxruntime-genai) against the
transformers reference (local), on the same prompts.

Two measures, each printed as JSON lines, then a markdown table:
- engine tokens/s by batch size: the same fixed prompt set through `backend.generate` in calls
  of `batch_size` rows (as the runner does), each row greedy with a fixed output length
  (`--new-tokens`, end-of-turn never chosen);
- a whole job: `batchpredict run` of the same `--job-rows` rows (sampled, seeded, ending where the
  model ends them, up to 128 tokens) on `smollm2-135m` and on `smollm2-135m-transformers`, timed
  from the command's start to its exit (process start and model load included).

    python bench/engine.py                                   # both engines, CPU
    python bench/engine.py --engines transformers --device cuda --random-weights \
        --batch-sizes 1,64,256,512 --job-rows 0

`--random-weights` (transformers only) builds the SmolLM2-135M architecture with random weights and
a synthetic word-level tokenizer (throughput does not depend on weight values), so it runs where
the GGUF and the converted folder are absent, e.g. on a GPU machine without network.
`--hf-generate` adds the same batches through `model.generate`; `--load` times the transformers
engine's cold (GGUF conversion) and warm loads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchpredict.backends.local import LocalBackend
from batchpredict.backends.onnx_engine import OnnxGenaiBackend
from batchpredict.schema import parse_request

REPO = Path(__file__).resolve().parents[1]
REGISTRY_NAMES = {"onnx": "smollm2-135m", "transformers": "smollm2-135m-transformers"}

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


class FixedLengthOnnx(OnnxGenaiBackend):
    """The onnx engine never choosing end-of-turn, so every row makes `--new-tokens` tokens."""

    def _pick(self, logits, seqs):  # type: ignore[no-untyped-def]
        logits = logits.copy()
        logits[:, sorted(self._eos)] = -1e9
        return super()._pick(logits, seqs)


async def bench_backend(
    backend, batch: int, rows: int, new_tokens: int, extra_words: int = 0, engine: str = "local"
) -> dict:
    backend.batch_size = batch
    reqs = requests(rows, new_tokens, extra_words)
    await backend.generate(reqs[: min(batch, 2)])  # warm-up (allocator, kernels)
    cpu0 = time.process_time()  # every thread of this process: steadier than wall time when
    t0 = time.perf_counter()  # other work shares the machine
    results = []
    for i in range(0, rows, batch):
        results += await backend.generate(reqs[i : i + batch])
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    usage = [r["usageMetadata"] for r in results]
    generated = sum(u["candidatesTokenCount"] for u in usage)
    return {
        "engine": engine,
        "batch_size": batch,
        "rows": rows,
        "prompt_tokens": sum(u["promptTokenCount"] for u in usage),
        "generated_tokens": generated,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(generated / seconds, 1),
        "rows_per_s": round(rows / seconds, 2),
        "cpu_seconds": round(cpu, 3),
        "tokens_per_cpu_s": round(generated / cpu, 1),
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


def job_rows(rows: int) -> list[dict]:
    """A job's input lines: the fixed prompts, sampled (seeded), up to 128 tokens each."""
    return [
        {"key": i, "request": {
            "contents": [{"role": "user", "parts": [{"text": prompt(i)}]}],
            "generationConfig": {"temperature": 0.7, "topP": 0.9, "seed": i,
                                 "maxOutputTokens": 128}}}
        for i in range(rows)
    ]  # fmt: skip


def bench_job(engine: str, rows: int) -> dict:
    """`batchpredict run` of `rows` rows on the engine's registry name, in a fresh process."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in.jsonl"
        inp.write_text("".join(json.dumps(r) + "\n" for r in job_rows(rows)))
        env = {k: v for k, v in os.environ.items() if k != "BATCHPREDICT_MODELS_FILE"}
        env.update(BATCHPREDICT_DATA_DIR=str(Path(tmp) / "data"), HF_HUB_OFFLINE="1",
                   PYTHONPATH=str(REPO))
        cmd = [sys.executable, "-m", "batchpredict", "run", str(inp), "--output",
               str(Path(tmp) / "out"), "--model", REGISTRY_NAMES[engine], "-q"]
        import resource

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        seconds = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        if done.returncode != 0:
            raise SystemExit(f"{engine} job failed:\n{done.stderr}")
        [out] = (Path(tmp) / "out").glob("prediction-model-*/predictions.jsonl")
        lines = [json.loads(line) for line in out.read_text().splitlines()]
    generated = sum(line["response"]["usageMetadata"]["candidatesTokenCount"]
                    for line in lines if not line["status"])
    return {"measure": "job", "engine": engine, "rows": rows,
            "succeeded": sum(not line["status"] for line in lines),
            "generated_tokens": generated, "seconds": round(seconds, 2),
            "tokens_per_s": round(generated / seconds, 1), "cpu_seconds": round(cpu, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="onnx,transformers", help="onnx, transformers or both")
    ap.add_argument("--device", default="auto", help="transformers: auto | cpu | cuda | cuda:N")
    ap.add_argument("--dtype", default="auto", help="transformers: auto | float32 | bfloat16")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--rows", type=int, default=0, help="rows per measurement (0: max(8, batch))")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-words", type=int, default=0, help="filler words added per prompt")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: engine's)")
    ap.add_argument("--job-rows", type=int, default=64, help="rows of the whole job (0: skip)")
    ap.add_argument("--job-repeat", type=int, default=2, help="runs of the job on each engine")
    ap.add_argument("--model-path", default=None, help="transformers: a local model folder")
    ap.add_argument("--random-weights", action="store_true", help="transformers only")
    ap.add_argument("--hf-generate", action="store_true", help="also time model.generate")
    ap.add_argument("--load", action="store_true", help="also time cold/warm model loads")
    args = ap.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    lines: list[dict] = []
    meta = {"machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"}

    def emit(rec: dict) -> None:
        lines.append(rec)
        print(json.dumps(rec), flush=True)

    for engine in engines:
        if engine == "onnx":
            run_onnx(args, batches, emit)
        elif engine == "transformers":
            run_transformers(args, batches, emit, meta)
        else:
            raise SystemExit(f"unknown engine {engine!r}: onnx or transformers")
    for _ in range(args.job_rows and args.job_repeat):
        for engine in engines:  # interleaved, so both see the same spells of outside load
            emit(bench_job(engine, args.job_rows))
    if args.load and not args.random_weights and "transformers" in engines:
        for rec in bench_load(args.device):
            emit(rec)
    print_tables(lines, args.new_tokens, meta)


def run_onnx(args: argparse.Namespace, batches: list[int], emit) -> None:  # type: ignore[no-untyped-def]
    backend = FixedLengthOnnx(threads=args.threads)
    asyncio.run(backend.start())
    emit({"measure": "load", "engine": "onnx", "seconds": round(backend.load_seconds, 2)})
    for batch in batches:
        rows = args.rows or max(8, batch)
        emit(asyncio.run(bench_backend(backend, batch, rows, args.new_tokens, args.prompt_words,
                                       engine="onnx")))  # fmt: skip
    asyncio.run(backend.close())


def run_transformers(args, batches, emit, meta) -> None:  # type: ignore[no-untyped-def]
    import torch

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
        device = str(backend.device)
        if backend.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name()})"
        else:
            device += f" ({torch.get_num_threads()} threads)"
        meta["transformers"] = f"{device}, {str(backend.model.dtype).removeprefix('torch.')}" + (
            ", random weights" if args.random_weights else "")
        emit({"measure": "load", "engine": "transformers",
              "seconds": round(backend.load_seconds, 2)})
        for batch in batches:
            rows = args.rows or max(8, batch)
            work = (backend, batch, rows, args.new_tokens, args.prompt_words)
            emit(asyncio.run(bench_backend(*work, engine="transformers")))
            if args.hf_generate:
                emit(bench_hf_generate(*work))
        asyncio.run(backend.close())


def print_tables(lines: list[dict], new_tokens: int, meta: dict) -> None:
    print(f"\n### Embedded engines, {new_tokens} new tokens per row, greedy, fixed length "
          f"({meta['machine']}; transformers: {meta.get('transformers', '-')})\n")
    rates = {(r["engine"], r["batch_size"]): r for r in lines if "batch_size" in r}
    batches = sorted({b for _, b in rates})
    engines = list(dict.fromkeys(e for e, _ in rates))
    print("tokens/s (tokens per CPU second in brackets: steadier on a shared machine)\n")
    print("| batch | " + " | ".join(f"{e}" for e in engines) + " | onnx / transformers |")
    print("|---:|" + "---:|" * (len(engines) + 1))
    for b in batches:
        cells = [f"{rates[(e, b)]['tokens_per_s']} ({rates[(e, b)]['tokens_per_cpu_s']})"
                 if (e, b) in rates else "-" for e in engines]
        ratio = "-"
        if ("onnx", b) in rates and ("transformers", b) in rates:
            fast, ref = rates[("onnx", b)], rates[("transformers", b)]
            ratio = (f"{fast['tokens_per_s'] / ref['tokens_per_s']:.1f}x "
                     f"({fast['tokens_per_cpu_s'] / ref['tokens_per_cpu_s']:.1f}x)")
        print(f"| {b} | " + " | ".join(cells) + f" | {ratio} |")
    runs: dict[str, list[dict]] = {}
    for r in lines:
        if r.get("measure") == "job":
            runs.setdefault(r["engine"], []).append(r)
    if runs:
        print("\n| whole job | rows | succeeded | output tokens | wall s (each run) "
              "| median wall s | median CPU s |")
        print("|---|---:|---:|---:|---|---:|---:|")
        medians = {}
        for e, rs in runs.items():
            wall = statistics.median(r["seconds"] for r in rs)
            cpu = statistics.median(r["cpu_seconds"] for r in rs)
            medians[e] = (wall, cpu)
            print(f"| {REGISTRY_NAMES[e]} | {rs[0]['rows']} | {rs[0]['succeeded']} | "
                  f"{rs[0]['generated_tokens']} | {', '.join(str(r['seconds']) for r in rs)} | "
                  f"{wall:.1f} | {cpu:.1f} |")
        if {"onnx", "transformers"} <= set(medians):
            (tw, tc), (ow, oc) = medians["transformers"], medians["onnx"]
            print(f"\nwhole job (medians): onnx is {tw / ow:.1f}x faster in wall time, "
                  f"{tc / oc:.1f}x in CPU time")
    for r in lines:
        if r.get("measure") == "load":
            print(f"\nload {r.get('engine', '')} {r.get('phase', '')}: {r['seconds']} s", end="")
    print()


if __name__ == "__main__":
    main()
