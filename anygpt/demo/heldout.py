"""``anygpt/demo/heldout.jsonl``: the texts of the demo world's held-out split, which the package ships.

One JSON object a line, each modality's test split in split order:

- ``{"modality": "speech", "text": <sentence>, "attributes": {"voice": ..., "pitch": ..., "range": ...,
  "rate": ...}}``: ``anygpt.demo.speech_corpus`` (sentences and espeak-ng voices that training never saw); clips
  are rebuilt from these attributes with :func:`speak`.
- ``{"modality": "image", "text": <caption>, "attributes": {"color": <CSS name>, "shape": ..., "size": ...,
  "position": ..., "background": ...}}`` for a one-shape scene, ``{"shapes": [{"color", "shape", "size",
  "position"}, ...], "background": ...}`` (no top-level colour) for a scene of several: ``anygpt.demo.scenes``
  (combinations that training never saw); :func:`picture` renders one.
- ``{"modality": "music", "text": <caption>, "attributes": {"instrument": ..., "tempo": <bpm>, "tempo_class": ...,
  "key": ..., "mode": ..., "contour": ..., "notes": [[midi, start s, length s], ...]}}``: ``anygpt.demo.melodies``
  (combinations that training never saw); :func:`play` synthesizes one.

    python -m anygpt.demo.heldout anygpt/demo/heldout.jsonl --seed 0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anygpt.demo.speech_corpus import plan

SHIPPED = Path(__file__).with_name("heldout.jsonl")
IMAGES, MELODIES = 300, 200


def speech_lines(seed: int, train: int, val: int, test: int) -> list[dict]:
    """The held-out speech lines of a corpus built with these arguments."""
    records = plan(seed, {"train": train, "val": val, "test": test})["test"]
    return [{"modality": "speech", "text": r["text"],
             "attributes": {"voice": r["voice"], "pitch": r["pitch"], "range": r["range"], "rate": r["rate"]}}
            for r in records]


def image_lines(seed: int, test: int) -> list[dict]:
    """The held-out scenes of a scene corpus built with this seed (its test split, which depends on no other)."""
    from anygpt.demo.scenes import plan as scene_plan

    lines = []
    for record in scene_plan(seed, {"test": test})["test"]:
        shapes, background = record["shapes"], record["background"]
        attributes = dict(shapes[0], background=background) if len(shapes) == 1 else \
            {"shapes": shapes, "background": background}
        attributes["seed"] = record["seed"]
        lines.append({"modality": "image", "text": record["text"], "attributes": attributes})
    return lines


def music_lines(seed: int, test: int) -> list[dict]:
    """The held-out melodies of a melody corpus built with this seed (its test split)."""
    from anygpt.demo.melodies import plan as melody_plan

    keep = ["instrument", "tempo", "tempo_class", "key", "mode", "contour", "notes", "seed"]
    return [{"modality": "music", "text": r["text"], "attributes": {k: r[k] for k in keep}}
            for r in melody_plan(seed, {"test": test})["test"]]


def picture(line: dict, size: int | None = None):
    """A held-out image line's scene as a PIL image, as ``anygpt.demo.scenes.render`` draws it."""
    from anygpt.demo.scenes import SIZE, render

    attributes = line["attributes"]
    shapes = attributes.get("shapes") or [{k: attributes[k] for k in ("shape", "color", "size", "position")}]
    return render({"shapes": shapes, "background": attributes["background"], "seed": attributes.get("seed", 0)},
                  size or SIZE)


def play(line: dict):
    """A held-out music line's melody: 16 kHz float32 samples, as ``anygpt.demo.melodies.synthesize`` makes them."""
    from anygpt.demo.melodies import synthesize

    return synthesize(line["attributes"])


def speak(line: dict):
    """A held-out line's text in its voice (``attributes``: voice, rate, pitch, range), as
    ``anygpt.demo.speech_corpus.speak`` renders it: 16 kHz samples and phoneme spans."""
    from anygpt.demo.speech_corpus import speak as speak_record

    return speak_record({"text": line["text"], **line["attributes"]})


def read(path: str | Path = SHIPPED, modality: str | None = None) -> list[dict]:
    """The lines of a held-out file (the shipped one by default), optionally of one modality."""
    lines = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [line for line in lines if modality is None or line["modality"] == modality]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the demo world's held-out texts.")
    parser.add_argument("path", nargs="?", default=str(SHIPPED))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=60000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--images", type=int, default=IMAGES, help="held-out scenes")
    parser.add_argument("--melodies", type=int, default=MELODIES, help="held-out melodies")
    args = parser.parse_args(argv)
    lines = speech_lines(args.seed, args.train, args.val, args.test) + image_lines(args.seed, args.images) + \
        music_lines(args.seed, args.melodies)
    Path(args.path).write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    print(f"{args.path}: {len(lines)} lines")


if __name__ == "__main__":
    main()
