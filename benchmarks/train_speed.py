"""Training throughput of ``anygpt fit`` itself: tokens/s and MFU on packed 4096-token blocks, bf16-mixed.

The model is a fresh LLaMA of the ~1.3 B anchor shape (hidden 2048, 16 layers, 16 heads, MLP 8192) with AnyGPT's
vocabulary size of 49420 (tiny text pieces + the image, speech and music blocks, embeddings resized to 49420); the data are
synthetic AnyGPT-format speech pairs of 300-1500 codes, packed into blocks by ``PretrainDataModule``, so the
measured path is the one users run (per-document positions, no cross-document attention). MFU counts
6 x parameters + 12 x layers x hidden x block FLOPs per token (as the anchor: a plain HF loop on the same shape did
41.7k tok/s, 39 % of 989 TFLOP/s). Steps after ``--warmup`` are timed with CUDA synchronisation.

    python benchmarks/train_speed.py --device cuda                        # sdpa and flex_attention rows
    python benchmarks/train_speed.py --device cpu --quick                 # tiny shape: a smoke run
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback
from timing import device_name, sync, write_json

PEAK_FLOPS = {"cuda": 989e12, "cpu": 1e12}  # H100 SXM dense bf16; the CPU figure only keeps the smoke run defined
SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=16,
               num_key_value_heads=16, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=4096),
}
VOCAB = 49420


class StepTimer(Callback):
    """Wall time and real (non-padding) tokens of the training steps after ``warmup``."""

    def __init__(self, warmup: int):
        self.warmup, self.times, self.tokens, self.start = warmup, [], [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        sync(pl_module.device.type)
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(pl_module.device.type)
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self.start)
            self.tokens.append(int((batch["labels"] != -100).sum()) + len(batch["input_ids"]))


def synthetic_pairs(path: Path, count: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(count):
            codes = "".join(f"<🗣️{rng.randrange(1024)}>" for _ in range(rng.randint(300, 1500)))
            handle.write(json.dumps({"text": "a synthetic caption of some words", "speech": f"<sosp>{codes}<eosp>"},
                                    ensure_ascii=False) + "\n")


def run(args, attn: str, folder: Path) -> dict:
    from anygpt.cli import _cli_class

    shape = SHAPES["tiny" if args.quick else "1b"]
    tiny_codecs = {
        "image": {"class_path": "anygpt.tokenizers.image.SeedImageCodec",
                  "init_args": {"quantizer": None, "visual": None, "decoder": None,
                                "config": {"image_size": 56, "vit_width": 64, "vit_depth": 1, "vit_heads": 4,
                                           "qformer_hidden": 96, "qformer_layers": 2, "qformer_heads": 4,
                                           "qformer_intermediate": 128, "codebook_dim": 8, "decode_depth": 1,
                                           "image_features_dim": 32}}},
        "speech": {"class_path": "anygpt.tokenizers.speech.SpeechTokenizerCodec",
                   "init_args": {"config": {"n_filters": 4, "dimension": 32, "semantic_dimension": 16},
                                 "checkpoint": None, "decoder": None}},
        "music": {"class_path": "anygpt.tokenizers.music.EncodecMusicCodec",
                  "init_args": {"source": None, "config": {"num_filters": 4, "hidden_size": 16, "codebook_dim": 16}}},
    }
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "gpu" if args.device == "cuda" else "cpu", "devices": 1, "logger": False,
                    "precision": "bf16-mixed", "max_steps": args.warmup + args.steps, "limit_val_batches": 0,
                    "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False},
        "model": {"backbone": shape, "tokenizer": "tiny", "codecs": tiny_codecs, "attn_implementation": attn,
                  "gradient_checkpointing": args.gradient_checkpointing,
                  "optimizer": {"class_path": "torch.optim.AdamW",
                                "init_args": {"lr": 3e-5, "weight_decay": 0.0, "fused": args.device == "cuda"}}},
        "data": {"class_path": "anygpt.data.pretrain.PretrainDataModule",
                 "init_args": {"datasets": [{"files": [str(folder / "pairs.jsonl")]}], "block_size": args.block,
                               "batch_size": args.batch, "examples_per_epoch": 2000}},
    }
    (folder / "config.json").write_text(json.dumps(config))
    timer = StepTimer(args.warmup)
    cli = _cli_class()(args=["--config", str(folder / "config.json")], trainer_defaults={"callbacks": [timer]},
                       run=False)
    model = cli.model.backbone
    model.resize_token_embeddings(VOCAB)  # AnyGPT's vocabulary size: the LM head's real cost
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    params = sum(p.numel() for p in model.parameters())
    tokens_per_s = sum(timer.tokens) / sum(timer.times)
    flops_per_token = 6 * params + 12 * shape["num_hidden_layers"] * shape["hidden_size"] * args.block
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
    return {"attn_implementation": attn, "params": params, "vocab": model.config.vocab_size, "block": args.block,
            "batch": args.batch, "steps_timed": len(timer.times), "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * flops_per_token / PEAK_FLOPS[args.device], "peak_gib": peak,
            "gradient_checkpointing": args.gradient_checkpointing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attn", nargs="+", default=["sdpa", "flex_attention"])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--block", type=int, default=4096)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny shape, short blocks (CPU smoke run)")
    parser.add_argument("--out", default="benchmarks/results/train_speed.json")
    args = parser.parse_args()
    if args.quick:
        args.block, args.batch, args.steps, args.warmup, args.attn = 512, 2, 3, 1, args.attn[:1]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        synthetic_pairs(folder / "pairs.jsonl", 400 if not args.quick else 40)
        for attn in args.attn:
            try:
                rows.append(run(args, attn, folder))
            except Exception as err:  # one kernel choice failing is a result, not a crash
                rows.append({"attn_implementation": attn, "status": f"failed: {type(err).__name__}: "
                                                                   f"{str(err).splitlines()[0][:160]}"})
            if args.device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
    print(f"{'attention':<16} {'params':>8} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9}")
    for r in rows:
        if "tokens_per_s" in r:
            peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] else "-"
            print(f"{r['attn_implementation']:<16} {r['params'] / 1e9:>7.2f}B {r['tokens_per_s']:>10.0f} "
                  f"{100 * r['mfu']:>6.1f}% {peak:>9}")
        else:
            print(f"{r['attn_implementation']:<16} {r['status']}")
    write_json(args.out, {"benchmark": "train_speed", "device": device_name(args.device), "quick": args.quick,
                          "anchor": {"tokens_per_s": 41.7e3, "mfu": 0.39, "what": "plain HF loop, eager"},
                          "rows": rows})


if __name__ == "__main__":
    main()
