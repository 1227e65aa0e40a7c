"""UnifiedLM with the speech codec: TTS, zero-shot TTS and ASR requests, decode options, bad speech spans."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from anygpt.data.requests import parse_line
from anygpt.lm.unified import UnifiedLM
from anygpt.tokenizers.speech import SpeechTokenizerCodec

ROOT = Path(__file__).resolve().parents[2]
VOICE = ROOT / "examples" / "voice.wav"
BACKBONE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=1024)
SMALL = {"text": {"max_new_tokens": 8}, "speech": {"max_new_tokens": 16, "decoder_steps": 2}}


@pytest.fixture(scope="module")
def model():
    return UnifiedLM(backbone=BACKBONE, tokenizer="tiny", codecs={"speech": SpeechTokenizerCodec.tiny()},
                     generation=SMALL).eval()


def test_three_speech_tasks_reach_the_codec_with_seed_steps_and_prompt(model, tmp_path, monkeypatch):
    codec = model.codecs["speech"]
    calls = []

    @functools.wraps(codec.decode)
    def spy(codes, **kwargs):
        calls.append((codes, kwargs))
        return type(codec).decode(codec, codes, **kwargs)

    monkeypatch.setattr(codec, "decode", spy)
    lines = ["text|speech|Hello there", f"text|speech|Hello there|{VOICE}", f"speech|text|{VOICE}",
             f"text|speech|Hello there|{tmp_path / 'missing.wav'}"]
    batch = [parse_line(line, i) for i, line in enumerate(lines)]
    for r in batch:
        r.seed = 40 + r.index
    out = model.predict_step(batch)
    assert [r["status"] for r in out] == ["ok", "ok", "ok", "error"], out
    assert out[3]["error"].startswith("request 3: voice prompt:") and "missing.wav" in out[3]["error"]
    assert isinstance(out[2]["text"], str) and out[2]["prompt_tokens"] > 50  # 1 s of speech = 50 codes
    assert len(calls) == 2
    (codes0, kw0), (codes1, kw1) = calls
    assert kw0 == {"seeds": [40], "steps": 2}
    assert kw1["seeds"] == [41] and kw1["steps"] == 2
    assert torch.equal(kw1["prompts"][0], codec.encode_prompt(VOICE))  # read once, before generation
    for (codes, kw), response in zip(calls, out):
        assert response["sample_rate"] == 16000 and response["media"].shape == (1, 320 * len(codes[0]))
        again = type(codec).decode(codec, codes, **kw)[0]
        assert torch.equal(again, response["media"])  # deterministic under the request's seed


def test_bad_speech_spans_fail_alone(monkeypatch):
    import anygpt.lm.unified as unified

    model = UnifiedLM(backbone=BACKBONE, tokenizer="tiny", codecs={"speech": SpeechTokenizerCodec.tiny()},
                      generation=SMALL, grammar=False)
    speech = model.layout.ranges["speech"]
    empty = [speech.bos, speech.eos]
    foreign = [speech.bos, speech.start + 3, model.tokenizer.space_id, speech.eos]
    good = [speech.bos, speech.start + 3, speech.start + 1023, speech.eos]
    monkeypatch.setattr(unified, "generate", lambda *a, **k: [empty, foreign, good])
    out = model.predict_step([parse_line(f"text|speech|case {i}", i) for i in range(3)])
    assert [r["status"] for r in out] == ["error", "error", "ok"]
    assert out[0]["error"] == "request 0: ValueError: the speech span is empty"
    assert "not a speech code" in out[1]["error"]
    assert out[2]["media"].shape == (1, 640)
