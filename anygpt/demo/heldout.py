"""``anygpt/demo/heldout.jsonl``: the texts of the demo world's held-out split, which the package ships.

One JSON object a line, ``{"modality": "speech", "text": <sentence>, "attributes": {"voice": ..., "pitch": ...,
"range": ..., "rate": ...}}``: the test split of ``anygpt.demo.speech_corpus`` (sentences and espeak-ng voices that
training never saw), in split order. Held-out clips are rebuilt from these attributes with ``Espeak.say``.

    python -m anygpt.demo.heldout anygpt/demo/heldout.jsonl --seed 0 --train 60000 --val 500 --test 500
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anygpt.demo.speech_corpus import plan

SHIPPED = Path(__file__).with_name("heldout.jsonl")


def speech_lines(seed: int, train: int, val: int, test: int) -> list[dict]:
    """The held-out speech lines of a corpus built with these arguments."""
    records = plan(seed, {"train": train, "val": val, "test": test})["test"]
    return [{"modality": "speech", "text": r["text"],
             "attributes": {"voice": r["voice"], "pitch": r["pitch"], "range": r["range"], "rate": r["rate"]}}
            for r in records]


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
    args = parser.parse_args(argv)
    lines = speech_lines(args.seed, args.train, args.val, args.test)
    Path(args.path).write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    print(f"{args.path}: {len(lines)} lines")


if __name__ == "__main__":
    main()
