"""Chat end to end on tiny models: batch predict from configs/chat_tiny.yaml, UnifiedLM.chat, the interactive shell."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch

from anygpt import AnyGPTError
from anygpt.chat_shell import ChatShell
from anygpt.cli import main
from anygpt.data.chat import parse_conversation
from anygpt.lm.chat_session import ChatSession, answer
from anygpt.lm.unified import UnifiedLM
from anygpt.tokenizers.music import EncodecMusicCodec
from anygpt.tokenizers.speech import SpeechTokenizerCodec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def model():
    backbone = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=512)
    codecs = {"speech": SpeechTokenizerCodec.tiny(), "music": EncodecMusicCodec.tiny(segment_seconds=1.0)}
    return UnifiedLM(backbone=backbone, tokenizer="tiny", codecs=codecs,
                     generation={"chat": {"max_new_tokens": 48}, "music": {"max_new_tokens": 48}}).eval()


def test_batch_chat_from_the_tiny_config_with_bad_conversations_failing_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    long_text = " ".join(["word"] * 3000)
    lines = [
        {"id": "good", "turns": [{"text": "What is in this picture?", "image": str(EXAMPLES / "picture.jpg")},
                                 {"text": "And now?"}]},
        {"id": "video", "turns": [{"text": "Watch this", "video": "clip.mp4"}]},
        {"id": "missing", "turns": [{"text": "Listen", "speech": str(tmp_path / "nope.wav")}]},
        {"id": "assistant_only", "turns": [{"role": "assistant", "text": "Hello"}]},
        {"id": "too_long", "turns": [{"text": long_text}]},
        "not json {",
        {"id": "voice", "seed": 5, "turns": [{"speech": str(EXAMPLES / "voice.wav")}]},
    ]
    file = tmp_path / "conversations.jsonl"
    file.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    main(["predict", "--config", str(ROOT / "configs" / "chat_tiny.yaml"),
          "--data.init_args.conversations_file", str(file)])
    out = [json.loads(l) for l in (tmp_path / "outputs" / "chat_tiny" / "predictions.jsonl").read_text().splitlines()]
    status = {r["id"]: r["status"] for r in out}
    assert status == {"good": "ok", "video": "error", "missing": "error", "assistant_only": "error",
                      "too_long": "error", "chat5": "error", "voice": "ok"}
    errors = {r["id"]: r["error"] for r in out if r["status"] == "error"}
    assert "unknown attachment type 'video'" in errors["video"] and errors["video"].startswith("conversation video")
    assert "nope.wav" in errors["missing"] and "turn 0" in errors["missing"]
    assert "no user turn" in errors["assistant_only"]
    assert "exceeds the model's context of 2048" in errors["too_long"]
    assert "bad JSON" in errors["chat5"]
    assert all("\n" not in e for e in errors.values())
    good = next(r for r in out if r["id"] == "good")
    assert [r["turn"] for r in good["replies"]] == [0, 1]  # both user turns answered, in order
    assert good["replies"][1]["prompt_tokens"] > good["replies"][0]["prompt_tokens"] + 1  # the history grew
    for reply in good["replies"]:
        assert Path(reply["file"]).read_text(encoding="utf-8").strip() == reply["text"].strip()
        assert all(Path(m["file"]).is_file() for m in reply["media"])


def test_library_chat_is_seeded_and_independent_of_batch_neighbours(model):
    turns = [{"text": "Hello! Who are you?"}, {"role": "assistant", "text": "I am MMGPT."},
             {"text": "Play me something.", "music": str(EXAMPLES / "tone.wav")}]
    first = model.chat({"turns": turns, "seed": 11})
    again = model.chat({"turns": turns, "seed": 11})
    other = model.chat({"turns": turns, "seed": 12})
    assert first["text"] == again["text"] and first["text"] != other["text"]
    for a, b in zip(first["media"], again["media"]):
        torch.testing.assert_close(a["media"], b["media"])
    neighbours = [parse_conversation({"turns": [{"text": "Something else entirely, please."}], "seed": 3}, 0),
                  parse_conversation({"turns": turns, "seed": 11}, 1)]
    batched = answer(model, neighbours)[1]["replies"][-1]
    assert batched["text"] == first["text"] and batched["generated_tokens"] == first["generated_tokens"]


def test_bad_library_input_raises_one_line(model):
    with pytest.raises(AnyGPTError, match="no user turn"):
        model.chat([{"role": "assistant", "text": "Hi"}])
    with pytest.raises(AnyGPTError, match="unknown attachment type 'image'"):
        model.chat([{"text": "Look", "image": "a.jpg"}])  # this model has no image codec
    with pytest.raises(AnyGPTError, match="neither text nor media"):
        model.chat([{"text": "  "}])


def test_long_histories_drop_the_oldest_exchanges_and_say_so(model):
    turns = []
    for i in range(8):
        turns += [{"text": f"Tell me fact number {i} about the sea and its many waves."},
                  {"role": "assistant", "text": f"Fact {i}: the sea is wide, deep, old and full of waves and fish."}]
    turns.append({"text": "Which fact was the first?"})
    reply = model.chat(turns, max_reply_tokens=300)
    assert reply["dropped_turns"] > 0 and reply["prompt_tokens"] + 300 <= 512
    with pytest.raises(AnyGPTError, match="exceeds the model's context"):
        model.chat(turns, max_reply_tokens=300, drop_history=False)



def test_shell_scripted_through_stdin(model, tmp_path):
    script = "\n".join([
        "Hello there!",
        f"/music {EXAMPLES / 'tone.wav'}",
        "What do you hear?",
        "/video clip.mp4",
        f"/speech {tmp_path / 'nope.wav'}",
        "/speak",
        "Say hi.",
        "/clear",
        "Hello there!",
        "/quit",
        "never read",
    ]) + "\n"
    stdout = io.StringIO()
    shell = ChatShell(model, output_dir=str(tmp_path / "out"), seed=4, stdin=io.StringIO(script), stdout=stdout)
    shell.run()
    lines = stdout.getvalue().splitlines()
    replies = [l for l in lines if l.startswith("MMGPT: ")]
    assert len(replies) == 4 and replies[0] == replies[3]  # after /clear the first exchange repeats (same seed)
    assert "(attached music:" in stdout.getvalue() and "error: unknown command /video" in stdout.getvalue()
    assert "error: speech file not found" in stdout.getvalue() and "(spoken replies on)" in stdout.getvalue()
    assert "(conversation cleared)" in stdout.getvalue() and "never read" not in stdout.getvalue()
    saved = [l for l in lines if l.strip().startswith("[")]
    assert all(Path(l.strip()[1:-1].split(": ", 1)[1]).is_file() for l in saved)


def test_shell_saves_a_finished_span_of_a_modality_named_audio(model, tmp_path, monkeypatch):
    """A plug-in modality may be named "audio" (examples/plugins/anygpt-audio): its finished span is saved as a
    file, not taken for a chunk of streamed speech (whose event type is also "audio")."""
    import soundfile

    stdout = io.StringIO()
    shell = ChatShell(model, output_dir=str(tmp_path / "out"), stdin=io.StringIO("Make a sound.\n"), stdout=stdout)
    events = [{"type": "text", "text": "Here:"},
              {"type": "audio", "media": torch.zeros(1, 640), "codes": 8, "sample_rate": 24000},
              {"type": "done", "reply": {"dropped_turns": 0, "truncated": False}}]
    monkeypatch.setattr(shell.session, "send", lambda *args, **kwargs: iter(events))
    shell.run()
    saved = [line.strip()[1:-1].split(": ", 1) for line in stdout.getvalue().splitlines()
             if line.strip().startswith("[")]
    assert [kind for kind, _ in saved] == ["audio"], stdout.getvalue()
    info = soundfile.info(saved[0][1])
    assert (info.samplerate, info.frames) == (24000, 640)


def test_session_history_holds_the_generated_ids(model):
    session = ChatSession(model, seed=2)
    first = session.send("Hello there!")
    assert len(session.history) == 1 and session.history[0][0] == "Hello there!"
    generated = session.history[0][1]
    assert len(generated) <= first["generated_tokens"]
    second = session.send("And again?")
    assert second["prompt_tokens"] > first["prompt_tokens"] + len(generated)
    session.clear()
    assert session.history == [] and session.send("Hello there!")["text"] == first["text"]


def test_anygpt_chat_command_reads_stdin(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi!\n/help\n"))
    main(["chat", "--config", str(ROOT / "configs" / "chat_tiny.yaml")])
    out = capsys.readouterr().out
    assert out.count("MMGPT: ") == 1 and "/speak" in out and "/image" in out
