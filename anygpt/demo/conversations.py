"""The demo world's conversations: questions about an attached picture or melody, asked in writing or aloud, answered
in writing or aloud, with the words a right answer must contain.

Each conversation is drawn from one scene (``anygpt.demo.scenes``) or melody (``anygpt.demo.melodies``) of the same
split, so held-out conversations ask about held-out combinations only; ``corpus`` says which item of that split's
corpus (built with the same seed) it is, so its codes can be looked up after the corpus is tokenized. A plan
record::

    {"id": "train-000000", "attachment": {"modality": "image", "attributes": {<scene>}, "corpus": {"split": "train",
     "index": 17}}, "question": "what colour
     is the star", "ask": "speech", "voice": {"voice": "en-us+m3", "pitch": 50, "range": 60, "rate": 170},
     "speak": false, "answer": "the star is red", "must_name": ["red"]}

``ask: speech`` means the question comes as a clip spoken in ``voice`` (a training voice, or a held-out one in
the test split); ``speak: true`` asks for a spoken answer. :func:`materialize` renders a record's files and returns
it as a line of the chat input format (``anygpt.data.chat``); :func:`names_all` judges a reply.
``anygpt/demo/heldout_chat.jsonl`` ships the held-out records (``python -m anygpt.demo.conversations``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from anygpt import AnyGPTError
from anygpt.demo.scenes import PHRASES

SHIPPED = Path(__file__).with_name("heldout_chat.jsonl")
HELD_OUT = 200
ASK_ALOUD, ANSWER_ALOUD = 0.35, 0.3


def _a(words: str) -> str:
    """``words`` with their indefinite article, as the scene captions write it."""
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def image_questions(scene: dict) -> list[tuple[str, str, list[str]]]:
    """(question, answer, words the answer must name) about a scene."""
    shapes = scene["shapes"]
    described = " and ".join(_a(f"{s['color']} {s['shape']}") for s in shapes)
    out = [("what is in this picture", scene["text"], [w for s in shapes for w in (s["color"], s["shape"])]),
           ("describe the picture", f"i see {described}", [w for s in shapes for w in (s["color"], s["shape"])])]
    if len(shapes) == 1:
        s = shapes[0]
        out += [(f"what colour is the {s['shape']}", f"the {s['shape']} is {s['color']}", [s["color"]]),
                ("what shape do you see", _a(f"{s['color']} {s['shape']}"), [s["shape"]]),
                (f"where is the {s['shape']}", f"it is {PHRASES[s['position']]}",
                 [PHRASES[s["position"]].split(" ", 2)[-1].replace(" corner", "")])]
    else:
        first, second = shapes
        out += [(f"what colour is the {first['shape']}", f"the {first['shape']} is {first['color']}",
                 [first["color"]]) if first["shape"] != second["shape"] else
                ("how many shapes are there", f"two, a {first['shape']} and a {second['shape']}", ["two"])]
    return out


def music_questions(melody: dict) -> list[tuple[str, str, list[str]]]:
    """(question, answer, words the answer must name) about a melody."""
    m = melody
    return [("what instrument is playing", f"it is played on the {m['instrument']}", [m["instrument"]]),
            ("is this melody fast or slow",
             f"it is {m['tempo_class']} at about {m['tempo']} beats per minute", [m["tempo_class"]]),
            ("what key is this melody in", f"it is in {m['key']} {m['mode']}", [f"{m['key']} {m['mode']}"]),
            ("describe this melody", m["text"], [m["instrument"], m["tempo_class"], m["mode"]])]


def plan(seed: int, split: str, count: int) -> list[dict]:
    """``count`` conversations of a split (``train``, ``val`` or ``test``), about its scenes and melodies."""
    from anygpt.demo.melodies import plan as melody_plan
    from anygpt.demo.scenes import plan as scene_plan
    from anygpt.demo.speech_corpus import voice_split

    if count < 0 or split not in ("train", "val", "test"):
        raise AnyGPTError(f"need a split of train, val or test and count >= 0, got {split!r} and {count}")
    rng = random.Random(f"demo-conversations:{seed}:{split}")
    pool = max(1, count // 2)
    scenes = scene_plan(seed, {split: pool})[split]
    melodies = melody_plan(seed, {split: pool})[split]
    voices = voice_split(seed)[1 if split == "test" else 0]
    records = []
    for i in range(count):
        if rng.random() < 0.55:
            index = rng.randrange(len(scenes))
            item = scenes[index]
            modality, questions = "image", image_questions(item)
            attributes = {"shapes": item["shapes"], "background": item["background"], "seed": item["seed"]}
        else:
            index = rng.randrange(len(melodies))
            item = melodies[index]
            modality, questions = "music", music_questions(item)
            attributes = {k: item[k] for k in ("instrument", "tempo", "tempo_class", "key", "mode", "contour",
                                                 "notes", "seed")}
        question, answer, words = questions[rng.randrange(len(questions))]
        aloud = rng.random() < ASK_ALOUD
        voice = voices[rng.randrange(len(voices))]
        records.append({
            "id": f"{split}-{i:06d}",
            "attachment": {"modality": modality, "attributes": attributes, "corpus": {"split": split, "index": index}},
            "question": question, "ask": "speech" if aloud else "text",
            "voice": {"voice": voice["name"], "pitch": voice["pitch"], "range": voice["range"],
                      "rate": rng.randint(150, 190)} if aloud else None,
            "speak": rng.random() < ANSWER_ALOUD, "answer": answer, "must_name": words})
    return records


def materialize(record: dict, folder: str | Path) -> dict:
    """Renders a record's attachment (a PNG or WAV) and spoken question (a WAV) into ``folder`` and returns the
    conversation as a chat input line: ``{"id", "turns": [{"role": "user", "text"|"speech", "image"|"music"}]}``
    with ``speak`` on the turn where a spoken answer is asked for."""
    import soundfile

    from anygpt.demo.heldout import picture, play, speak

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    attachment = record["attachment"]
    turn: dict = {"role": "user"}
    if attachment["modality"] == "image":
        path = folder / f"{record['id']}.png"
        picture({"attributes": attachment["attributes"]}).save(path)
        turn["image"] = str(path)
    elif attachment["modality"] == "music":
        path = folder / f"{record['id']}.wav"
        soundfile.write(path, play({"attributes": attachment["attributes"]}), 16000)
        turn["music"] = str(path)
    else:
        raise AnyGPTError(f"conversation {record.get('id')!r}: unknown attachment modality {attachment['modality']!r}")
    if record["ask"] == "speech":
        question = folder / f"{record['id']}_question.wav"
        soundfile.write(question, speak({"text": record["question"], "attributes": record["voice"]})[0], 16000)
        turn["speech"] = str(question)
    else:
        turn["text"] = record["question"]
    if record["speak"]:
        turn["speak"] = True
    return {"id": record["id"], "turns": [turn]}


def names_all(reply: str, words: list[str]) -> bool:
    """Whether a reply's text (or transcript) contains every required word or phrase, as whole words."""
    text = " ".join(re.findall(r"[a-z0-9]+", reply.lower()))
    return all(re.search(rf"\b{re.escape(w.lower())}\b", text) for w in words)


def read(path: str | Path = SHIPPED) -> list[dict]:
    """The records of a held-out conversation file (the shipped one by default)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the demo world's held-out conversations (or a split's).")
    parser.add_argument("path", nargs="?", default=str(SHIPPED))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test")
    parser.add_argument("--count", type=int, default=HELD_OUT)
    args = parser.parse_args(argv)
    records = plan(args.seed, args.split, args.count)
    Path(args.path).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    print(f"{args.path}: {len(records)} conversations")


if __name__ == "__main__":
    main()
