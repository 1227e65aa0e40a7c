"""LoRA SFT throughput and memory of ``anygpt fit`` at the LLaMA-2-7B shape on one GPU: does it fit 24 GB?

The backbone is a fresh LLaMA-2-7B (random weights drawn on the device, stored in bf16) with AnyGPT's vocabulary of
49420 ids, of which the last 17420 (from the LLaMA-2 text vocabulary's 32000 on: role tokens, image / speech /
music codes, added tokens) get trained rows in the embedding and the output layer, as ``configs/fit/sft_lora.yaml``
trains them; rank-16 adapters sit on every projection. Training is ``UnifiedLM`` under Lightning with gradient
checkpointing, ``attn_implementation: packed`` on packed blocks of synthetic speech pairs (``PretrainDataModule``;
the compute of SFT rows of the same length), batch 1, blocks of 2048 and 4096 tokens. ``bf16-mixed`` (the config's
choice) keeps the adapters, rows and AdamW state in float32 with bf16 products; ``bf16-true`` keeps them in bf16.

On CUDA PyTorch's allocator may reserve at most ``--limit-gib`` (24) less 1 GiB (the CUDA context, a desktop
card's display) of the GPU (``torch.cuda.set_per_process_memory_fraction``), so a row that would not fit a 24 GB
card fails with an out-of-memory error (``fits: false``) instead of borrowing a larger GPU's memory; the allocator
uses expandable segments (``PYTORCH_CUDA_ALLOC_CONF``, unless set), as a 24 GB card should. Steps after
``--warmup`` are timed with CUDA synchronisation.

    python benchmarks/lora_speed.py --device cuda                  # 7B, 2048 / 4096 tokens, bf16-mixed / bf16-true
    python benchmarks/lora_speed.py --device cuda --precisions bf16-mixed --blocks 4096
    python benchmarks/lora_speed.py --device cpu --quick                     # tiny shape: a smoke run
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import tempfile
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # less fragmentation near the cap
import torch  # noqa: E402
from timing import device_name, write_json
from train_speed import SHAPES, VOCAB, StepTimer, synthetic_pairs

TEXT_ROWS = 32000  # LLaMA-2's text pieces: rows below stay frozen, the 17420 above train
SPEECH = {"class_path": "anygpt.tokenizers.speech.SpeechTokenizerCodec",
          "init_args": {"config": {"n_filters": 4, "dimension": 32, "semantic_dimension": 16},
                        "checkpoint": None, "decoder": None}}


def build(args, device: str):
    """The UnifiedLM of the run, its weights drawn on ``device`` in bf16, then the vocabulary and the adapters."""
    from anygpt.lm.lora import LoraSpec, add_lora
    from anygpt.lm.unified import UnifiedLM

    optimizer = functools.partial(torch.optim.AdamW, lr=2e-4, weight_decay=0.0, fused=device == "cuda")
    with torch.device(device):
        model = UnifiedLM(backbone=SHAPES[args.shape], tokenizer="tiny", codecs={"speech": SPEECH}, dtype="bfloat16",
                          attn_implementation="packed", gradient_checkpointing=True, compile=args.compile,
                          optimizer=optimizer)
        model.backbone.resize_token_embeddings(VOCAB, mean_resizing=False)  # AnyGPT's vocabulary: the real head
        model.lora = LoraSpec(r=args.rank, alpha=2 * args.rank)
        model.backbone = add_lora(model.backbone, model.lora, start=TEXT_ROWS)
    return model


def run(args, block: int, precision: str, folder: Path) -> dict:
    from lightning.pytorch import Trainer

    from anygpt.data.pretrain import PretrainDataModule
    from anygpt.lm.lora import TokenRows

    model = build(args, args.device)
    trainable = {"adapters": 0, "token_rows": 0}
    for module_name, module in model.backbone.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                trainable["token_rows" if isinstance(module, TokenRows) else "adapters"] += param.numel()
    data = PretrainDataModule(datasets=[{"files": [str(folder / "pairs.jsonl")]}], block_size=block,
                              batch_size=args.batch, examples_per_epoch=2000)
    timer = StepTimer(args.warmup)
    trainer = Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, precision=precision,
                      max_steps=args.warmup + args.steps, limit_val_batches=0, logger=False, callbacks=[timer],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(model, datamodule=data)
    row = {"block": block, "batch": args.batch, "precision": precision, "compile": args.compile, "rank": args.rank,
           "params": sum(p.numel() for p in model.backbone.parameters()), "trainable": sum(trainable.values()),
           **{f"trainable_{k}": v for k, v in trainable.items()}, "steps_timed": len(timer.times),
           "tokens_per_s": sum(timer.tokens) / sum(timer.times), "peak_gib": None, "reserved_gib": None, "fits": None}
    if args.device == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        row["fits"] = True  # under the cap: it ran
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=["1b", "7b"], default="7b")
    parser.add_argument("--blocks", type=int, nargs="+", default=[2048, 4096], help="tokens per packed block")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--precisions", nargs="+", default=["bf16-mixed", "bf16-true"],
                        choices=["bf16-mixed", "bf16-true"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="model.compile: true (decoder layers and loss)")
    parser.add_argument("--limit-gib", type=float, default=24.0, help="GPU memory the process may use (CUDA)")
    parser.add_argument("--quick", action="store_true", help="tiny shape, short blocks (CPU smoke run)")
    parser.add_argument("--out", default="benchmarks/results/lora_speed.json")
    args = parser.parse_args()
    if args.quick:
        args.shape, args.blocks, args.steps, args.warmup, args.rank = "tiny", [256], 2, 1, 4
        args.precisions = args.precisions[:1]
    if args.device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, (args.limit_gib - 1) * 2**30 / total))
    rows, failed_fits = [], None if args.device != "cuda" else False
    meta = {"benchmark": "lora_speed", "device": device_name(args.device), "shape": args.shape, "vocab": VOCAB,
            "text_rows": TEXT_ROWS, "limit_gib": args.limit_gib, "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        synthetic_pairs(folder / "pairs.jsonl", 400 if not args.quick else 40)
        for precision in args.precisions:
            for block in args.blocks:
                try:
                    rows.append(run(args, block, precision, folder))
                except Exception as err:  # one row failing (out of memory) is a result, not a crash
                    rows.append({"block": block, "precision": precision, "fits": failed_fits,
                                 "status": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}"})
                gc.collect()
                if args.device == "cuda":
                    torch.cuda.empty_cache()
                write_json(args.out, {**meta, "rows": rows})
    print(f"{'block':>6} {'precision':<19} {'trainable':>10} {'adapters':>9} {'rows':>9} {'tokens/s':>9} "
          f"{'peak GiB':>9} {'reserved':>9} {'fits 24GB':>9}")
    for r in rows:
        if "tokens_per_s" not in r:
            print(f"{r['block']:>6} {r['precision']:<19} {r['status']}")
            continue
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        reserved = f"{r['reserved_gib']:.1f}" if r["reserved_gib"] is not None else "-"
        fits = "-" if r["fits"] is None else "yes" if r["fits"] else "no"
        mode = r["precision"] + ("+compile" if r.get("compile") else "")
        print(f"{r['block']:>6} {mode:<19} {r['trainable'] / 1e6:>9.1f}M {r['trainable_adapters'] / 1e6:>8.1f}M "
              f"{r['trainable_token_rows'] / 1e6:>8.1f}M {r['tokens_per_s']:>9.0f} {peak:>9} {reserved:>9} {fits:>9}")


if __name__ == "__main__":
    main()
