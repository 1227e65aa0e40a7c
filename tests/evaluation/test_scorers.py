"""The evaluation's metrics: the normalisers on explicit cases, WER as torchmetrics computes it, CIDEr-D as the
COCO scorer computes it (where pycocoevalcap is installed) and BLEU-4 as torchmetrics does."""

from __future__ import annotations

import json

import pytest
import torch

from anygpt import AnyGPTError
from anygpt.evaluation.scorers import basic_normalize


def test_basic_normaliser_on_explicit_cases():
    assert basic_normalize("Hello, World!  It's  OK.") == "hello world it's ok"
    assert basic_normalize("'quoted' text -- dash") == "quoted text dash"
    assert basic_normalize("") == ""


def test_wer_scorer_agrees_with_torchmetrics_on_edits():
    from torchmetrics.functional.text import word_error_rate

    from anygpt.evaluation.scorers import METRICS

    refs, hyps = ["the cat sat on the mat", "a b c"], ["the cat sat on mat", ""]
    assert METRICS["asr"]["wer"](refs, hyps) == pytest.approx(float(word_error_rate(hyps, refs)))
    assert METRICS["asr"]["wer"](refs, hyps) == pytest.approx(4 / 9)
    assert torch.isfinite(torch.tensor(METRICS["asr"]["cer"](refs, hyps)))


def test_whisper_normaliser_with_its_spelling_map(tmp_path):
    from anygpt.evaluation.scorers import normalizer

    (tmp_path / "normalizer.json").write_text(json.dumps({"colour": "color"}))
    whisper = normalizer("whisper", str(tmp_path))
    assert whisper("The COLOUR of twenty-one boxes, isn't it?") == "the color of 21 boxes is not it"
    assert whisper("Mr. Brown") == "mister brown"
    with pytest.raises(AnyGPTError, match="normalizer_mapping: no normalizer.json") as err:
        normalizer("whisper", str(tmp_path / "empty"))
    assert "\n" not in str(err.value)


CAPTIONS = [["a cat sits on the mat", "there is a cat on a mat", "cat on mat"],
            ["a dog runs in the park", "the dog is running", "a brown dog"],
            ["two people ride bikes", "people riding bicycles on a road"]]


def test_cider_d_equals_the_coco_scorer():
    """CIDEr-D as pycocoevalcap's Cider computes it (where that package is installed: 104 MB, not a dependency)."""
    from anygpt.evaluation.caption_metrics import cider_d

    cider = pytest.importorskip("pycocoevalcap.cider.cider")
    hyps = ["a cat on a mat", "a dog is running in a park", "a man rides a bike"]
    corpus, each = cider_d(CAPTIONS, hyps)
    theirs, their_each = cider.Cider().compute_score({i: r for i, r in enumerate(CAPTIONS)},
                                                     {i: [h] for i, h in enumerate(hyps)})
    assert corpus == pytest.approx(float(theirs), abs=1e-9)
    assert each == pytest.approx([float(x) for x in their_each], abs=1e-9)


def test_cider_d_prefers_the_right_caption_and_bleu4_is_torchmetrics():
    from torchmetrics.text import BLEUScore

    from anygpt.evaluation.caption_metrics import bleu4, cider_d, tokenize

    right = cider_d(CAPTIONS, ["a cat on a mat", "the dog is running", "people riding bikes"])[0]
    swapped = cider_d(CAPTIONS, ["the dog is running", "people riding bikes", "a cat on a mat"])[0]
    assert right > 1.0 > swapped >= 0.0
    assert cider_d(CAPTIONS, [refs[0] for refs in CAPTIONS])[1][0] > cider_d(CAPTIONS, ["cat"] * 3)[1][0]
    hyps = ["a cat on a mat", "a dog is running in the park", "two people ride bikes"]
    metric = BLEUScore(n_gram=4)
    metric.update(hyps, CAPTIONS)
    assert bleu4(CAPTIONS, hyps) == pytest.approx(float(metric.compute()), abs=1e-9)
    assert tokenize("A Cat, on the MAT!") == "a cat on the mat"
    with pytest.raises(ValueError, match="one hypothesis per image"):
        cider_d(CAPTIONS, ["a"])
