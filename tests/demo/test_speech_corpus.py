"""The demo world's speech corpus: espeak-ng through the wheel, deterministic for a seed, held-out split kept apart."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from anygpt import AnyGPTError

pytest.importorskip("espeakng_loader", reason="the demo corpus needs the espeakng-loader wheel")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """The same small corpus built twice, with one and with two worker processes."""
    from anygpt.demo.speech_corpus import build

    folders = [tmp_path_factory.mktemp(f"corpus{w}") for w in (1, 2)]
    summaries = [build(folder, seed=3, train=10, val=3, test=4, workers=w) for folder, w in zip(folders, (1, 2))]
    return folders, summaries


def _records(folder, split):
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


def test_same_seed_same_corpus_whatever_the_worker_count(corpora):
    (a, b), (summary_a, summary_b) = corpora
    assert summary_a["splits"] == summary_b["splits"]
    for split in ("train", "val", "test"):
        assert (a / f"{split}.jsonl").read_bytes() == (b / f"{split}.jsonl").read_bytes()
        for record in _records(a, split):
            assert (a / record["path"]).read_bytes() == (b / record["path"]).read_bytes()


def test_another_seed_gives_another_corpus(corpora, tmp_path):
    from anygpt.demo.speech_corpus import build

    (a, _), _ = corpora
    build(tmp_path, seed=4, train=10, val=3, test=4, workers=1)
    assert _records(tmp_path, "train")[0]["text"] != _records(a, "train")[0]["text"] or \
        _records(tmp_path, "train")[0]["voice"] != _records(a, "train")[0]["voice"]


def test_heldout_sentences_and_voices_never_occur_in_training(corpora):
    from anygpt.demo.speech_corpus import voice_split

    (a, _), _ = corpora
    train = _records(a, "train") + _records(a, "val")
    test = _records(a, "test")
    assert not {r["text"] for r in test} & {r["text"] for r in train}
    variant = lambda name: name.split("+", 1)[1]  # noqa: E731
    assert not {variant(r["voice"]) for r in test} & {variant(r["voice"]) for r in train}
    train_voices, test_voices = voice_split(3)
    assert not {variant(v["name"]) for v in test_voices} & {variant(v["name"]) for v in train_voices}
    assert len({variant(v["name"]) for v in test_voices}) >= 10


def test_clips_are_16khz_speech_with_phoneme_timing_inside_them(corpora):
    (a, _), _ = corpora
    for record in _records(a, "train")[:4]:
        audio, rate = soundfile.read(a / record["path"])
        assert rate == 16000
        assert 0.6 < len(audio) / rate < 6.0
        assert 0.3 < np.abs(audio).max() <= 0.71
        starts = [s for _, s, _ in record["phonemes"]]
        assert starts == sorted(starts)
        assert all(0 <= s < e <= record["seconds"] + 1e-3 for _, s, e in record["phonemes"])
        assert len(record["phonemes"]) >= 2 * len(record["text"].split())  # a few phonemes a word
        # the speech sits where the phonemes say: more energy inside the first phoneme than in the lead-in
        first = record["phonemes"][0]
        inside = audio[int(first[1] * rate): int(first[2] * rate)]
        assert np.sqrt(np.mean(inside ** 2)) > 0.01


def test_espeak_follows_its_arguments_and_rejects_unknown_voices():
    from anygpt.demo.espeak import Espeak

    espeak = Espeak.shared()
    slow = espeak.say("the red ball is on the table", "en-us+m3", rate=120, seed=1)
    fast = espeak.say("the red ball is on the table", "en-us+m3", rate=240, seed=1)
    assert len(slow.audio) > 1.5 * len(fast.audio)
    assert [p for p, _, _ in slow.phonemes][:3] == ["D", "@2", "r"]  # espeak's mnemonics for "the r..."
    with pytest.raises(AnyGPTError, match="no voice 'en-us\\+nobody'"):
        espeak.say("hello", "en-us+nobody")


def test_bad_split_size_is_one_line(tmp_path):
    from anygpt.demo.speech_corpus import build

    with pytest.raises(AnyGPTError, match="must not be negative"):
        build(tmp_path, train=-1)


def test_shipped_heldout_file_is_the_default_corpus_test_split():
    from anygpt.demo import heldout
    from anygpt.demo.grammar import vocabulary

    lines = heldout.read(modality="speech")
    assert len(lines) == 500
    assert lines == heldout.speech_lines(0, 60000, 500, 500)
    words = vocabulary()
    assert all(set(line["text"].split()) <= words for line in lines)
    assert all({"voice", "pitch", "rate", "range"} <= set(line["attributes"]) for line in lines)


def test_demo_text_tokenizer_is_deterministic_and_compact():
    from anygpt.demo.text_tokenizer import train_tokenizer

    a, b = train_tokenizer(0), train_tokenizer(0)
    text = "please take the huge umbrella to the harbour"
    assert a.encode(text) == b.encode(text)
    assert len(a.encode(text)) <= 12  # whole grammar words, not letters
    caption = "a big cyan diamond in the middle on a sky blue background"
    assert len(a.encode(caption)) <= 16 and a.decode(a.encode(caption), skip_special_tokens=True) == caption
    melody = "a slow arch melody in f sharp minor on the clarinet at 72 beats per minute"
    assert len(a.encode(melody)) <= 20
    assert a.decode(a.encode(text), skip_special_tokens=True) == text
