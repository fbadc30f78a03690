"""Token sampling in numpy (backends/sampling.py), without a model."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from batchpredict.backends.sampling import gumbel_scores, kept, logsumexp, penalized, sample

LOGITS = np.log(np.array([0.05, 0.5, 0.3, 0.15], dtype=np.float32))


@dataclass
class Seq:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    presence: float = 0.0
    frequency: float = 0.0
    counts: dict[int, int] = field(default_factory=dict)
    rng: np.random.Generator | None = None


def test_cuts_keep_tokens_in_vocabulary_order() -> None:
    keep, probs = kept(LOGITS, Seq(top_k=2))
    assert keep.tolist() == [1, 2] and np.allclose(probs, [0.5 / 0.8, 0.3 / 0.8])
    keep, _ = kept(LOGITS, Seq(top_p=0.6))  # 0.5 alone is under 0.6: 0.3 joins, 0.15 does not
    assert keep.tolist() == [1, 2]
    keep, probs = kept(LOGITS, Seq())
    assert keep is None and np.allclose(probs, [0.05, 0.5, 0.3, 0.15])


def test_nucleus_beyond_the_examined_head() -> None:
    flat = np.zeros(1000, dtype=np.float32)  # uniform: the nucleus is 900 tokens, past 256
    keep, _ = kept(flat, Seq(top_p=0.9))
    assert keep is not None and 899 <= len(keep) <= 901


def test_sample_follows_the_distribution_and_its_seed() -> None:
    draws = [sample(LOGITS, Seq(rng=np.random.default_rng(1))) for _ in range(3)]
    assert len(set(draws)) == 1  # one seed, one draw
    rng = np.random.default_rng(7)
    counts = np.bincount([sample(LOGITS, Seq(rng=rng)) for _ in range(4000)], minlength=4)
    assert np.allclose(counts / 4000, [0.05, 0.5, 0.3, 0.15], atol=0.03)


def test_gumbel_argmax_samples_the_allowed_part() -> None:
    rng = np.random.default_rng(3)
    allowed = np.array([0, 2, 3])  # a mask applied after us, as guidance does
    picks = [allowed[np.argmax(gumbel_scores(LOGITS, Seq(rng=rng))[allowed])]
             for _ in range(4000)]
    freq = np.bincount(picks, minlength=4) / 4000
    assert np.allclose(freq, [0.1, 0, 0.6, 0.3], atol=0.03)
    # outside topK, a token still wins when the mask allows none of the kept ones
    only_cut = gumbel_scores(LOGITS, Seq(top_k=1, rng=rng))
    assert np.argmax(only_cut[[0, 3]]) == 1  # the likelier of the two


def test_penalties_and_logsumexp() -> None:
    seq = Seq(presence=0.5, frequency=0.25, counts={1: 2})
    out = penalized(LOGITS[None, :], [seq])[0]
    assert out[1] == np.float32(LOGITS[1] - 1.0) and out[0] == LOGITS[0]
    assert np.allclose(logsumexp(LOGITS[None, :]), [0.0], atol=1e-6)
