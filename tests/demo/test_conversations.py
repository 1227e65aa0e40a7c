"""The demo world's conversations (anygpt.demo.conversations): plans, the shipped held-out file, rendered lines."""

import json
import re

import pytest

from anygpt import AnyGPTError


def test_plan_is_deterministic_and_asks_about_held_out_items_only():
    from anygpt.demo.conversations import plan
    from anygpt.demo.scenes import held_out

    a = plan(0, "test", 120)
    assert a == plan(0, "test", 120) and a != plan(1, "test", 120)
    scenes = [r["attachment"]["attributes"] for r in a if r["attachment"]["modality"] == "image"]
    singles = [s for s in scenes if len(s["shapes"]) == 1]
    assert singles and all(held_out((s["shapes"][0]["shape"], s["shapes"][0]["color"], s["shapes"][0]["size"],
                                     s["shapes"][0]["position"], s["background"]), 0) for s in singles)
    train = plan(0, "train", 120)
    assert not any(held_out((s["shapes"][0]["shape"], s["shapes"][0]["color"], s["shapes"][0]["size"],
                             s["shapes"][0]["position"], s["background"]), 0)
                   for r in train if r["attachment"]["modality"] == "image"
                   for s in [r["attachment"]["attributes"]] if len(s["shapes"]) == 1)
    for record in a + train:  # every answer names what it must, in English ("an orange", never "a orange")
        assert record["must_name"] and all(w in record["answer"] for w in record["must_name"])
        assert not re.search(r"\ba [aeiou]", record["answer"]) and not re.search(r"\ban [^aeiou]", record["answer"])
    from anygpt.demo.scenes import plan as scene_plan

    corpus = scene_plan(0, {"train": 200})["train"]  # the corpus item a conversation names is its attachment
    for record in (r for r in train if r["attachment"]["modality"] == "image"):
        item = corpus[record["attachment"]["corpus"]["index"]]
        assert item["shapes"] == record["attachment"]["attributes"]["shapes"]
    assert {r["ask"] for r in a} == {"text", "speech"} and {r["speak"] for r in a} == {True, False}


def test_shipped_held_out_conversations_are_the_default_plan():
    from anygpt.demo.conversations import HELD_OUT, plan, read

    assert read() == plan(0, "test", HELD_OUT)


def test_materialized_lines_are_chat_input_with_the_right_attachments(tmp_path):
    """Rendered files carry what the record says: the picture judged from pixels, the melody's tempo tracked, and
    the line parses as the public chat input format."""
    from anygpt.data.chat import parse_conversation
    from anygpt.demo.conversations import materialize, plan
    from anygpt.demo.image_judge import objects
    from anygpt.demo.music_judge import judge

    records = plan(0, "test", 40)
    picture = next(r for r in records if r["attachment"]["modality"] == "image" and r["ask"] == "speech")
    melody = next(r for r in records if r["attachment"]["modality"] == "music" and r["speak"])
    for record in (picture, melody):
        line = materialize(record, tmp_path)
        conversation = parse_conversation(json.loads(json.dumps(line)), 0)
        assert conversation.error is None, conversation.error
        turn = line["turns"][0]
        assert ("speech" in turn) == (record["ask"] == "speech") and turn.get("speak", False) == record["speak"]
    from PIL import Image

    found = sorted((o["shape"], o["color"]) for o in objects(Image.open(tmp_path / f"{picture['id']}.png")))
    assert found == sorted((s["shape"], s["color"]) for s in picture["attachment"]["attributes"]["shapes"])
    import soundfile

    wave, rate = soundfile.read(tmp_path / f"{melody['id']}.wav", dtype="float32")
    assert abs(judge(wave, rate)["tempo"] / melody["attachment"]["attributes"]["tempo"] - 1) < 0.05


def test_names_all_matches_whole_words():
    from anygpt.demo.conversations import names_all

    assert names_all("The star is RED.", ["red"]) and names_all("it is in d minor", ["d minor"])
    assert not names_all("a reddish star", ["red"]) and not names_all("it is in a minor", ["d minor"])
    assert names_all("a blue circle and a red square", ["red", "square", "blue", "circle"])


def test_bad_split_is_one_line():
    from anygpt.demo.conversations import plan

    with pytest.raises(AnyGPTError, match="split of train, val or test"):
        plan(0, "dev", 3)
