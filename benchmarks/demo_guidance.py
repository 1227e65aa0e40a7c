"""Classifier-free guidance for the demo's text -> music and text -> image, tuned on the corpora's val split.

The val split holds combinations that training never saw, like the held-out split that ``benchmarks/demo_media.py``
scores, but it is not that split: a scale chosen here is then reported there without having been fitted to it. Each
scale draws the same captions (greedy, the config's presets otherwise); the world's judges score them (melodies:
tempo within 10 % and key and mode, ``anygpt.demo.music_judge``; pictures: every shape's colour and shape,
``anygpt.demo.image_judge``). Only an LM trained with ``text_dropout`` knows the prompt without text that guidance
contrasts with; the corpora come from ``bash configs/demo/stage.sh part2_data``.

    python benchmarks/demo_guidance.py --override=--model.backbone=runs/demo/lm_export --scales 1 1.5 2 3
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from timing import write_json

from anygpt.demo.verdicts import melody_right, scene_right

VAL = {"music": "data/demo/music/val.jsonl", "image": "data/demo/images/val.jsonl"}


def judged(task: str, outputs: list, records: list[dict]) -> dict[str, float]:
    """Shares of the outputs that the world's judge finds right."""
    if task == "music":
        verdicts = [melody_right(wave, record) for wave, record in zip(outputs, records)]
        return {key: sum(v[key] for v in verdicts) / len(verdicts) for key in ("both", "tempo", "key")}
    return {"right": sum(scene_right(picture, record) for picture, record in zip(outputs, records)) / len(records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--override", action="append", default=[],
                        help="an extra CLI argument for the config, one per use: --override=--model.backbone=DIR")
    parser.add_argument("--count", type=int, default=48, help="val captions per task")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--tasks", nargs="+", choices=list(VAL), default=list(VAL))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/demo_guidance.json")
    args = parser.parse_args()
    from anygpt.demo.session import DemoSession
    from anygpt.lm.decoding.presets import GenerationPreset

    demo = DemoSession(args.config, args.override)
    result = {"benchmark": "demo_guidance", "config": args.config, "override": args.override, "count": args.count}
    print(f"{'task':<8} {'scale':>6}  judged right")
    for task in args.tasks:
        path = Path(VAL[task])
        if not path.is_file():
            raise SystemExit(f"demo_guidance: {path} is missing (bash configs/demo/stage.sh part2_data builds it)")
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        records = records[: args.count]
        base = demo.model.presets[task]
        rows = []
        for scale in args.scales:
            demo.model.presets[task] = GenerationPreset(**{**asdict(base), "guidance_scale": scale})
            started = time.perf_counter()
            outputs = demo.generate([record["text"] for record in records], task, seed=args.seed)
            rows.append({"scale": scale, **judged(task, outputs, records),
                         "seconds_per_item": (time.perf_counter() - started) / len(records)})
            print(f"{task:<8} {scale:>6.2f}  " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in rows[-1].items()
                                                          if k not in ("scale", "seconds_per_item")))
        demo.model.presets[task] = base
        result[task] = rows
    write_json(args.out, result)


if __name__ == "__main__":
    main()
