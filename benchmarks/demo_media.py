"""The demo world's image, music and chat goals on its held-out split (combinations that training never saw).

text->image: the demo draws each held-out caption; the deterministic picture analyser (``anygpt.demo.image_judge``:
regions, CIELAB colour names, contour shape) must find the caption's colour and shape (a scene of several shapes:
every one of them, and nothing else). image->text: the caption the demo writes for the held-out picture must name
its colours and shapes. text->music: the melody made from a held-out caption must have its tempo (within 10 %) and
its key and mode, by the pitch and onset tracker ``anygpt.demo.music_judge``. music->text: the caption of a held-out
melody must name its instrument, tempo class and mode. chat: each held-out conversation (``heldout_chat.jsonl``,
rendered by ``anygpt.demo.conversations.materialize``) is right when the reply (its text, and the demo's transcript of
any speech in it) names every word its ``must_name`` lists; of the spoken replies, how many say them in speech too.
Also the codecs' own round trips (the ceilings of the generation goals) and the CPU time per item. Part 1's speech
goals: ``benchmarks/demo_speech.py``.

    python benchmarks/demo_media.py                        # the shipped weights (configs/demo.yaml)
    python benchmarks/demo_media.py --count 40 --tasks image music
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
from timing import write_json

from anygpt.demo.verdicts import melody_right, melody_words, names_all, scene_right, scene_words


def share(flags: list[bool]) -> float | None:
    return float(np.mean(flags)) if flags else None


def image_part(demo, lines: list[dict], folder: Path, seed: int) -> dict:
    from anygpt.demo.heldout import picture

    paths = []
    for i, line in enumerate(lines):
        paths.append(folder / f"scene_{i:04d}.png")
        picture(line).save(paths[-1])
    single = ["color" in line["attributes"] for line in lines]
    started = time.perf_counter()
    captions = demo.describe(paths, "image", seed=seed)
    caption_s = (time.perf_counter() - started) / len(lines)
    named = [names_all(c, scene_words(line["attributes"])) for c, line in zip(captions, lines)]
    started = time.perf_counter()
    drawn = demo.generate([line["text"] for line in lines], "image", seed=seed)
    draw_s = (time.perf_counter() - started) / len(lines)
    right = [scene_right(p, line["attributes"]) for p, line in zip(drawn, lines)]
    codec = demo.model.codecs["image"]
    rebuilt = codec.decode(codec.encode([str(p) for p in paths]), seeds=[seed + i for i in range(len(paths))])
    kept = [scene_right(p, line["attributes"]) for p, line in zip(rebuilt, lines)]
    pick = lambda flags, one: [f for f, s in zip(flags, single) if s == one]  # noqa: E731
    return {"count": len(lines), "single_shape": sum(single),
            "image_to_text": {"single": share(pick(named, True)), "several": share(pick(named, False)),
                              "seconds_per_image": caption_s,
                              "examples": [{"ref": line["text"], "hyp": c} for line, c in zip(lines, captions)][:5]},
            "text_to_image": {"single": share(pick(right, True)), "several": share(pick(right, False)),
                              "seconds_per_image": draw_s},
            "codec_round_trip": {"single": share(pick(kept, True)), "several": share(pick(kept, False))}}


def music_part(demo, lines: list[dict], folder: Path, seed: int) -> dict:
    from anygpt.demo.heldout import play

    paths = []
    for i, line in enumerate(lines):
        paths.append(folder / f"melody_{i:04d}.wav")
        soundfile.write(paths[-1], play(line), 16000)
    started = time.perf_counter()
    captions = demo.describe(paths, "music", seed=seed)
    caption_s = (time.perf_counter() - started) / len(lines)
    words = [melody_words(line["attributes"]) for line in lines]
    named = [names_all(c, w) for c, w in zip(captions, words)]
    key_named = [names_all(c, [f"{line['attributes']['key']} {line['attributes']['mode']}"])
                 for c, line in zip(captions, lines)]
    started = time.perf_counter()
    made = demo.generate([line["text"] for line in lines], "music", seed=seed)
    make_s = (time.perf_counter() - started) / len(lines)
    judged = [melody_right(m, line["attributes"]) for m, line in zip(made, lines)]
    codec = demo.model.codecs["music"]
    rebuilt = codec.decode(codec.encode([str(p) for p in paths]))
    kept = [melody_right(m, line["attributes"]) for m, line in zip(rebuilt, lines)]
    return {"count": len(lines),
            "music_to_text": {"instrument_tempo_mode": share(named), "key": share(key_named),
                              "seconds_per_melody": caption_s,
                              "examples": [{"ref": line["text"], "hyp": c} for line, c in zip(lines, captions)][:5]},
            "text_to_music": {k: share([j[k] for j in judged]) for k in ("both", "tempo", "key")}
            | {"seconds_per_melody": make_s},
            "codec_round_trip": {k: share([j[k] for j in kept]) for k in ("both", "tempo", "key")}}


def chat_part(demo, records: list[dict], folder: Path, seed: int) -> dict:
    from anygpt.demo.conversations import materialize

    lines = [materialize(record, folder) for record in records]
    started = time.perf_counter()
    responses = demo.chat(lines, seed=seed)
    chat_s = (time.perf_counter() - started) / len(lines)
    right, spoken, says, examples = [], [], [], []
    for record, response in zip(records, responses):
        reply = response["replies"][0] if response.get("replies") else {"text": "", "media": []}
        heard = ""
        speech = [m for m in reply["media"] if m["modality"] == "speech"]
        if speech:
            path = folder / f"{record['id']}_reply.wav"
            soundfile.write(path, speech[0]["media"][0].numpy(), 16000)
            heard = demo.transcribe([path], seed=seed)[0]
            says.append(names_all(heard, record["must_name"]))
        right.append(names_all(f"{reply['text']} {heard}", record["must_name"]))
        spoken.append(bool(speech) == bool(record["speak"]))
        examples.append({"question": record["question"], "reply": reply["text"], "heard": heard,
                         "must_name": record["must_name"]})
    return {"count": len(records), "right": share(right), "spoken_as_asked": share(spoken),
            "speech_names_them": share(says), "spoken_replies": len(says),
            "seconds_per_conversation": chat_s, "examples": examples[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--override", action="append", default=[],
                        help="an extra CLI argument for the config, one per use: --override=--model.backbone=DIR")
    parser.add_argument("--count", type=int, default=100, help="held-out items per modality and conversations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", choices=["image", "music", "chat"], default=["image", "music", "chat"])
    parser.add_argument("--out", default="benchmarks/results/demo_media.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    from anygpt.demo.conversations import read as read_chat
    from anygpt.demo.heldout import read
    from anygpt.demo.session import DemoSession

    started = time.perf_counter()
    demo = DemoSession(args.config, args.override)
    folder = Path(tempfile.mkdtemp(prefix="demo_media_"))
    result = {"benchmark": "demo_media", "config": args.config, "override": args.override,
              "load_s": time.perf_counter() - started}
    if "image" in args.tasks:
        result["image"] = image_part(demo, read(modality="image")[: args.count], folder, args.seed)
    if "music" in args.tasks:
        result["music"] = music_part(demo, read(modality="music")[: args.count], folder, args.seed)
    if "chat" in args.tasks:
        result["chat"] = chat_part(demo, read_chat()[: args.count], folder, args.seed)
    write_json(args.out, result)
    report(result)


def report(result: dict) -> None:
    def pct(value) -> str:
        return "    n/a" if value is None else f"{100 * value:>6.1f}%"

    print(f"{'task':<14} {'measure':<52} {'value':>8}")
    if "image" in result:
        r = result["image"]
        print(f"{'text->image':<14} {'colour and shape right (one shape / several)':<52} "
              f"{pct(r['text_to_image']['single'])} / {pct(r['text_to_image']['several']).strip()}")
        print(f"{'image->text':<14} {'caption names colour and shape (one / several)':<52} "
              f"{pct(r['image_to_text']['single'])} / {pct(r['image_to_text']['several']).strip()}")
        print(f"{'image codec':<14} {'round trip judged right (one / several)':<52} "
              f"{pct(r['codec_round_trip']['single'])} / {pct(r['codec_round_trip']['several']).strip()}")
    if "music" in result:
        r = result["music"]
        print(f"{'text->music':<14} {'tempo within 10 % and key/mode (tempo, key)':<52} "
              f"{pct(r['text_to_music']['both'])} ({pct(r['text_to_music']['tempo']).strip()}, "
              f"{pct(r['text_to_music']['key']).strip()})")
        print(f"{'music->text':<14} {'caption names instrument, tempo class, mode (key)':<52} "
              f"{pct(r['music_to_text']['instrument_tempo_mode'])} ({pct(r['music_to_text']['key']).strip()})")
        print(f"{'music codec':<14} {'round trip: tempo and key/mode right':<52} {pct(r['codec_round_trip']['both'])}")
    if "chat" in result:
        r = result["chat"]
        print(f"{'chat':<14} {'reply names every attribute (spoken as asked)':<52} {pct(r['right'])} "
              f"({pct(r['spoken_as_asked']).strip()})")
        print(f"{'chat':<14} {'spoken replies whose speech alone names them':<52} {pct(r.get('speech_names_them'))}")


if __name__ == "__main__":
    main()
