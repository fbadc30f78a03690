"""The default embedded engine: SmolLM2-135M-Instruct as an int4 ONNX model on onnxruntime-genai.

The model is built once by `batchpredict models pull` (`embedded_model.prepare_onnx_model`) beside
the converted HF folder; `model_path` points at any other onnxruntime-genai folder instead. At run
time only `onnxruntime-genai` is needed (no torch, no transformers); nothing touches the network.
A missing model is a FAILED_PRECONDITION telling the user to run `batchpredict models pull`.
It uses all CPUs but one by default (`threads` in the registry entry; see `_load`), and is several
times faster than the transformers reference engine (`local.py`; bench/README.md).

Requests are read by `chat.py`, as on every engine: the chat template of the model folder (applied
by onnxruntime-genai), text parts only (any other part is that row's 400), the same fields
refused, the same default temperature (unset: `default_temperature`, 1.0, Gemini's default).

Decoding. onnxruntime-genai keeps one sampler per generator, whose random draws are shared by
every sequence in its batch, so its own sampling would make a row's text depend on what shares
the batch. This engine therefore samples itself: at each step it reads the batch's logits
(`get_logits`), picks each sequence's token in numpy, and hands the choice back as one-hot logits
(`set_logits`) to a greedy generator (the numpy side is `sampling.py`). So:
- any rows share a batch (length-sorted, at most `batch_size` sequences and `max_batch_tokens`
  prompt+output tokens, since the KV cache is allocated for the longest row);
- each candidate has its own random stream (numpy PCG64 seeded by `chat.candidate_seed(seed, i)`,
  one uniform draw per token, inverse CDF over the kept tokens in vocabulary order): the same row
  and seed give the same text on a rerun, whatever shares its batch;
- temperature, topK, topP (after topK, as transformers does), presence/frequency penalties,
  maxOutputTokens (unset: 256, and never past the context) and stop sequences apply per row; a
  finished row is fed end-of-turn until its batch ends;
- `avgLogprobs` is the mean log-probability of the chosen tokens under the raw distribution
  (read from the same logits: no extra model work).

Structured output (`responseMimeType` application/json, with `responseSchema` or
`responseJsonSchema`, or neither for any JSON object or array) uses onnxruntime-genai's guidance
(`set_guidance("json_schema", ...)`; a Gemini responseSchema's objects are closed, as on Gemini,
and the layout is compact), which masks the logits inside the generator where this
engine cannot read the mask; and its guidance fails when sequences of one batch end at different
steps. So each structured candidate runs in a batch of its own, sampled by the Gumbel-max trick
(noise from the candidate's own stream added to its logits, the generator's greedy pick among
allowed tokens: an exact sample, as reproducible as the rest); avgLogprobs is read as above.
Output cut by maxOutputTokens or a stop sequence may not parse, as on Gemini.

Stop sequences are batchpredict's: the text is cut before the earliest one, finishReason STOP, and
the row stops. Usage counts are real tokens: the templated prompt once, and every candidate's
generated tokens, its end-of-turn token included.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchpredict.backends.chat import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    Sampling,
    candidate_seed,
    find_stop,
    refuse_unsupported,
    response_format,
    text_messages,
)
from batchpredict.backends.embedded_model import (
    EMBEDDED_MODEL_NAME,
    ONNX_SUFFIX,
    is_onnx_folder,
    onnx_model_dir,
)
from batchpredict.backends.engine import Candidate, EmbeddedEngine
from batchpredict.backends.sampling import gumbel_scores, logsumexp, penalized, sample
from batchpredict.errors import BatchPredictError, FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    import numpy as np

    from batchpredict.schema import GenerateContentRequest

__all__ = ["OnnxGenaiBackend"]

#: What a JSON answer without a schema may be.
_ANY_JSON = {"type": ["object", "array"]}
#: llguidance's layout options: one canonical separator instead of any whitespace (the model
#: otherwise spends tokens on blank lines).
_COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(eq=False)
class _Seq(Candidate):
    """A candidate sampled in numpy with its own seeded generator (None: greedy)."""

    seed: int = 0
    schema: Any = None  # a JSON Schema: structured output (guided, alone in its batch)
    rng: np.random.Generator | None = None
    counts: dict[int, int] = field(default_factory=dict)


class OnnxGenaiBackend(EmbeddedEngine):
    """An int4 ONNX causal LM on onnxruntime-genai; one `generate` call at a time."""

    engine_name = "onnx engine"
    kind = "onnx"

    def __init__(
        self,
        model_path: str | None = None,
        batch_size: int = 32,
        model_version: str | None = None,
        *,
        threads: int | None = None,
        max_batch_tokens: int = 32768,
        default_temperature: float = 1.0,
    ) -> None:
        self.model_path = model_path
        self.batch_size = max(1, int(batch_size))
        self.max_concurrency = 1
        self.threads = threads
        #: Most (prompt + output) tokens in one batch: the KV cache is allocated for all of them.
        self.max_batch_tokens = max(1, int(max_batch_tokens))
        #: The temperature of a request that sets none (chat.py: Gemini's default is 1.0).
        self.default_temperature = float(default_temperature)
        folder = Path(model_path).expanduser() if model_path else onnx_model_dir()
        self.folder = folder
        default_version = folder.name if model_path else EMBEDDED_MODEL_NAME + ONNX_SUFFIX
        self.model_version = model_version or default_version
        self.model: Any = None
        self.tokenizer: Any = None
        self.load_seconds: float | None = None
        self._og: Any = None
        self._eos: set[int] = set()
        self._eos_id = 0
        self._pad = 0
        self._vocab = 0
        self._ctx: int | None = None
        self._template = True
        self._init_engine()

    # ---- lifecycle ---------------------------------------------------------------------------

    def _load(self) -> None:
        with self._lock:
            if self.model is not None:
                return
            t0 = time.perf_counter()
            self._stop.clear()
            folder = self.folder
            if not is_onnx_folder(folder):
                if self.model_path:
                    raise FailedPrecondition(
                        f"The folder {folder} is not an onnxruntime-genai model (it needs "
                        "genai_config.json, model.onnx and tokenizer.json): point model_path at "
                        "a folder made by onnxruntime_genai.models.builder."
                    )
                raise FailedPrecondition(
                    f"The embedded model's ONNX build is missing ({folder}). Run "
                    "`batchpredict models pull` once (about a minute) and try again."
                )
            try:
                import onnxruntime_genai as og
            except ImportError:
                raise FailedPrecondition(
                    "The onnx engine needs the onnxruntime-genai package. Run "
                    "`pip install onnxruntime-genai` (or `bash install.sh`) and try again."
                ) from None
            genai = json.loads((folder / "genai_config.json").read_text())["model"]
            config = og.Config(str(folder))
            threads = self.threads
            if threads is None:
                # All usable CPUs but one, as the transformers engine: onnxruntime's threads spin
                # while they wait, and on a busy 2-core box 2 threads ran 3-4x slower than 1
                # (idle, 2 threads were ~1.7x faster: set `threads` on a dedicated machine).
                threads = max(1, len(os.sched_getaffinity(0)) - 1)
            if threads:
                options = {"session_options": {"intra_op_num_threads": int(threads)}}
                config.overlay(json.dumps({"model": {"decoder": options}}))
            model = og.Model(config)
            eos = genai.get("eos_token_id", [])
            self._eos = set(eos if isinstance(eos, list) else [eos])
            self._eos_id = min(self._eos) if self._eos else 0
            self._pad = int(genai.get("pad_token_id", self._eos_id))
            self._vocab = int(genai["vocab_size"])
            self._ctx = genai.get("context_length")
            tok_config = folder / "tokenizer_config.json"
            self._template = (folder / "chat_template.jinja").is_file() or (
                tok_config.is_file() and "chat_template" in json.loads(tok_config.read_text())
            )
            self._og, self.model, self.tokenizer = og, model, og.Tokenizer(model)
            self.load_seconds = time.perf_counter() - t0

    def _unload(self) -> None:
        with self._lock:
            self.model, self.tokenizer = None, None

    # ---- requests ----------------------------------------------------------------------------

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        if self._template:
            text = self.tokenizer.apply_chat_template(
                json.dumps(messages), add_generation_prompt=True
            )
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return [int(t) for t in self.tokenizer.encode(text)]

    def _prepare(self, row: int, req: GenerateContentRequest) -> tuple[list[int], list[_Seq]]:
        import numpy as np

        who = f"the model {self.model_version}"
        refuse_unsupported(req, who)
        s = Sampling.from_config(req.config)
        schema = _guidance_schema(s) if response_format(s, who) == "json" else None
        prompt = self._prompt_ids(text_messages(req, self.model_version))
        if self._ctx is not None and len(prompt) >= self._ctx:
            raise InvalidArgument(
                f"The input token count ({len(prompt)}) exceeds the maximum number of tokens "
                f"allowed ({self._ctx - 1})."
            )
        max_new = s.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS
        if self._ctx is not None:
            max_new = min(max_new, self._ctx - len(prompt))
        temperature = s.temperature_or(self.default_temperature)
        top_k = s.top_k or 0
        seqs = []
        for i in range(s.candidate_count):
            seed = candidate_seed(s.seed if s.seed is not None else secrets.randbits(63), i)
            seqs.append(_Seq(
                row=row, prompt=prompt, max_new=max_new, temperature=temperature,
                top_p=s.top_p if s.top_p is not None else 1.0,
                top_k=top_k if 0 < top_k < self._vocab else 0,
                presence=s.presence_penalty or 0.0, frequency=s.frequency_penalty or 0.0,
                stops=list(s.stop_sequences), seed=seed, schema=schema,
                rng=np.random.Generator(np.random.PCG64(seed)) if temperature > 0 else None,
            ))
        return prompt, seqs

    # ---- decoding ----------------------------------------------------------------------------

    def _run(self, seqs: list[_Seq]) -> dict[int, BatchPredictError]:
        """Structured candidates alone; the others in batches of similar length."""
        batches: list[list[_Seq]] = [[s] for s in seqs if s.schema is not None]
        chunk: list[_Seq] = []
        for seq in sorted((s for s in seqs if s.schema is None),
                          key=lambda s: len(s.prompt) + s.max_new):
            width = max(len(s.prompt) + s.max_new for s in [*chunk, seq])
            if chunk and (len(chunk) >= self.batch_size
                          or (len(chunk) + 1) * width > self.max_batch_tokens):
                batches.append(chunk)
                chunk = []
            chunk.append(seq)
        if chunk:
            batches.append(chunk)
        for batch in batches:
            if batch[0].schema is not None:
                self._decode_guided(batch[0])
            else:
                self._decode(batch)
        return {}

    def _decode(self, seqs: list[_Seq]) -> None:
        """A batch with our own sampling: logits out, the chosen token back in as one-hot."""
        import numpy as np

        og = self._og
        width = max(len(s.prompt) for s in seqs)
        ids = np.full((len(seqs), width), self._pad, dtype=np.int32)
        for k, seq in enumerate(seqs):  # right-padded: onnxruntime-genai masks trailing pads
            ids[k, : len(seq.prompt)] = seq.prompt
        params = og.GeneratorParams(self.model)
        params.set_search_options(
            max_length=width + max(s.max_new for s in seqs), batch_size=len(seqs),
            do_sample=False,
        )
        gen = og.Generator(self.model, params)
        gen.append_tokens(ids)
        rows = np.arange(len(seqs))
        onehot = np.full((len(seqs), 1, self._vocab), -1e9, dtype=np.float32)
        chosen = np.full(len(seqs), self._eos_id, dtype=np.int64)
        while True:
            self._check_cancel()
            logits = gen.get_logits()[:, 0, :]
            alive = [k for k, s in enumerate(seqs) if s.finish is None]
            onehot[rows, 0, chosen] = -1e9
            chosen[:] = self._eos_id  # finished rows: end-of-turn until the batch ends
            picks, logprobs = self._pick(logits[alive], [seqs[k] for k in alive])
            chosen[alive] = picks
            onehot[rows, 0, chosen] = 0.0
            gen.set_logits(onehot)
            gen.generate_next_token()
            for k, tok, lp in zip(alive, picks.tolist(), logprobs.tolist(), strict=True):
                self._advance(seqs[k], tok, lp)
            if all(s.finish is not None for s in seqs):
                return
            if gen.is_done():  # the generator's own length limit: never before ours, but be safe
                for seq in seqs:
                    if seq.finish is None:
                        seq.finish, seq.text = "MAX_TOKENS", self._text(seq.tokens)
                return

    def _decode_guided(self, seq: _Seq) -> None:
        """One structured candidate. Guidance masks the logits inside the generator, after we
        hand them over, so sampling is done by the Gumbel-max trick: we add Gumbel noise from the
        sequence's own stream to its (penalized, tempered, topK/topP-cut) logits, and the
        generator's greedy pick among the tokens the schema allows is then an exact sample from
        the allowed part of the distribution."""
        import numpy as np

        og = self._og
        params = og.GeneratorParams(self.model)
        params.set_search_options(
            max_length=len(seq.prompt) + seq.max_new, batch_size=1, do_sample=False
        )
        params.set_guidance("json_schema", json.dumps(seq.schema))
        gen = og.Generator(self.model, params)
        gen.append_tokens(np.array([seq.prompt], dtype=np.int32))
        while seq.finish is None:
            self._check_cancel()
            logits = gen.get_logits()[0, 0, :]
            scores = logits
            if (seq.presence or seq.frequency) and seq.counts:
                scores = penalized(logits[None, :], [seq])[0]
            if seq.temperature > 0:
                scores = gumbel_scores(scores, seq)
            if scores is not logits:
                gen.set_logits(scores.astype(np.float32)[None, None, :])
            gen.generate_next_token()
            tok = int(gen.get_next_tokens()[0])
            self._advance(seq, tok, float(logits[tok] - logsumexp(logits[None, :])[0]))
            if seq.finish is None and gen.is_done():
                seq.finish, seq.text = "MAX_TOKENS", self._text(seq.tokens)

    def _advance(self, seq: _Seq, tok: int, logprob: float) -> None:
        """Record `tok`; set `seq.finish` and `seq.text` if it ends the sequence."""
        seq.tokens.append(tok)
        seq.counts[tok] = seq.counts.get(tok, 0) + 1
        seq.logprob_sum += logprob
        if tok in self._eos:
            seq.finish, seq.text = "STOP", self._text(seq.tokens[:-1])
            return
        if seq.stops:
            text = self._text(seq.tokens)
            cut = find_stop(text, seq.stops, seq._scanned)
            seq._scanned = len(text)
            if cut is not None:
                seq.finish, seq.text = "STOP", text[:cut]
                return
        if len(seq.tokens) >= seq.max_new:
            seq.finish, seq.text = "MAX_TOKENS", self._text(seq.tokens)

    def _text(self, tokens: list[int]) -> str:
        import numpy as np

        return str(self.tokenizer.decode(np.asarray(tokens, dtype=np.int32)))

    # ---- sampling ----------------------------------------------------------------------------

    def _pick(self, logits: np.ndarray, seqs: list[_Seq]) -> tuple[np.ndarray, np.ndarray]:
        """Next token per sequence (greedy or sampled) and its raw log-probability."""
        import numpy as np

        if any((s.presence or s.frequency) and s.counts for s in seqs):
            scores = penalized(logits, seqs)
        else:
            scores = logits
        chosen = scores.argmax(axis=-1)
        for k, seq in enumerate(seqs):
            if seq.temperature > 0:
                chosen[k] = sample(scores[k], seq)
        lps = logits[np.arange(len(seqs)), chosen] - logsumexp(logits)
        return chosen, lps


def _guidance_schema(s: Sampling) -> Any:
    """The JSON Schema handed to guidance: a Gemini responseSchema allows only the properties it
    lists (its objects are closed), a responseJsonSchema is taken as it is; both are laid out
    compactly unless the schema says otherwise."""
    schema = s.json_schema if s.json_schema is not None else _ANY_JSON
    if s.schema_field == "responseSchema":
        schema = _closed(schema)
    if isinstance(schema, dict) and "x-guidance" not in schema:
        schema = {**schema, "x-guidance": _COMPACT}
    return schema


def _closed(schema: Any) -> Any:
    """`schema` with additionalProperties false on every object that does not say."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) if k in ("items", "anyOf", "oneOf", "allOf") else v
           for k, v in schema.items()}
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _closed(v) for k, v in out["properties"].items()}
    types = out.get("type")
    is_object = types == "object" or (isinstance(types, list) and "object" in types)
    if (is_object or "properties" in out) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out
