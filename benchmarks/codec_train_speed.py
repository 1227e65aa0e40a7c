"""Training throughput of the codec and decoder trainers (``anygpt/training``): media per second and an MFU-like figure.

Each row trains one trainer for ``--steps`` timed steps (after ``--warmup``) on synthetic batches, calling its own
``training_step`` with a plain optimizer step, at a small and at the released size: audio trainers report seconds
of audio per second, image trainers images per second, from the median step time (``step_s``). FLOPs of one step
(forward and backward) are counted once with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and
convolutions; elementwise work is not counted), so ``mfu`` = counted FLOP/s over the device's dense bf16 peak
(989 TFLOP/s for H100/H200) is a lower bound of the useful work. Random weights: nothing is downloaded.

    python benchmarks/codec_train_speed.py --device cuda                 # every trainer, small and released size
    python benchmarks/codec_train_speed.py --device cuda --only encodec soundstorm --sizes released
    python benchmarks/codec_train_speed.py --device cpu --quick          # small sizes, 2 steps: a smoke run
"""

from __future__ import annotations

import argparse
import gc
import warnings

import torch
from timing import device_name, median_time, write_json

PEAK_FLOPS = {"cuda": 989e12, "cpu": 1e12}


def audio_batch(batch: int, seconds: float, rate: int, device: str) -> dict:
    t = torch.arange(int(seconds * rate), device=device) / rate
    pitch = torch.linspace(150, 600, batch, device=device).unsqueeze(1)
    audio = 0.4 * torch.sin(2 * torch.pi * pitch * t)
    return {"audio": audio, "mask": torch.ones_like(audio, dtype=torch.bool),
            "offset": torch.zeros(batch, device=device), "items": [{"path": "synthetic"}] * batch}


def encodec(size: str, device: str):
    from anygpt.training.music_codec import EncodecTrainer

    config = {} if size == "released" else {"num_filters": 16, "hidden_size": 64, "codebook_dim": 64}
    module = EncodecTrainer(codec={"source": None, "config": config, "segment_seconds": None})
    return module, audio_batch(16 if size == "released" else 8, 1.0, 32000, device), "audio_s", 1.0


def soundstorm(size: str, device: str):
    from anygpt.training.soundstorm import SoundStormTrainer

    decoder = {} if size == "released" else {"dim": 256, "depth": 4, "heads": 4, "dim_head": 64}
    codec = {"config": {"n_filters": 4, "dimension": 32, "semantic_dimension": 16}, "checkpoint": None,
             "decoder": None}  # the frozen codec only makes the codes: a narrow one
    module = SoundStormTrainer(decoder=decoder, codec=codec, init_from_codec=False)
    return module, audio_batch(8, 15.0 if size == "released" else 5.0, 16000, device), "audio_s", 15.0 if size == "released" else 5.0


SD21_UNET = dict(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, attention_head_dim=[5, 10, 20, 20],
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, use_linear_projection=True)


def unclip(size: str, device: str):
    """The unCLIP UNet: SD 2.1's at 96 x 96 latents (released) or the tiny one; tiny VAE and text encoder (their
    cost is small beside the UNet's)."""
    from anygpt.training.unclip import UnCLIPTrainer

    released = size == "released"
    dim = 1024 if released else 32
    module = UnCLIPTrainer(source="tiny", embedding_dim=dim, unet=SD21_UNET if released else None,
                           val_images=0)
    side = 192 if released else 32  # the tiny VAE halves each side: 96 x 96 latents, as SD 2.1's at 768 px
    batch_size = 8 if released else 4
    generator = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(batch_size, 3, side, side, generator=generator).to(device),
             "items": [{"embedding": torch.randn(dim, generator=generator).tolist()} for _ in range(batch_size)]}
    return module, batch, "images", 1.0


def vae(size: str, device: str):
    from anygpt.training.unclip_vae import VAETrainer

    config = (dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
                   down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
              if size == "released" else dict(block_out_channels=[32, 64], latent_channels=4, layers_per_block=1,
                                                down_block_types=["DownEncoderBlock2D"] * 2,
                                                up_block_types=["UpDecoderBlock2D"] * 2))
    module = VAETrainer(vae=config)
    side, batch_size = (256, 8) if size == "released" else (32, 4)
    batch = {"image": torch.rand(batch_size, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device),
             "items": [{}] * batch_size}
    return module, batch, "images", 1.0


def speechtokenizer(size: str, device: str):
    from anygpt.training.speech_codec import SpeechTokenizerTrainer

    config = {} if size == "released" else {"n_filters": 16, "dimension": 128, "semantic_dimension": 64}
    module = SpeechTokenizerTrainer(codec={"config": config, "checkpoint": None, "decoder": None})
    return module, audio_batch(16 if size == "released" else 8, 3.0, 16000, device), "audio_s", 3.0


def seed(size: str, device: str):
    """SEED-2's stage 2 against a teacher embedding in the records (the frozen ViT-g and Q-Former run forward)."""
    from anygpt.training.image_codec import SeedTrainer

    config = None if size == "released" else {"image_size": 56, "vit_width": 64, "vit_depth": 2, "vit_heads": 4,
                                                "qformer_hidden": 96, "qformer_layers": 2, "qformer_heads": 4,
                                                "qformer_intermediate": 128, "codebook_dim": 8, "decode_depth": 2,
                                                "image_features_dim": 32}
    module = SeedTrainer(codec={"quantizer": None, "visual": None, "config": config})
    side, dim, batch_size = (224, 1024, 32) if size == "released" else (56, 32, 8)
    generator = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(batch_size, 3, side, side, generator=generator).to(device),
             "items": [{"embedding": torch.randn(dim, generator=generator).tolist()} for _ in range(batch_size)]}
    return module, batch, "images", 1.0


TRAINERS = {"encodec": encodec, "soundstorm": soundstorm, "speechtokenizer": speechtokenizer, "seed": seed,
            "unclip": unclip, "unclip_vae": vae}


def run(name: str, size: str, args) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    module, batch, unit, seconds = TRAINERS[name](size, args.device)
    module = module.to(args.device).train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda")

    def step():
        with autocast:
            loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    elapsed, _, peak = median_time(step, args.device, repeats=args.steps, warmup=args.warmup)
    items = len(batch.get("audio", batch.get("image")))
    rate = items * (seconds if unit == "audio_s" else 1) / elapsed
    return {"trainer": name, "size": size, "params": sum(p.numel() for p in params), "batch": items,
            "unit": unit, "per_s": rate, "step_s": elapsed, "flops_per_step": flops,
            "mfu": flops / elapsed / PEAK_FLOPS[args.device],
            "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="+", choices=sorted(TRAINERS), default=sorted(TRAINERS))
    parser.add_argument("--sizes", nargs="+", choices=["small", "released"], default=["small", "released"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 steps (CPU smoke run)")
    parser.add_argument("--out", default="benchmarks/results/codec_train_speed.json")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.steps, args.warmup = ["small"], 2, 1
    warnings.filterwarnings("ignore")  # self.log outside a Trainer warns at every step
    rows = []
    for name in args.only:
        for size in args.sizes:
            try:
                rows.append(run(name, size, args))
            except Exception as err:  # one trainer failing is a result, not a crash
                rows.append({"trainer": name, "size": size, "status": f"failed: {type(err).__name__}: "
                                                                      f"{str(err).splitlines()[0][:160]}"})
            gc.collect()
            if args.device == "cuda":
                torch.cuda.empty_cache()
            write_json(args.out, {"benchmark": "codec_train_speed", "device": device_name(args.device),
                                  "quick": args.quick, "rows": rows})
    print(f"{'trainer':<12} {'size':<9} {'params':>8} {'batch':>6} {'per second':>16} {'step s':>8} {'MFU':>7} {'peak GiB':>9}")
    for r in rows:
        if "per_s" not in r:
            print(f"{r['trainer']:<12} {r['size']:<9} {r['status']}")
            continue
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] else "-"
        print(f"{r['trainer']:<12} {r['size']:<9} {r['params'] / 1e6:>7.1f}M {r['batch']:>6} "
              f"{r['per_s']:>10.1f} {r['unit']:<5} {r['step_s']:>8.3f} {100 * r['mfu']:>6.2f}% {peak:>9}")


if __name__ == "__main__":
    main()
