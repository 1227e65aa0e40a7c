"""Streaming chat replies and predict requests: events join to what ``chat`` and ``predict`` return, and come
while it is generated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anygpt import AnyGPTError
from anygpt.data.chat import parse_conversation
from anygpt.lm.chat_stream import stream_chat
from anygpt.lm.unified import UnifiedLM
from anygpt.tokenizers.speech import SpeechTokenizerCodec

VOICE = Path(__file__).resolve().parents[2] / "examples" / "voice.wav"


@pytest.fixture(scope="module")
def model():
    """A tiny random model that talks: its logits favour opening and closing speech spans, so replies mix text
    and several spans (a random model alone rarely opens one)."""
    backbone = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=512)
    lm = UnifiedLM(backbone=backbone, tokenizer="tiny", codecs={"speech": SpeechTokenizerCodec.tiny()},
                   generation={"chat": {"max_new_tokens": 80},
                               "speech": {"decoder_steps": 1, "max_new_tokens": 200}}).eval()
    tags = lm.layout.ranges["speech"]

    def favour_tags(module, args, out):
        out.logits[..., tags.bos] += 2.0
        out.logits[..., tags.eos] += 2.5
        return out

    lm.backbone.register_forward_hook(favour_tags)
    return lm


def conversation(model, seed: int, speak: bool = True):
    turns = [{"text": "Hello there"}, {"role": "assistant", "text": "Hi"},
             {"text": "Say something", "speak": speak}]
    return parse_conversation({"seed": seed, "turns": turns}, 0, set(model.codecs))


def same_reply(a: dict, b: dict) -> None:
    assert {k: v for k, v in a.items() if k != "media"} == {k: v for k, v in b.items() if k != "media"}
    assert len(a["media"]) == len(b["media"])
    for x, y in zip(a["media"], b["media"]):
        assert x["modality"] == y["modality"] and x["codes"] == y["codes"] and torch.equal(x["media"], y["media"])


@pytest.mark.parametrize("seed", [0, 1])  # two spans; five, the reply cut by the budget
def test_events_join_to_the_reply_chat_returns(model, seed):
    whole = model.chat(conversation(model, seed))
    events = list(model.chat(conversation(model, seed), stream=True))
    assert events[-1]["type"] == "done" and [e["type"] for e in events].count("done") == 1
    same_reply(events[-1]["reply"], whole)
    assert "".join(e["text"] for e in events if e["type"] == "text") == whole["text"]
    spans = [e for e in events if e["type"] in model.codecs]
    assert [(e["type"], e["codes"]) for e in spans] == [(m["modality"], m["codes"]) for m in whole["media"]]
    assert all(torch.equal(e["media"], m["media"]) for e, m in zip(spans, whole["media"]))
    assert whole["media"] and whole["text"]  # text and speech to stream


def test_audio_and_text_arrive_while_the_reply_is_generated(model):
    calls = []
    hook = model.backbone.register_forward_hook(lambda *_: calls.append(1))
    try:
        seen = []
        for event in stream_chat(model, conversation(model, 1), chunk=4, context=8, lookahead=2):
            seen.append((event["type"], len(calls), event))
    finally:
        hook.remove()
    total = len(calls)
    audio = [(n, e) for kind, n, e in seen if kind == "audio"]
    spans = [e for kind, _, e in seen if kind == "speech"]
    assert len(audio) >= 5 and audio[0][0] < total  # the first chunk came before the last network step
    joined = torch.cat([e["audio"] for _, e in audio], dim=-1)
    assert joined.shape[-1] == sum(e["media"].shape[-1] for e in spans)  # every span's samples, once
    assert all(e["sample_rate"] == 16000 for _, e in audio)
    text = [n for kind, n, _ in seen if kind == "text"]
    assert text and text[0] < total and len(text) >= 3


def test_a_voice_prompt_and_a_text_reply_stream_too(model):
    conv = parse_conversation({"seed": 3, "voice_prompt": str(VOICE), "turns": [{"text": "Hi", "speak": False}]},
                              0, set(model.codecs))
    whole = model.chat(parse_conversation({"seed": 3, "voice_prompt": str(VOICE), "turns": [{"text": "Hi"}]},
                                          0, set(model.codecs)))
    events = list(model.chat(conv, stream=True))
    same_reply(events[-1]["reply"], whole)


def test_a_bad_conversation_raises_one_line_before_any_event(model):
    with pytest.raises(AnyGPTError, match="no turns|no user turn"):
        next(iter(model.chat([], stream=True)))


@pytest.mark.parametrize("line", ["text|speech|the red ball is on the table", f"speech|text|{VOICE}",
                                  f"text|speech|hello there|{VOICE}"])
def test_a_predict_request_streams_to_the_response_predict_gives(model, line):
    from anygpt.data.requests import parse_line
    from anygpt.lm.chat_stream import stream_request

    whole = model.predict_step([parse_line(line, 0)])[0]
    events = list(stream_request(model, parse_line(line, 0), chunk=4, context=8, lookahead=2))
    done = events[-1]["response"]
    assert {k: v for k, v in done.items() if k != "media"} == {k: v for k, v in whole.items() if k != "media"}
    if whole["target"] == "text":
        assert whole["text"] and "".join(e["text"] for e in events if e["type"] == "text") == whole["text"]
    else:
        assert torch.equal(done["media"], whole["media"])
        [span] = [e for e in events if e["type"] == "speech"]
        assert torch.equal(span["media"], whole["media"])
        chunks = [e["audio"] for e in events if e["type"] == "audio"]
        assert sum(c.shape[-1] for c in chunks) == whole["media"].shape[-1]


def test_a_bad_request_raises_one_line(model):
    with pytest.raises(AnyGPTError, match="expected source\\|target\\|content"):
        next(model.stream("just text"))
