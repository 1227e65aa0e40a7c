"""The demo's image codec alone, on held-out scenes: what it keeps and where it falls short, by shape size.

Three ceilings of the text -> image and image -> text goals (``benchmarks/demo_media.py``), each judged by
``anygpt.demo.image_judge`` (colour and shape of every object, nothing extra):

- round trip: picture -> 32 codes -> unCLIP decoder -> picture, single- and two-shape held-out scenes;
- teacher: the UNet drawing from the teacher's own embedding (the VAE latent pooled as ``LatentEmbedder`` pools it,
  with ``--vae``; then the caption-aligned CLIP's, with ``--clip``, as ``configs/demo/image_codec.yaml`` joins them),
  single shapes by size: what the decoder can do with perfect codes;
- probe: an MLP on the codes of rendered training-split scenes names the shape (and colour) of other
  training-split scenes and of the held-out split's single shapes (combinations training never saw), by size: how
  much of a shape the codes keep, and how well a reader of codes carries over to new combinations, as the LM must
  (on the teacher too, with ``--vae``; on each of its parts, with ``--clip`` too).

    python benchmarks/demo_image_codec.py --codec anygpt/demo/weights/image_codec
    python benchmarks/demo_image_codec.py --codec runs/demo/image_codec/export --vae runs/demo/image_vae/diffusers \
        --clip runs/demo/image_teacher/clip
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timing import write_json

from anygpt.demo.verdicts import scene_right


def load_codec(folder: Path, steps: int):
    from anygpt.decoders.unclip import UnCLIPDecoder
    from anygpt.tokenizers.image import SeedImageCodec

    config = json.loads((folder / "seed_config.json").read_text())
    decoder = UnCLIPDecoder(str(folder / "decoder"), num_inference_steps=steps, guidance_scale=3.0, noise_level=0,
                            height=config["image_size"], width=config["image_size"])
    return SeedImageCodec(quantizer=str(folder / "seed_quantizer.pt"), visual=str(folder / "eva_vit_g.pth"),
                          decoder=decoder, dtype="float32", config=config)


def pixels(pictures: list) -> torch.Tensor:
    """PIL pictures as one ``[B, 3, H, W]`` float batch in [0, 1], as the teacher reads them."""
    return torch.stack([torch.from_numpy(np.asarray(p.convert("RGB"))).permute(2, 0, 1) for p in pictures]) / 255


def by_group(flags: list[bool], groups: list[str]) -> dict[str, float]:
    table = defaultdict(list)
    for flag, group in zip(flags, groups):
        table[group].append(flag)
        table["all"].append(flag)
    return {group: float(np.mean(values)) for group, values in sorted(table.items())}


def probe(features: torch.Tensor, labels: torch.Tensor, small: torch.Tensor, train: int, seed: int,
          heldout: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> dict:
    """Accuracy of a one-hidden-layer MLP fitted on the first ``train`` rows (full batch, 300 steps): on the other
    rows (the training split's combinations) and on ``heldout`` (features, labels, small) of combinations that
    training never saw, by shape size."""
    torch.manual_seed(seed)
    mlp = torch.nn.Sequential(torch.nn.Linear(features.shape[1], 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, int(labels.max()) + 1))
    optimizer = torch.optim.Adam(mlp.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(mlp(features[:train]), labels[:train]).backward()
        optimizer.step()
    out = {}
    with torch.no_grad():
        for prefix, (x, y, tiny) in (("", (features[train:], labels[train:], small[train:])), ("heldout_", heldout)):
            hit = (mlp(x).argmax(1) == y).float()
            out |= {f"{prefix}small": float(hit[tiny].mean()), f"{prefix}big": float(hit[~tiny].mean())}
    return out


def probes(codec, teacher, count: int, seed: int, folder: Path) -> dict:
    """The probes of shape and colour on the codes (and the teacher), fitted on ``count`` training-split scenes and
    judged on others of the training split and on the held-out split's single shapes (heldout.jsonl)."""
    from anygpt.demo.heldout import picture, read
    from anygpt.demo.scenes import plan, render

    scenes = [s for s in plan(seed, {"train": count, "val": 0, "test": 0})["train"] if len(s["shapes"]) == 1]
    held = [line for line in read(modality="image") if "color" in line["attributes"]]
    images = [render(scene) for scene in scenes] + [picture(line) for line in held]
    paths = [folder / f"probe_{i:05d}.png" for i in range(len(images))]
    for image, path in zip(images, paths):
        image.save(path)
    codes = torch.cat([torch.stack(codec.encode([str(p) for p in paths[i: i + 256]]))
                       for i in range(0, len(paths), 256)])
    inputs = {"codes": F.one_hot(codes.long(), codec.model.quantize.embedding.weight.shape[0]).flatten(1).float()}
    if teacher is not None:
        batch = pixels(images)
        parts = {"teacher": teacher} | {f"teacher_{type(e).__name__}": e for e in getattr(teacher, "embedders", [])}
        for name, embedder in parts.items():
            inputs[name] = torch.cat([embedder(batch[i: i + 256]) for i in range(0, len(batch), 256)])
    firsts = [scene["shapes"][0] for scene in scenes] + [line["attributes"] for line in held]
    small = torch.tensor([shape["size"] == "small" for shape in firsts])
    train, n = int(0.8 * len(scenes)), len(scenes)
    out = {"scenes": len(scenes), "train": train, "heldout": len(held)}
    inputs = {name: (x - x[:train].mean(0)) / (x[:train].std(0) + 1e-6) for name, x in inputs.items()}
    for key in ("shape", "color"):
        names = sorted({shape[key] for shape in firsts})
        labels = torch.tensor([names.index(shape[key]) for shape in firsts])
        for name, x in inputs.items():
            out[f"{name}_{key}"] = probe(x[:n], labels[:n], small[:n], train, seed,
                                         (x[n:], labels[n:], small[n:]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", default="anygpt/demo/weights/image_codec", help="a shipped or exported codec folder")
    parser.add_argument("--vae", help="the full VAE (with its encoder) of the teacher, for the teacher rows")
    parser.add_argument("--clip", help="the caption-aligned CLIP that teaches the codec beside the VAE (image_teacher)")
    parser.add_argument("--count", type=int, default=80, help="held-out scenes (single and two-shape)")
    parser.add_argument("--probe", type=int, default=6000, help="training-split scenes drawn for the probe")
    parser.add_argument("--steps", type=int, default=25, help="diffusion steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/demo_image_codec.json")
    args = parser.parse_args()
    import tempfile

    from anygpt.demo.heldout import picture, read

    folder = Path(tempfile.mkdtemp(prefix="demo_image_codec_"))
    codec = load_codec(Path(args.codec), args.steps)
    lines = read(modality="image")[: args.count]
    paths = []
    for i, line in enumerate(lines):
        paths.append(folder / f"heldout_{i:04d}.png")
        picture(line).save(paths[-1])
    decoded = codec.decode(codec.encode([str(p) for p in paths]), seeds=[args.seed + i for i in range(len(paths))])
    groups = [line["attributes"].get("size", "several") for line in lines]
    result = {"benchmark": "demo_image_codec", "codec": args.codec, "count": len(lines),
              "round_trip": by_group([scene_right(p, line["attributes"]) for p, line in zip(decoded, lines)], groups)}
    teacher = None
    if args.vae:
        from anygpt.training.image_embedders import (
            CLIPImageEmbedder,
            ConcatEmbedder,
            LatentEmbedder,
        )

        teacher = LatentEmbedder(args.vae, pool=2)
        if args.clip:
            teacher = ConcatEmbedder([teacher, CLIPImageEmbedder(args.clip)])
        single = [line for line in lines if "color" in line["attributes"]]
        drawn = codec.decoder.decode(teacher(pixels([picture(line) for line in single])),
                                     seeds=list(range(len(single))))
        result["teacher"] = by_group([scene_right(p, line["attributes"]) for p, line in zip(drawn, single)],
                                     [line["attributes"]["size"] for line in single])
    if args.probe:
        result["probe"] = probes(codec, teacher, args.probe, args.seed, folder)
    write_json(args.out, result)
    print(f"{'measure':<34} {'all':>7} {'big':>7} {'small':>7} {'several':>8}   (probes: training split | held-out)")
    rows = [("round trip right", result["round_trip"])]
    rows += [("UNet from the teacher", result["teacher"])] if "teacher" in result else []
    for name, row in rows:
        print(f"{name:<34} " + " ".join(f"{100 * row[k]:>6.1f}%" if k in row else "    n/a"
                                        for k in ("all", "big", "small")) +
              (f" {100 * row['several']:>7.1f}%" if "several" in row else "      n/a"))
    for key, value in result.get("probe", {}).items():
        if isinstance(value, dict):
            print(f"{'probe: ' + key:<34} {'':>7} {100 * value['big']:>6.1f}% {100 * value['small']:>6.1f}%   "
                  f"| {100 * value['heldout_big']:>5.1f}% {100 * value['heldout_small']:>5.1f}%")


if __name__ == "__main__":
    main()
