"""SoundStorm generate() speed at full size (random weights): float32 / bfloat16, eager / CUDA graphs / compile.

Rows: 500 and 1500 target frames (10 s and 30 s of 50 Hz RVQ-1 ids), without and with a 150-frame (3 s) voice
prompt, steps=3 as AnyGPT runs it (10 network passes), batch 1. float32 runs with TF32 off, as the original was
measured (0.27 s for 500 frames on an H100, eager). "cuda graphs" is the decoder's default on CUDA (each pass
replayed from a graph captured per length); ``first_call_s`` is its latency for a length not seen before (capture
included). With ``--compile`` a variant compiles the network pass (``torch.compile(mode=--compile-mode)``); where
compiling fails the row says ``failed: <reason>``. Median of ``--repeats`` timed runs after warm-up;
``ids_equal_fp32`` is the share of output ids equal to the float32 eager run (random weights have many near-ties,
so it is only a rough guide for bfloat16; graphs must give 1.0).

    python benchmarks/soundstorm_speed.py --device cuda          # prints a table, writes JSON
    python benchmarks/soundstorm_speed.py --device cpu --quick   # tiny model and lengths: a smoke run
"""

from __future__ import annotations

import argparse
import copy

import torch
from timing import device_name, median_time, write_json

from anygpt.decoders.soundstorm import SoundStormDecoder


def compile_network(model: SoundStormDecoder, mode: str) -> None:
    """Replace the network pass by a compiled one (the module tree and its weights stay as they are).

    With a mode that uses CUDA graphs itself (``reduce-overhead``) the decoder's own graphs are turned off.
    """
    compiled = torch.compile(model.net.forward, mode=mode, dynamic=False)
    cudagraphs = mode == "reduce-overhead"
    model.cuda_graphs = model.cuda_graphs and not cudagraphs

    def forward(*args, **kwargs):
        if cudagraphs:  # each pass is a new step; its output buffer is reused by the next replay, hence the clone
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(*args, **kwargs).clone()
        return compiled(*args, **kwargs)

    model.net.forward = forward


def measure(model, semantic, prompt, steps, device, repeats, warmup):
    def run():
        generator = torch.Generator(device=device).manual_seed(0)
        return model.generate(semantic, prompt_tokens=prompt, steps=steps, generator=generator)

    return median_time(run, device, repeats, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 5; --quick: 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 2; --quick: 1)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode of the compile variant (e.g. max-autotune-no-cudagraphs)")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile variant (slow to compile)")
    parser.add_argument("--quick", action="store_true", help="tiny model and lengths (a smoke run, CPU-fast)")
    parser.add_argument("--out", default="benchmarks/results/soundstorm_speed.json")
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)

    torch.backends.cuda.matmul.allow_tf32 = False  # float32 as the original measured it
    torch.backends.cudnn.allow_tf32 = False
    device = args.device
    torch.manual_seed(0)
    with torch.device(device):
        base = SoundStormDecoder.tiny(seed=0).to(device) if args.quick else SoundStormDecoder()
    base.eval()
    frames_list, prompt_list = ([25], [10]) if args.quick else ([500, 1500], [0, 150])
    variants = [("float32", "eager"), ("float32", "cuda graphs"), ("float32", "cuda graphs, TF32"),
                ("bfloat16", "eager"), ("bfloat16", "cuda graphs")]
    if args.compile:
        variants.append(("bfloat16", f"cuda graphs, compile ({args.compile_mode})"))
    models, setup_errors = {}, {}
    for dtype, variant in variants:
        model = copy.deepcopy(base).to(getattr(torch, dtype))
        model.cuda_graphs = "cuda graphs" in variant
        if "compile" in variant:
            try:
                compile_network(model, args.compile_mode)
            except Exception as err:  # reported in each row of this variant
                setup_errors[dtype, variant] = err
        models[dtype, variant] = model
    del base

    rows = []
    gen = torch.Generator().manual_seed(1)
    for frames in frames_list:
        for prompt_frames in prompt_list:
            semantic = torch.randint(0, 1024, (1, frames), generator=gen).to(device)
            prompt = torch.randint(0, 1024, (1, prompt_frames, 8), generator=gen).to(device) if prompt_frames else None
            reference = None
            for (dtype, variant), model in models.items():
                row = {"frames": frames, "prompt_frames": prompt_frames, "dtype": dtype, "variant": variant,
                       "steps": args.steps, "passes": args.steps + 1 + model.num_quantizers - 1}
                try:
                    if (dtype, variant) in setup_errors:
                        raise setup_errors[dtype, variant]
                    torch.backends.cuda.matmul.allow_tf32 = "TF32" in variant
                    first = None
                    if model.cuda_graphs and device.startswith("cuda"):
                        model._graphs.clear()
                        first, _, _ = measure(model, semantic, prompt, args.steps, device, 1, 0)
                    seconds, out, peak = measure(model, semantic, prompt, args.steps, device, args.repeats,
                                                 args.warmup)
                    row["first_call_s"] = first
                    row.update(median_s=seconds, ms_per_pass=1000 * seconds / row["passes"], peak_mem_gib=peak,
                               status="ok")
                    if reference is None:
                        reference = out
                    row["ids_equal_fp32"] = (out == reference).float().mean().item()
                except Exception as err:  # a compile failure is a result, not a crash
                    reason = (str(err).strip().splitlines() or [""])[0][:160]
                    row.update(median_s=None, status=f"failed: {type(err).__name__}: {reason}")
                rows.append(row)
                print(f"  {frames} frames, prompt {prompt_frames}, {dtype} {variant}: {row['status']}", flush=True)

    header = (f"{'frames':>6} {'prompt':>6} {'dtype':<9} {'variant':<32} {'median s':>9} {'first s':>8} "
              f"{'passes':>6} {'ids=fp32':>8}")
    print(header)
    for r in rows:
        median = f"{r['median_s']:.4f}" if r["median_s"] is not None else r["status"]
        same = f"{r['ids_equal_fp32']:.3f}" if "ids_equal_fp32" in r else "-"
        first = f"{r['first_call_s']:.4f}" if r.get("first_call_s") else "-"
        print(f"{r['frames']:>6} {r['prompt_frames']:>6} {r['dtype']:<9} {r['variant']:<32} {median:>9} "
              f"{first:>8} {r['passes']:>6} {same:>8}")
    result = {"benchmark": "soundstorm_speed", "device": device_name(device), "torch": torch.__version__,
              "model": "tiny (random)" if args.quick else "full size, 351.38 M parameters (random)",
              "quick": args.quick, "repeats": args.repeats, "warmup": args.warmup, "batch": 1,
              "float32_tf32": False, "rows": rows}
    write_json(args.out, result)


if __name__ == "__main__":
    main()
