"""Chat records for the demo LM: attachments from the corpus shards, spoken turns by the speech codec, and user
messages that are token for token the prompts ``anygpt chat`` builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anygpt import AnyGPTError
from anygpt.data.shards import ShardWriter, parse_token_string
from anygpt.demo import chat_records
from anygpt.demo.conversations import plan
from anygpt.demo.melodies import plan as melody_plan
from anygpt.demo.scenes import plan as scene_plan

COUNT = 16
WEIGHTS = chat_records.SPEECH_CODEC["checkpoint"]


def write(folder, modality, tags, texts):
    """One shard whose record i holds the codes i, i + 1, i + 2 (so a span names its record)."""
    with ShardWriter(folder / "shard-00000", modality, *tags) as shard:
        for i, text in enumerate(texts):
            shard.add([i % 500, (i + 1) % 500, (i + 2) % 500], text)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not Path(WEIGHTS).is_file():
        pytest.skip(f"{WEIGHTS} is not in this checkout")
    tmp = tmp_path_factory.mktemp("chat")
    scenes, melodies = scene_plan(0, {"train": 60})["train"], melody_plan(0, {"train": 60})["train"]
    write(tmp / "images", "image", ("👀", "<soim>", "<eoim>"), [s["text"] for s in scenes])
    write(tmp / "music", "music", ("🎶", "<somu>", "<eomu>"), [m["text"] for m in melodies])
    summary = chat_records.build(tmp / "chat.jsonl", "train", COUNT, str(tmp / "images"), str(tmp / "music"),
                                 speech_cache=tmp / "speech.jsonl.gz")
    lines = [json.loads(line) for line in (tmp / "chat.jsonl").read_text(encoding="utf-8").splitlines()]
    return tmp, summary, lines


def test_records_carry_the_attachment_codes_and_spoken_turns(built):
    _, summary, lines = built
    planned = plan(0, "train", COUNT)
    assert summary["records"] == len(lines) == COUNT
    assert 0 < summary["spoken_questions"] < COUNT and 0 < summary["spoken_answers"] < COUNT
    for line, record in zip(lines, planned):
        user, answer = (turn["message"] for turn in line["conversation"])
        index = record["attachment"]["corpus"]["index"]
        start, end = ("<soim>", "<eoim>") if record["attachment"]["modality"] == "image" else ("<somu>", "<eomu>")
        assert user.startswith(start)
        codes = parse_token_string(user[:user.index(end) + len(end)])[0].tolist()
        assert codes == [index, index + 1, index + 2]
        assert line["must_name"] == record["must_name"]
        if record["ask"] == "speech":
            assert "<sosp>" in user and record["question"] not in user
            assert user.endswith("Please recognize the voice command and give reply and voice")
        else:
            assert user.endswith(f"{end} {record['question']}")
        assert answer.startswith(record["answer"])
        if record["speak"]:  # the spoken answer: a second or more of 50 codes/s speech after the text
            speech = parse_token_string(answer[len(record["answer"]) + 1:])[0]
            assert len(speech) > 40 and len(set(speech.tolist())) > 5
        else:
            assert answer == record["answer"]


def test_user_messages_are_the_prompts_chat_builds(built):
    from anygpt.data.sft import conversation_example
    from anygpt.lm.chat import chat_prompt_ids, user_message
    from anygpt.lm.unified import UnifiedLM
    from anygpt.tokenizers.image import SeedImageCodec
    from anygpt.tokenizers.music import EncodecMusicCodec
    from anygpt.tokenizers.speech import TINY_CONFIG, SpeechTokenizerCodec

    codecs = {"speech": SpeechTokenizerCodec(config=dict(TINY_CONFIG, codebook_size=256), checkpoint=None,
                                             decoder=None),
              "image": SeedImageCodec.tiny(config={"codebook_size": 512}), "music": EncodecMusicCodec.tiny()}
    model = UnifiedLM(backbone=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    num_key_value_heads=2), tokenizer="tiny", codecs=codecs)
    eos, answer_start = model.layout.token_id("<eos>"), model.layout.token_id("[MMGPT]")
    _, _, lines = built
    for line in lines:
        ids, _ = conversation_example(model.tokenizer, line, eos, answer_start, max_length=8192)
        user = line["conversation"][0]["message"]
        prompt = chat_prompt_ids(model.tokenizer, [], _as_message(user_message, user))
        assert ids[:len(prompt)] == prompt


def _as_message(user_message, user: str):
    """The message ``anygpt chat`` would build for this user string: its media spans, then its text."""
    spans, rest = [], user
    for start, end, modality in (("<soim>", "<eoim>", "image"), ("<somu>", "<eomu>", "music"),
                                 ("<sosp>", "<eosp>", "speech")):
        if start in rest:
            a, b = rest.index(start), rest.index(end) + len(end)
            spans.append((modality, rest[a:b]))
            rest = rest[:a] + rest[b:]
    text = rest.replace("Please recognize the voice command and give reply and voice", "").strip()
    return user_message(text, spans)


def test_shards_of_another_corpus_are_refused_by_name(tmp_path):
    if not Path(WEIGHTS).is_file():
        pytest.skip(f"{WEIGHTS} is not in this checkout")
    write(tmp_path / "images", "image", ("👀", "<soim>", "<eoim>"), [f"caption {i}" for i in range(60)])
    melodies = melody_plan(0, {"train": 60})["train"]
    write(tmp_path / "music", "music", ("🎶", "<somu>", "<eomu>"), [m["text"] for m in melodies])
    with pytest.raises(AnyGPTError, match="images: record .* corpus plan of seed 0"):
        chat_records.build(tmp_path / "out.jsonl", "train", COUNT, str(tmp_path / "images"), str(tmp_path / "music"))
    with pytest.raises(AnyGPTError, match="no finished binary shard at .*none"):
        chat_records.build(tmp_path / "out.jsonl", "train", COUNT, str(tmp_path / "none"), str(tmp_path / "music"))
    assert not (tmp_path / "out.jsonl").exists()


def test_a_speech_cache_rebuilds_the_same_records_without_the_codec(built):
    tmp, summary, lines = built
    cached = chat_records.read_cache(tmp / "speech.jsonl.gz")
    assert len(cached) == summary["spoken_questions"] + summary["spoken_answers"]  # distinct texts and voices here
    nowhere = {**chat_records.SPEECH_CODEC, "checkpoint": str(tmp / "no_such_codec.safetensors")}
    chat_records.build(tmp / "again.jsonl", "train", COUNT, str(tmp / "images"), str(tmp / "music"),
                       codec_args=nowhere, speech_cache=tmp / "speech.jsonl.gz")
    assert (tmp / "again.jsonl").read_text(encoding="utf-8") == (tmp / "chat.jsonl").read_text(encoding="utf-8")
    with pytest.raises(AnyGPTError, match="no_such_codec"):  # a text the cache lacks needs the codec, named
        chat_records.build(tmp / "more.jsonl", "train", COUNT + 8, str(tmp / "images"), str(tmp / "music"),
                           codec_args=nowhere, speech_cache=tmp / "speech.jsonl.gz")
