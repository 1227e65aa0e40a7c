"""SEED-2 image tokenizer encode speed at full size (random weights): pixels -> 32 codes per image.

Rows: ``codec.prequant`` + VQ (what ``encode`` runs after preprocessing) on preprocessed pixel tensors already on
the device, at batch 1, 16 and 64, in the codec's "auto" precision (float16 weights with the ViT under float16
autocast on CUDA, as the original; float32 on CPU); then the CPU preprocessing of one 1024x768 image (bicubic
squash to 224, CLIP normalisation), from a PIL image and from JPEG bytes. Median of ``--repeats`` timed runs after
warm-up.

    python benchmarks/seed_encode_speed.py --device cuda          # prints a table, writes JSON
    python benchmarks/seed_encode_speed.py --device cpu --quick   # tiny sizes: a smoke run
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from timing import device_name, seconds, write_json
from PIL import Image

#: Forward FLOPs per 224x224 image (seed §5): ViT-g 520.7 G, Q-Former 12.7 G, VQ head 0.06 G.
FLOPS_PER_IMAGE = 533.5e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny model (CPU smoke run)")
    parser.add_argument("--out", default="benchmarks/results/seed_encode_speed.json")
    args = parser.parse_args()

    from anygpt.tokenizers.image import REAL_CONFIG, TINY_CONFIG, SeedImageCodec

    config = dict(TINY_CONFIG if args.quick else REAL_CONFIG)
    start = time.perf_counter()
    with torch.device(args.device):  # random weights drawn on the device directly
        codec = SeedImageCodec(quantizer=None, visual=None, decoder=None, config=config)
    codec.to(args.device)
    build_s = time.perf_counter() - start
    dtype = codec.compute_dtype()
    size = config["image_size"]
    batches = [1, 4] if args.quick else [1, 16, 64]
    rows = []
    for batch in batches:
        pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(args.device)

        def encode(pixels=pixels):
            return codec.quantize(codec.prequant(pixels))

        median = seconds(encode, args.device, args.repeats)
        row = {"what": "prequant + VQ", "batch": batch, "median_s": median, "images_per_s": batch / median,
               "ms_per_image": 1000 * median / batch}
        if not args.quick:
            row["tflops"] = FLOPS_PER_IMAGE * batch / median / 1e12
        rows.append(row)

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    for what, item in [("preprocess 1024x768 PIL (CPU)", picture), ("load + preprocess 1024x768 JPEG (CPU)", jpeg)]:
        median = seconds(lambda item=item: codec.preprocess([item]), "cpu", args.repeats)
        rows.append({"what": what, "batch": 1, "median_s": median, "images_per_s": 1 / median,
                     "ms_per_image": 1000 * median})

    print(f"{'what':<40} {'batch':>6} {'median s':>10} {'images/s':>10} {'ms/image':>10} {'TFLOP/s':>8}")
    for row in rows:
        tflops = f"{row['tflops']:>8.1f}" if "tflops" in row else f"{'-':>8}"
        print(f"{row['what']:<40} {row['batch']:>6} {row['median_s']:>10.4f} {row['images_per_s']:>10.1f} "
              f"{row['ms_per_image']:>10.2f} {tflops}")
    on_cuda = args.device.startswith("cuda")
    result = {
        "benchmark": "seed_encode_speed",
        "device": device_name(args.device),
        "torch": torch.__version__, "dtype": f"{dtype} (codec 'auto')", "quick": args.quick,
        "repeats": args.repeats, "config": config, "build_s": build_s,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if on_cuda else None, "rows": rows,
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
