"""Captioning metrics over tokenised captions: CIDEr-D (Vedantam et al., 2015, as the COCO caption evaluation
computes it) and corpus BLEU-4 (torchmetrics).

No maintained CIDEr exists outside ``pycocoevalcap`` (a 104 MB wheel, most of it Java for METEOR and SPICE), so
CIDEr-D is written here, to the COCO scorer's definition, and tested against ``pycocoevalcap`` where it is
installed: n-grams up to 4, each weighted by tf-idf with document frequencies over the evaluated images'
references, cosine of clipped vectors per n, a Gaussian penalty (sigma 6) on the bigram-count difference, averaged
over n and references, times 10. Captions are lower-cased with punctuation dropped (``tokenize``) instead of the
Stanford PTB tokenizer (Java) that the COCO toolkit runs first.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

SIGMA = 6.0
N = 4


def tokenize(caption: str) -> str:
    """Lower case, punctuation dropped, words joined by single spaces."""
    return " ".join(re.sub(r"[^\w\s']", " ", caption.lower()).split())


def _ngrams(words: list[str]) -> Counter:
    return Counter(tuple(words[i:i + n]) for n in range(1, N + 1) for i in range(len(words) - n + 1))


def _vector(counts: Counter, df: Counter, log_images: float) -> tuple[list[dict], list[float], int]:
    vec: list[dict] = [{} for _ in range(N)]
    norm = [0.0] * N
    for gram, tf in counts.items():
        n = len(gram) - 1
        vec[n][gram] = tf * (log_images - math.log(max(1.0, df[gram])))
        norm[n] += vec[n][gram] ** 2
    bigrams = sum(tf for gram, tf in counts.items() if len(gram) == 2)
    return vec, [math.sqrt(v) for v in norm], bigrams


def _similarity(hyp: tuple, ref: tuple) -> list[float]:
    (vh, nh, lh), (vr, nr, lr) = hyp, ref
    penalty = math.exp(-((lh - lr) ** 2) / (2 * SIGMA ** 2))
    values = []
    for n in range(N):
        value = sum(min(weight, vr[n].get(gram, 0.0)) * vr[n].get(gram, 0.0) for gram, weight in vh[n].items())
        if nh[n] != 0 and nr[n] != 0:
            value /= nh[n] * nr[n]
        values.append(value * penalty)
    return values


def cider_d(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> tuple[float, list[float]]:
    """Corpus CIDEr-D and each image's score, over tokenised captions (``references[i]``: image ``i``'s)."""
    if len(references) != len(hypotheses) or not hypotheses:
        raise ValueError(f"need one hypothesis per image, got {len(hypotheses)} for {len(references)}")
    ref_counts = [[_ngrams(r.split()) for r in refs] for refs in references]
    df: Counter = Counter()
    for counts in ref_counts:
        df.update(set().union(*[set(c) for c in counts]))
    log_images = math.log(float(len(references)))
    scores = []
    for counts, hypothesis in zip(ref_counts, hypotheses):
        hyp = _vector(_ngrams(hypothesis.split()), df, log_images)
        total = [0.0] * N
        for c in counts:
            total = [a + b for a, b in zip(total, _similarity(hyp, _vector(c, df, log_images)))]
        scores.append(sum(total) / N / len(counts) * 10.0)
    return sum(scores) / len(scores), scores


def bleu4(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> float:
    """Corpus BLEU-4 (torchmetrics' ``BLEUScore``: uniform weights, no smoothing) over tokenised captions."""
    from torchmetrics.functional.text import bleu_score

    return float(bleu_score(list(hypotheses), [list(r) for r in references], n_gram=4))
