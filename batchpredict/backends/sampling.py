"""Choosing tokens from logits in numpy, for the onnx engine (and any engine that reads logits).

Every function works on one sequence's scores, or on a batch row by row, and takes its random
draws from that sequence's own generator, so a sequence's choices never depend on what shares
its batch. `sample` draws by inverse CDF over the kept tokens in vocabulary order (one uniform per
token); `gumbel_scores` turns scores into ones whose argmax over any subset of tokens is a sample
restricted to that subset (for constrained decoding, where a mask is applied after us).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Sampled", "gumbel_scores", "kept", "logsumexp", "penalized", "sample"]

_TOP_P_PREFIX = 256  # tokens examined before sorting the whole vocabulary for a topP nucleus


class Sampled(Protocol):
    """What sampling reads of a sequence."""

    temperature: float  # > 0 here; 0 (greedy) is the caller's argmax
    top_k: int  # 0: no cut
    top_p: float
    presence: float
    frequency: float
    counts: dict[int, int]  # tokens generated so far
    rng: np.random.Generator | None


def logsumexp(x: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp of a 2-D array."""
    top = x.max(axis=-1)
    return top + np.log(np.exp(x - top[:, None]).sum(axis=-1))  # type: ignore[no-any-return]


def penalized(logits: np.ndarray, seqs: Sequence[Sampled]) -> np.ndarray:
    """A copy of the rows of `logits` less each sequence's presence and frequency penalties for
    the tokens it generated."""
    scores = logits.copy()
    for k, seq in enumerate(seqs):
        if (seq.presence or seq.frequency) and seq.counts:
            toks = np.fromiter(seq.counts, dtype=np.int64, count=len(seq.counts))
            counts = np.fromiter(seq.counts.values(), dtype=np.float32, count=len(toks))
            scores[k, toks] -= seq.presence + seq.frequency * counts
    return scores


def kept(scores: np.ndarray, seq: Sampled) -> tuple[np.ndarray | None, np.ndarray]:
    """The tokens that may be sampled (None: all, else indexes in vocabulary order) and their
    probabilities at the sequence's temperature: topK first, then the topP nucleus of what is
    left (as transformers does)."""
    x = scores.astype(np.float64) / seq.temperature
    keep: np.ndarray | None = None
    if seq.top_k:
        keep = np.argpartition(x, -seq.top_k)[-seq.top_k:]
        x = x[keep]
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    if seq.top_p < 1.0:
        order = _nucleus(probs, seq.top_p)
        keep = order if keep is None else keep[order]
        probs = probs[order]
    if keep is not None:
        ordered = np.argsort(keep)  # vocabulary order: the draw does not depend on sort details
        keep, probs = keep[ordered], probs[ordered]
    return keep, probs


def sample(scores: np.ndarray, seq: Sampled) -> int:
    """One token by inverse CDF over the kept tokens, with one uniform draw from the sequence's
    own stream."""
    keep, probs = kept(scores, seq)
    cdf = np.cumsum(probs)
    assert seq.rng is not None
    at = min(int(np.searchsorted(cdf, seq.rng.random() * cdf[-1], side="right")), len(cdf) - 1)
    return int(keep[at]) if keep is not None else at


def gumbel_scores(scores: np.ndarray, seq: Sampled) -> np.ndarray:
    """Scores whose argmax over any allowed subset is a sample from the kept distribution
    restricted to that subset. Tokens outside topK/topP sit 1e4 below the kept ones rather than
    at -inf, so that if the schema allows none of the kept tokens the best allowed one wins."""
    keep, probs = kept(scores, seq)
    assert seq.rng is not None
    logp = np.log(np.maximum(probs, 1e-300))
    noisy = logp - np.log(-np.log(seq.rng.random(len(probs)).clip(1e-300, 1.0)))
    if keep is None:
        return noisy  # type: ignore[no-any-return]
    out = scores.astype(np.float64) / seq.temperature - 1e4
    out[keep] = noisy + 1e4
    return out


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Indexes of the smallest most-probable set whose mass reaches top_p (a token is kept while
    the mass before it is at most top_p, as transformers does)."""

    def within(order: np.ndarray) -> np.ndarray | None:
        p = probs[order]
        before = np.cumsum(p) - p
        inside = order[before <= top_p]
        return inside if len(inside) < len(order) else None

    if len(probs) > _TOP_P_PREFIX:  # usually the nucleus is among the most probable few
        head = np.argpartition(probs, -_TOP_P_PREFIX)[-_TOP_P_PREFIX:]
        nucleus = within(head[np.argsort(-probs[head], kind="stable")])
        if nucleus is not None:
            return nucleus
    order = np.argsort(-probs, kind="stable")
    nucleus = within(order)
    return nucleus if nucleus is not None else order
