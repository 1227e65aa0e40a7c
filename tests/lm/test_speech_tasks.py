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


def test_voice_in_prompt_shows_the_lm_the_prompts_level_one_codes(monkeypatch):
    """With ``voice_in_prompt`` a TTS request's voice prompt reaches the LM as its RVQ-1 codes (the first column of
    the codes SoundStorm gets), after the text; without it, or without a voice prompt, the prompt is the original's."""
    from anygpt.lm import unified
    from anygpt.lm.prompts import base_prompt_ids

    model = UnifiedLM(backbone=BACKBONE, tokenizer="tiny", codecs={"speech": SpeechTokenizerCodec.tiny()},
                      generation=SMALL, voice_in_prompt=True)
    speech, codec = model.layout.ranges["speech"], model.codecs["speech"]
    seen = []

    def fake_generate(backbone, prompts, *args, **kwargs):
        seen.extend(prompts)
        return [[speech.bos, speech.start + 1, speech.eos] for _ in prompts]

    monkeypatch.setattr(unified, "generate", fake_generate)
    batch = [parse_line(f"text|speech|a red ball|{VOICE}", 0), parse_line("text|speech|a red ball", 1)]
    for r in batch:
        r.instruction = "Speak this."
    out = model.predict_step(batch)
    assert [r["status"] for r in out] == ["ok", "ok"], out
    level_one = codec.encode_prompt(VOICE)[:, 0]
    voice = [speech.bos, *(speech.start + level_one).tolist(), speech.eos]
    assert seen[0] == base_prompt_ids(model.tokenizer, "Speak this.", text="a red ball", voice_ids=voice)
    assert seen[1] == base_prompt_ids(model.tokenizer, "Speak this.", text="a red ball")


def test_voice_prompt_records_train_text_to_speech_in_that_voice():
    import random

    from anygpt.lm.prompts import pretrain_sequence_ids

    model = UnifiedLM(backbone=BACKBONE, tokenizer="tiny", codecs={"speech": SpeechTokenizerCodec.tiny()})
    record = {"text": "a red ball", "speech": "<sosp><🗣️5><🗣️6><eosp>", "voice_prompt": "<sosp><🗣️7><🗣️8><🗣️9><eosp>"}
    speech = model.layout.ranges["speech"]
    ids, task = model.build_example(record, random.Random(0), to_text_prob=0.0)
    voice = [speech.bos, speech.start + 7, speech.start + 8, speech.start + 9, speech.eos]
    span = [speech.bos, speech.start + 5, speech.start + 6, speech.eos]
    rng = random.Random(0)
    rng.random()  # the direction's draw, then the instruction's
    instruction = model.instructions.choose("from_text", "speech", rng)
    assert task == "text_to_speech_with_voice"
    assert ids == pretrain_sequence_ids(model.tokenizer, instruction, "a red ball", span, "from_text",
                                        eos_id=model.reply_end_id, voice_ids=voice)
    ids_to_text, task = model.build_example(record, random.Random(0), to_text_prob=1.0)
    assert task == "speech_to_text" and speech.start + 7 not in ids_to_text  # recognition never sees the voice
    with pytest.raises(Exception, match="voice_prompt token string"):
        model.build_example({**record, "voice_prompt": "<sosp><eosp>"}, random.Random(0), to_text_prob=0.0)
