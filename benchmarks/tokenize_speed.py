"""Tokenization throughput of each modality codec at full size (random weights): images/s and audio seconds/s.

Rows, each the median of ``--repeats`` timed runs after warm-up (CUDA-synchronised), all under
``torch.inference_mode()`` with TF32 left at torch's defaults (recorded in the JSON):

- image: SEED-2 ``codec.quantize(codec.prequant(pixels))`` on random preprocessed pixels [B, 3, 224, 224] already
  on the device, batch 16 and 64, in the codec's "auto" precision (float16 weights, the ViT under float16
  autocast on CUDA; float32 on CPU).
- image anchor: a stock timm ViT-g/14 (``vit_giant_patch14_224``: width 1408, depth 40, 16 heads, MLP 6144, random
  weights, no head) in float16, forward of batch 64; the SEED rows at that batch get ``ratio_to_timm``. Needs
  ``timm`` (not a project dependency): without it the row is recorded as failed.
- speech: the public ``SpeechTokenizerCodec.encode`` (RVQ-1 ids, what the tokenize CLI stores) of B random 10-s
  16 kHz ``(waveform, rate)`` pairs, batch 1 and 16. ``encode`` takes in-memory waveforms but copies each to the
  CPU (``as_waveform``), so they are given on the CPU and the timing includes the batch's copy to the device and
  the ids' copy back.
- music: the public ``EncodecMusicCodec.encode`` (Encodec 32 kHz, 4 codebooks) of B random 10-s 32 kHz
  ``(waveform, rate)`` pairs, batch 1 and 16, with ``segment_seconds=None`` (the default 5 would encode half).

``--quick`` uses the tiny configs, a tiny float32 timm ViT, batch 1 and 4 (images) / 1 and 2 (1-s audio).

    python benchmarks/tokenize_speed.py --device cuda          # prints a table, writes JSON
    python benchmarks/tokenize_speed.py --device cpu --quick   # tiny sizes: a smoke run
"""

from __future__ import annotations

import argparse
import gc

import torch
from timing import device_name, median_time, write_json


def timed(fn, args) -> tuple:
    """``median_time`` of ``fn`` under ``torch.inference_mode()`` (models are built outside it)."""
    with torch.inference_mode():
        return median_time(fn, args.device, args.repeats)


def row(codec: str, what: str, batch: int, result: tuple, unit: str, amount: float) -> dict:
    """A result row from ``median_time``'s output; ``amount`` is images or audio seconds per call."""
    median, _, peak = result
    out = {"codec": codec, "what": what, "batch": batch, "median_s": median, unit: amount / median}
    if peak is not None:
        out["peak_gib"] = peak
    return out


def bench_image(args, batches: list[int]) -> list[dict]:
    from anygpt.tokenizers.image import REAL_CONFIG, TINY_CONFIG, SeedImageCodec

    config = dict(TINY_CONFIG if args.quick else REAL_CONFIG)
    with torch.device(args.device):  # random weights drawn on the device directly
        codec = SeedImageCodec(quantizer=None, visual=None, decoder=None, config=config)
    codec.to(args.device)
    size, rows = config["image_size"], []
    what = f"prequant + VQ ({codec.compute_dtype()} auto)"
    for batch in batches:
        pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(args.device)
        result = timed(lambda: codec.quantize(codec.prequant(pixels)), args)
        rows.append(row("seed", what, batch, result, "images_per_s", batch))
    return rows


def bench_timm(args, batch: int) -> list[dict]:
    import timm

    if args.quick:
        from timm.models.vision_transformer import VisionTransformer

        model, size, dtype, name = VisionTransformer(img_size=56, patch_size=14, embed_dim=64, depth=1, num_heads=4,
                                                     num_classes=0), 56, torch.float32, "tiny ViT"
    else:
        with torch.device(args.device):  # random weights drawn on the device directly
            model = timm.create_model("vit_giant_patch14_224", pretrained=False, num_classes=0)
        size, dtype, name = 224, torch.float16, "vit_giant_patch14_224"
    model = model.to(args.device, dtype).eval()
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(args.device, dtype)
    return [row("timm", f"{name} forward ({dtype})", batch, timed(lambda: model(pixels), args), "images_per_s", batch)]


def bench_audio(args, codec_name: str, batches: list[int], seconds: int) -> list[dict]:
    if codec_name == "speech":
        from anygpt.tokenizers.speech import REAL_CONFIG, TINY_CONFIG, SpeechTokenizerCodec

        config = dict(TINY_CONFIG if args.quick else REAL_CONFIG)
        codec = SpeechTokenizerCodec(config=config, checkpoint=None, decoder=None)
        what = "encode to RVQ-1 ids (float32)"
    else:
        from anygpt.tokenizers.music import REAL_CONFIG, TINY_CONFIG, EncodecMusicCodec

        config = dict(TINY_CONFIG if args.quick else REAL_CONFIG)
        codec = EncodecMusicCodec(source=None, config=config, segment_seconds=None)
        what = "encode to 4 x 2048 codes (float32)"
    codec.to(args.device)
    rate, rows = codec.sample_rate, []
    for batch in batches:
        gen = torch.Generator().manual_seed(batch)
        items = [((torch.randn(1, rate * seconds, generator=gen).clamp(-3, 3) * 0.1), rate) for _ in range(batch)]
        result = timed(lambda: codec.encode(items), args)
        rows.append(row(codec_name, f"{what}, {seconds} s each", batch, result, "audio_s_per_s", batch * seconds))
    return rows


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny configs and small inputs (CPU smoke run)")
    parser.add_argument("--out", default="benchmarks/results/tokenize_speed.json")
    args = parser.parse_args()

    image_batches = [1, 4] if args.quick else [16, 64]
    audio_batches, seconds = ([1, 2], 1) if args.quick else ([1, 16], 10)
    runs = [
        ("seed", lambda: bench_image(args, image_batches)),
        ("timm", lambda: bench_timm(args, image_batches[-1])),
        ("speech", lambda: bench_audio(args, "speech", audio_batches, seconds)),
        ("music", lambda: bench_audio(args, "music", audio_batches, seconds)),
    ]
    rows = []
    for codec, run in runs:
        try:
            rows += run()
        except Exception as err:  # one failed codec should not lose the others' rows
            rows.append({"codec": codec, "status": f"failed: {type(err).__name__}: {err}"})
        free(args.device)
    timm_rate = {r["batch"]: r["images_per_s"] for r in rows if r["codec"] == "timm" and "median_s" in r}
    for r in rows:
        if r["codec"] == "seed" and r.get("batch") in timm_rate:
            r["ratio_to_timm"] = r["images_per_s"] / timm_rate[r["batch"]]

    print(f"{'codec':<7} {'what':<48} {'batch':>5} {'median s':>9} {'rate':>10} {'unit':<10} {'vs timm':>7} {'GiB':>6}")
    for r in rows:
        if "status" in r:
            print(f"{r['codec']:<7} {r['status']}")
            continue
        unit = "images/s" if "images_per_s" in r else "audio s/s"
        rate = r.get("images_per_s", r.get("audio_s_per_s"))
        ratio = f"{r['ratio_to_timm']:>7.2f}" if "ratio_to_timm" in r else f"{'-':>7}"
        peak = f"{r['peak_gib']:>6.1f}" if "peak_gib" in r else f"{'-':>6}"
        print(f"{r['codec']:<7} {r['what']:<48} {r['batch']:>5} {r['median_s']:>9.4f} {rate:>10.1f} {unit:<10} "
              f"{ratio} {peak}")
    result = {
        "benchmark": "tokenize_speed", "device": device_name(args.device), "quick": args.quick,
        "repeats": args.repeats, "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32, "rows": rows,
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
