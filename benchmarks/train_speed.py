"""Training throughput of ``anygpt fit`` itself: tokens/s and MFU on packed 4096-token blocks, bf16-mixed.

The model is a fresh LLaMA of the ~1.3 B anchor shape (hidden 2048, 16 layers, 16 heads, MLP 8192; ``--shape 7b``:
LLaMA-2-7B) with AnyGPT's vocabulary size of 49420 (embeddings resized); the data are synthetic AnyGPT-format speech
pairs of 300-1500 codes, packed into blocks by ``PretrainDataModule``, so the measured path is the one users run
(per-document positions, no cross-document attention). Variants: ``plain`` is the anchor, a plain HF loop on the
same shape (full 4096-token causal rows, ``model(labels=...)``, bf16 autocast, SDPA, fused AdamW), measured in the
same run for the ratio; the others are ``anygpt fit`` with an ``attn_implementation`` (``packed``: FlashAttention
varlen; ``flex_attention``; ``sdpa``: a dense block mask) and ``+compile`` for ``model.compile: true``.

MFU counts 6 x parameters + 12 x layers x hidden x block FLOPs per token, as the anchor did (41.7k tok/s, 39 % of
989 TFLOP/s); that formula credits full-block attention, which packed documents of 300-1500 tokens do not need, so
``mfu_6n`` (6 x parameters alone, a lower bound for every row) is reported too. Steps after ``--warmup`` are
timed with CUDA synchronisation.

    python benchmarks/train_speed.py --device cuda                                  # anchor and fit variants
    python benchmarks/train_speed.py --device cuda --shape 7b --variants packed+compile \
        --gradient-checkpointing 1 --batch 1                                          # LLaMA-2-7B on one GPU
    python benchmarks/train_speed.py --device cpu --quick                            # tiny shape: a smoke run

Several GPUs: one process per run, rows per GPU (``tokens_per_s`` is rank 0's, MFU per GPU), and
``tokens_per_s_all_devices`` assumes balanced ranks. ``--strategy fsdp2`` is ``anygpt.lm.sharding.FSDP2Strategy``
(per-layer ``fully_shard``, bf16 gathers with float32 reductions, layers compiled inside their shard units);
``fsdp`` is Lightning's FSDP1 wrapper. Scaling efficiency = multi-GPU per-GPU tokens/s / best 1-GPU tokens/s:

    python benchmarks/train_speed.py --device cuda --variants packed+compile --strategy fsdp2 --devices 2 --out benchmarks/results/train_speed_2gpu.json
    python benchmarks/train_speed.py --device cuda --shape 7b --variants packed+compile --strategy fsdp2 --devices 2 --batch 2 --gradient-checkpointing 4 --out benchmarks/results/train_speed_7b_2gpu.json
    python -m pytest -m gpu tests/test_distributed_fit.py   # 2-GPU checkpoints resume on 2 GPUs and on 1
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback
from timing import device_name, sync, write_json

PEAK_FLOPS = {"cuda": 989e12, "cpu": 1e12}  # H100 and H200 SXM dense bf16; the CPU figure only keeps the smoke run defined
SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=16,
               num_key_value_heads=16, max_position_embeddings=4096),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, max_position_embeddings=4096),
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


def flops_per_token(params: int, shape: dict, block: int) -> tuple[float, float]:
    """FLOPs per trained token: the anchor's formula, and 6 x parameters alone."""
    return 6 * params + 12 * shape["num_hidden_layers"] * shape["hidden_size"] * block, 6 * params


def result(args, variant: str, shape: dict, params: int, tokens_per_s: float, steps: int) -> dict:
    full, bare = flops_per_token(params, shape, args.block)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
    return {"variant": variant, "shape": args.shape, "params": params, "vocab": VOCAB, "block": args.block,
            "batch": args.batch, "precision": args.precision, "strategy": args.strategy, "steps_timed": steps,
            "devices": args.devices, "tokens_per_s": tokens_per_s, "tokens_per_s_all_devices": tokens_per_s * args.devices,
            "mfu": tokens_per_s * full / PEAK_FLOPS[args.device],
            "mfu_6n": tokens_per_s * bare / PEAK_FLOPS[args.device], "peak_gib": peak,
            "gradient_checkpointing": args.gradient_checkpointing}


def run_plain(args, compile: bool) -> dict:
    """The anchor: a plain transformers training loop on full causal rows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = SHAPES[args.shape]
    with torch.device(args.device):  # random weights drawn on the device directly
        model = LlamaForCausalLM(LlamaConfig(**shape, vocab_size=VOCAB, attn_implementation="sdpa"))
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.precision == "bf16-true":
        model.to(torch.bfloat16)
    if compile:
        model.compile()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.0, fused=args.device == "cuda")
    ids = torch.randint(0, VOCAB, (args.batch, args.block), device=args.device)
    times = []
    for step in range(args.warmup + args.steps):
        sync(args.device)
        start = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(args.device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters())
    return result(args, "plain+compile" if compile else "plain", shape, params,
                  args.batch * args.block * len(times) / sum(times), len(times))


def run(args, variant: str, folder: Path) -> dict:
    from anygpt.cli import _cli_class

    attn, _, option = variant.partition("+")
    if attn == "plain":
        return run_plain(args, compile=option == "compile")
    shape = SHAPES[args.shape]
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
    strategy = "auto"
    recompute = args.gradient_checkpointing
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "gpu" if args.device == "cuda" else "cpu", "devices": args.devices, "logger": False,
                    "precision": args.precision, "strategy": strategy, "max_steps": args.warmup + args.steps, "limit_val_batches": 0,
                    "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False},
        "model": {"backbone": shape, "tokenizer": "tiny", "codecs": tiny_codecs, "attn_implementation": attn,
                  "gradient_checkpointing": recompute, "compile": option == "compile",
                  "optimizer": {"class_path": "torch.optim.AdamW",
                                "init_args": {"lr": 3e-5, "weight_decay": 0.0, "fused": args.device == "cuda"}}},
        "data": {"class_path": "anygpt.data.pretrain.PretrainDataModule",
                 "init_args": {"datasets": [{"files": [str(folder / "pairs.jsonl")]}], "block_size": args.block,
                               "batch_size": args.batch, "examples_per_epoch": 2000}},
    }
    if args.strategy == "fsdp2":
        config["trainer"]["strategy"] = {"class_path": "anygpt.lm.sharding.FSDP2Strategy",
                                         "init_args": {"reshard_after_forward": not args.keep_gathered}}
    if args.strategy == "fsdp":
        config["trainer"]["strategy"] = {
            "class_path": "lightning.pytorch.strategies.FSDPStrategy",
            "init_args": {"auto_wrap_policy": ["transformers.models.llama.modeling_llama.LlamaDecoderLayer"],
                          "sharding_strategy": "FULL_SHARD"}}
    (folder / "config.json").write_text(json.dumps(config))
    timer = StepTimer(args.warmup)
    cli = _cli_class()(args=["--config", str(folder / "config.json")], trainer_defaults={"callbacks": [timer]},
                       run=False)
    model = cli.model.backbone
    model.resize_token_embeddings(VOCAB)  # AnyGPT's vocabulary size: the LM head's real cost
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    params = sum(p.numel() for p in cli.model.backbone.parameters())
    if args.strategy != "auto":  # sharded parameters: count the shape's own
        params = sum(p.numel() for p in _fresh_shape_params(shape))
    return result(args, variant, shape, params, sum(timer.tokens) / sum(timer.times), len(timer.times))


def _fresh_shape_params(shape: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        return list(LlamaForCausalLM(LlamaConfig(**shape, vocab_size=VOCAB)).parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="+", default=["plain", "flex_attention", "packed", "packed+compile"],
                        help="plain[+compile] (the anchor loop) or an attn_implementation[+compile] of anygpt fit")
    parser.add_argument("--shape", choices=["1b", "7b"], default="1b")
    parser.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "bf16-true"])
    parser.add_argument("--strategy", default="auto", choices=["auto", "fsdp", "fsdp2"])
    parser.add_argument("--keep-gathered", action="store_true",
                        help="fsdp2: keep each layer's gathered weights from forward to backward (no re-gather)")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--block", type=int, default=4096)
    parser.add_argument("--devices", type=int, default=1,
                        help="GPUs of one fit (one fit variant per process; rows are per GPU, rank 0 writes)")
    parser.add_argument("--gradient-checkpointing", type=int, default=0, nargs="?", const=1,
                        help="recompute every k-th decoder layer (no value: every layer; 0: none)")
    parser.add_argument("--quick", action="store_true", help="tiny shape, short blocks (CPU smoke run)")
    parser.add_argument("--out", default="benchmarks/results/train_speed.json")
    args = parser.parse_args()
    if args.quick:
        args.block, args.batch, args.steps, args.warmup, args.shape = 512, 2, 3, 1, "tiny"
        args.variants = [v for v in args.variants if "compile" not in v]
    if args.devices > 1 and (len(args.variants) != 1 or args.variants[0].startswith("plain")):
        parser.error("--devices > 1 runs one anygpt fit variant per process (e.g. --variants packed)")
    rank0 = int(os.environ.get("LOCAL_RANK", "0")) == 0  # Lightning starts ranks 1.. as copies of this command
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        synthetic_pairs(folder / "pairs.jsonl", 400 if not args.quick else 40)
        for variant in args.variants:
            try:
                rows.append(run(args, variant, folder))
            except Exception as err:  # one variant failing is a result, not a crash
                rows.append({"variant": variant, "status": f"failed: {type(err).__name__}: "
                                                           f"{str(err).splitlines()[0][:160]}"})
            gc.collect()
            if args.device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            if rank0:
                write_json(args.out, {"benchmark": "train_speed", "device": device_name(args.device),
                                      "quick": args.quick, "rows": rows,
                                      "anchor_given": {"tokens_per_s": 41.7e3, "mfu": 0.39, "what": "plain HF loop"}})
    if not rank0:
        return
    plain = next((r["tokens_per_s"] for r in rows if r["variant"] == "plain" and "tokens_per_s" in r), None)
    print(f"{'variant':<22} {'params':>8} {'tokens/s':>10} {'MFU':>7} {'MFU 6N':>7} {'vs plain':>9} {'peak GiB':>9}")
    for r in rows:
        if "tokens_per_s" not in r:
            print(f"{r['variant']:<22} {r['status']}")
            continue
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] else "-"
        ratio = f"{r['tokens_per_s'] / plain:.2f}x" if plain else "-"
        print(f"{r['variant']:<22} {r['params'] / 1e9:>7.2f}B {r['tokens_per_s']:>10.0f} {100 * r['mfu']:>6.1f}% "
              f"{100 * r['mfu_6n']:>6.1f}% {ratio:>9} {peak:>9}")


if __name__ == "__main__":
    main()
