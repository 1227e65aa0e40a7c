"""The demo world's pictures: PIL-rendered scenes of named shapes and CSS colours, captioned from their description.

A scene is one shape, or two side by side, on a plain or simply patterned background::

    {"path": "img/train/000000.png", "text": "a big red star on a white background",
     "shapes": [{"shape": "star", "color": "red", "size": "big", "position": "center"}], "background": "white"}

A seed in, the same scenes out: every draw comes from the seed and the scene's index, and each picture is drawn at
four times its size and reduced (Pillow's box filter), so edges are smooth and pixels deterministic for a Pillow
version. Splits: ``train`` and ``val`` (new draws of the training combinations) and ``test``, whose combinations
(shape, colour, size, position and background of a single-shape scene; the shape pair and layout of a two-shape
one) never occur in training. Every shape and colour does occur in training, in other combinations.

    python -m anygpt.demo.scenes data/demo/images --seed 0 --train 30000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
from pathlib import Path

from anygpt import AnyGPTError

SIZE = 64
SHAPES = ["circle", "square", "triangle", "diamond", "star", "cross"]
COLORS = {  # CSS names and their sRGB values
    "red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "orange": (255, 165, 0), "purple": (128, 0, 128), "pink": (255, 192, 203), "brown": (165, 42, 42),
    "black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128), "cyan": (0, 255, 255),
}
BACKGROUNDS = {  # name: (top colour, bottom colour, pattern); the shape colours each one hides
    "white": ((255, 255, 255), (255, 255, 255), "plain", {"white", "pink", "yellow", "cyan"}),
    "black": ((0, 0, 0), (0, 0, 0), "plain", {"black", "purple", "brown", "blue", "green"}),
    "light gray": ((211, 211, 211), (211, 211, 211), "plain", {"white", "gray", "pink", "cyan", "yellow"}),
    "beige": ((245, 245, 220), (245, 245, 220), "plain", {"white", "pink", "yellow", "cyan"}),
    "sky blue": ((135, 206, 235), (240, 248, 255), "gradient", {"white", "cyan", "gray", "pink", "blue"}),
    "striped": ((255, 255, 255), (230, 230, 230), "stripes", {"white", "pink", "yellow", "cyan", "gray"}),
}
SIZES = {"small": 0.17, "big": 0.32}  # half the shape's extent, as a share of the picture's side
POSITIONS = {"center": (0.5, 0.5), "left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27),
             "bottom": (0.5, 0.73), "top left": (0.25, 0.25), "top right": (0.75, 0.25),
             "bottom left": (0.25, 0.75), "bottom right": (0.75, 0.75)}
PHRASES = {"center": "in the middle", "left": "on the left", "right": "on the right", "top": "at the top",
           "bottom": "at the bottom", "top left": "in the top left corner", "top right": "in the top right corner",
           "bottom left": "in the bottom left corner", "bottom right": "in the bottom right corner"}
LAYOUTS = {"side by side": ("left", "right"), "one above the other": ("top", "bottom")}
HELD_OUT_SHARE = 0.1


def single_combinations() -> list[tuple[str, str, str, str, str]]:
    """Every (shape, colour, size, position, background) of a one-shape scene: a big shape stays off the corners,
    and a colour is never drawn on a background that hides it."""
    return [(shape, color, size, position, background)
            for background, (*_, hidden) in BACKGROUNDS.items() for shape in SHAPES for color in COLORS
            if color not in hidden for size in SIZES for position in POSITIONS
            if not (size == "big" and position != "center")]


def held_out(combination: tuple, seed: int) -> bool:
    """Whether a combination belongs to the test split (a hash of it and the seed: the same on every machine)."""
    digest = hashlib.sha256(json.dumps([seed, list(combination)]).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELD_OUT_SHARE


def caption(scene: dict) -> str:
    """The scene's description in the demo language."""
    parts = []
    for item in scene["shapes"]:
        words = f"{item['color']} {item['shape']}" if len(scene["shapes"]) > 1 else \
            f"{item['size']} {item['color']} {item['shape']}"
        parts.append(f"{'an' if words[0] in 'aeiou' else 'a'} {words} {PHRASES[item['position']]}")
    background = scene["background"]
    tail = "a striped background" if background == "striped" else f"a {background} background"
    return " and ".join(parts) + f" on {tail}"


def draw_scene(rng: random.Random, split: str, seed: int) -> dict:
    """One scene of a split: a single shape (two in three scenes) or a pair, its combination in or out of the
    held-out set as the split requires."""
    while True:
        background = rng.choice(sorted(BACKGROUNDS))
        hidden = BACKGROUNDS[background][3]
        colors = [c for c in COLORS if c not in hidden]
        if rng.random() < 2 / 3:
            size = rng.choice(sorted(SIZES))
            position = "center" if size == "big" else rng.choice(sorted(POSITIONS))
            shapes = [{"shape": rng.choice(SHAPES), "color": rng.choice(colors), "size": size, "position": position}]
            combination = (shapes[0]["shape"], shapes[0]["color"], size, position, background)
        else:
            layout = rng.choice(sorted(LAYOUTS))
            first, second = rng.sample([(s, c) for s in SHAPES for c in colors], 2)
            shapes = [{"shape": s, "color": c, "size": "small", "position": p}
                      for (s, c), p in zip((first, second), LAYOUTS[layout])]
            combination = (first, second, layout)
        if held_out(combination, seed) == (split == "test"):
            return {"shapes": shapes, "background": background}


def plan(seed: int, counts: dict[str, int]) -> dict[str, list[dict]]:
    """Each split's scenes (a record per picture: path, caption, shapes, background, drawing seed)."""
    out = {}
    for split, count in counts.items():
        rng = random.Random(f"demo-scenes:{seed}:{split}")
        records = []
        for i in range(count):
            scene = draw_scene(rng, split, seed)
            records.append({"path": f"img/{split}/{i:06d}.png", "text": caption(scene), **scene,
                            "seed": rng.randrange(2**31)})
        out[split] = records
    return out


def render(scene: dict, size: int = SIZE):
    """The scene as an RGB ``PIL.Image`` of ``size`` pixels a side (shapes jittered by the record's ``seed``)."""
    from PIL import Image, ImageDraw

    if scene["background"] not in BACKGROUNDS:
        raise AnyGPTError(f"unknown background {scene['background']!r}; expected one of {sorted(BACKGROUNDS)}")
    big = 4 * size
    top, bottom, pattern, _ = BACKGROUNDS[scene["background"]]
    image = Image.new("RGB", (big, big), top)
    draw = ImageDraw.Draw(image)
    for y in range(big):
        t = y / (big - 1)
        if pattern == "gradient":
            draw.line([(0, y), (big, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom)))
        elif pattern == "stripes" and (y * 8 // big) % 2:
            draw.line([(0, y), (big, y)], fill=bottom)
    rng = random.Random(scene.get("seed", 0))
    for item in scene["shapes"]:
        for key, table in (("shape", SHAPES), ("color", COLORS), ("size", SIZES), ("position", POSITIONS)):
            if item.get(key) not in table:
                raise AnyGPTError(f"unknown {key} {item.get(key)!r} in scene {scene.get('text', scene)!r}")
        cx, cy = POSITIONS[item["position"]]
        r = SIZES[item["size"]] * big * rng.uniform(0.92, 1.04)
        cx, cy = (cx + rng.uniform(-0.02, 0.02)) * big, (cy + rng.uniform(-0.02, 0.02)) * big
        fill = COLORS[item["color"]]
        if item["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(outline(item["shape"], cx, cy, r), fill=fill)
    return image.resize((size, size), Image.Resampling.BOX)


def outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """The corners of a polygonal shape of half-extent ``r`` around ``(cx, cy)`` (y grows downwards)."""
    if shape == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif shape == "triangle":
        corners = [(0, -1), (1, 0.85), (-1, 0.85)]
    elif shape == "diamond":
        corners = [(0, -1), (1, 0), (0, 1), (-1, 0)]
    elif shape == "cross":
        w = 1 / 3
        corners = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w),
                   (-w, -w)]
    elif shape == "star":
        corners = [((1 if k % 2 == 0 else 0.42) * math.sin(k * math.pi / 5),
                    -(1 if k % 2 == 0 else 0.42) * math.cos(k * math.pi / 5)) for k in range(10)]
    else:
        raise AnyGPTError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return [(cx + x * r, cy + y * r) for x, y in corners]


def build(folder: str | Path, seed: int = 0, counts: dict[str, int] | None = None, size: int = SIZE) -> dict:
    """Renders every split's pictures and writes its manifest (``{split}.jsonl``); returns a summary that is also
    written as ``corpus.json`` (counts and a digest of each split's manifest and pixels)."""
    folder = Path(folder)
    counts = counts or {"train": 30000, "val": 500, "test": 500}
    if any(count < 0 for count in counts.values()) or size < 8:
        raise AnyGPTError(f"split sizes must not be negative and size must be >= 8, got {counts}, {size}")
    summary = {"seed": seed, "size": size, "splits": {}}
    for split, records in plan(seed, counts).items():
        pixels = hashlib.sha256()
        for record in records:
            path = folder / record["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            image = render(record, size)
            pixels.update(image.tobytes())
            image.save(path)
        manifest = "".join(json.dumps(r) + "\n" for r in records)
        (folder / f"{split}.jsonl").write_text(manifest, encoding="utf-8")
        summary["splits"][split] = {"scenes": len(records),
                                    "manifest_sha256": hashlib.sha256(manifest.encode()).hexdigest()[:16],
                                    "pixels_sha256": pixels.hexdigest()[:16]}
    (folder / "corpus.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render the demo world's scenes.")
    parser.add_argument("folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=30000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--size", type=int, default=SIZE)
    args = parser.parse_args(argv)
    summary = build(args.folder, args.seed, {"train": args.train, "val": args.val, "test": args.test}, args.size)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
