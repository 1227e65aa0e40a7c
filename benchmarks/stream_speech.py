"""Streamed speech against the whole-span decode, on the demo world's weights (``configs/demo.yaml``'s codec and
SoundStorm): the RVQ-1 codes of held-out clips are decoded whole and chunk by chunk (``ChunkedDecoder``), as a
spoken chat reply is while it is generated.

Reports, per chunking: the mel distance between the joined chunks and the whole decode (mean |log mel| difference,
80 bands), the seam ratio (the largest sample jump at a chunk join over the median sample jump of the whole decode;
the goal is <= 3) beside the same ratio of the whole decode's own jumps at those sample positions (speech jumps
there too: a seam ratio near this baseline is no seam), and the time to the first chunk (decoding the first window)
against the whole decode's time. A splice of 1 lets each join move within the first code of the lookahead to the
smallest sample step; the row with splice 0 keeps every join on a code boundary, as before it.

    python benchmarks/stream_speech.py                  # CPU, 8 held-out clips
    python benchmarks/stream_speech.py --device cuda
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from timing import device_name, sync, write_json

# (chunk, context, lookahead, splice) in codes; splice 0: every join on a code boundary
CHUNKINGS = [(25, 50, 4, 1), (25, 50, 4, 0), (25, 50, 0, 0), (25, 0, 4, 1), (10, 50, 4, 1)]


def seam_ratio(chunks: list[torch.Tensor], whole: torch.Tensor, near: int = 160) -> tuple[float, ...]:
    """Over the whole decode's median sample jump: the largest sample jump at a chunk join; as its baseline, the
    whole decode's own largest jump at the same sample positions (what speech itself jumps there, with no join);
    and the largest jump of the joined chunks and of the whole decode within ``near`` samples (10 ms) of a join
    (a join that avoids the step itself but clicks beside it shows here)."""
    joined = torch.cat(chunks, dim=-1)[0]
    joins = np.cumsum([c.shape[-1] for c in chunks])[:-1]
    step, whole_step = joined.diff().abs(), whole[0].diff().abs()
    jumps = [float(step[j - 1]) for j in joins]
    natural = [float(whole_step[j - 1]) for j in joins if j < whole.shape[-1]]
    around = [float(step[max(0, j - near):j + near].max()) for j in joins]
    whole_around = [float(whole_step[max(0, j - near):j + near].max()) for j in joins if j < whole.shape[-1]]
    median = max(float(whole_step.median()), 1e-8)
    return tuple(max(v, default=0.0) / median for v in (jumps, natural, around, whole_around))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="SoundStorm steps (configs/demo.yaml's)")
    parser.add_argument("--out", default="benchmarks/results/stream_speech.json")
    args = parser.parse_args()

    import torchaudio

    from anygpt.demo.heldout import read, speak
    from anygpt.demo.session import DemoSession
    from anygpt.tokenizers.streaming import ChunkedDecoder

    codec = DemoSession().model.codecs["speech"].to(args.device)  # configs/demo.yaml's codec and SoundStorm
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=1024, hop_length=256, n_mels=80)
    codes = [codec.encode([(torch.from_numpy(speak(line)[0])[None], 16000)])[0] for line in
             read(modality="speech")[:args.clips]]
    options = {"seeds": [0], "steps": args.steps}
    rows = []
    for chunk, context, lookahead, splice in CHUNKINGS:
        distances, seams, natural, around, whole_around, first, whole_s = [], [], [], [], [], [], []
        for ids in codes:
            sync(args.device)
            start = time.perf_counter()
            whole = codec.decode([ids], **options)[0]
            sync(args.device)
            whole_s.append(time.perf_counter() - start)
            decoder = ChunkedDecoder(codec, options, chunk, context, lookahead, splice)
            chunks, start = [], time.perf_counter()
            for code in ids.tolist():
                for wav in decoder.push(code):
                    if not chunks:
                        sync(args.device)
                        first.append(time.perf_counter() - start)
                    chunks.append(wav)
            rest = decoder.finish()
            chunks += [] if rest is None else [rest]
            joined = torch.cat(chunks, dim=-1)
            distances.append(float((mel(joined[0]).clamp_min(1e-5).log() - mel(whole[0]).clamp_min(1e-5).log())
                                   .abs().mean()))
            for values, value in zip((seams, natural, around, whole_around), seam_ratio(chunks, whole)):
                values.append(value)
        rows.append({"chunk": chunk, "context": context, "lookahead": lookahead, "splice": splice,
                     "mel_distance": float(np.mean(distances)), "seam_ratio_max": float(np.max(seams)),
                     "seam_ratio_median": float(np.median(seams)),
                     "whole_at_joins_max": float(np.max(natural)), "whole_at_joins_median": float(np.median(natural)),
                     "near_joins_max": float(np.max(around)), "whole_near_joins_max": float(np.max(whole_around)),
                     "first_chunk_s": float(np.median(first)) if first else None,
                     "whole_decode_s": float(np.median(whole_s))})
    print(f"{'chunk/ctx/ahead/splice':<23} {'mel dist':>8} {'seam max':>8} {'med':>6} {'whole@joins':>11} {'med':>6} "
          f"{'10ms max':>8} {'whole':>6} {'first s':>7} {'whole s':>7}")
    for r in rows:
        first = f"{r['first_chunk_s']:.3f}" if r["first_chunk_s"] is not None else "-"
        name = f"{r['chunk']}/{r['context']}/{r['lookahead']}/{r['splice']}"
        print(f"{name:<23} {r['mel_distance']:>8.3f} {r['seam_ratio_max']:>8.2f} {r['seam_ratio_median']:>6.2f} "
              f"{r['whole_at_joins_max']:>11.2f} {r['whole_at_joins_median']:>6.2f} {r['near_joins_max']:>8.2f} "
              f"{r['whole_near_joins_max']:>6.2f} {first:>7} {r['whole_decode_s']:>7.3f}")
    write_json(args.out, {"benchmark": "stream_speech", "device": device_name(args.device), "clips": len(codes),
                          "steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
