"""Streamed speech against the whole-span decode, on the demo world's weights (``configs/demo.yaml``'s codec and
SoundStorm): the RVQ-1 codes of held-out clips are decoded whole and chunk by chunk (``ChunkedDecoder``), as a
spoken chat reply is while it is generated.

Reports, per chunking: the mel distance between the joined chunks and the whole decode (mean |log mel| difference,
80 bands), the seam ratio (the largest sample jump at a chunk join over the median sample jump of the whole decode;
the goal is <= 3) beside the same ratio of the whole decode's own jumps at those sample positions (speech jumps
there too: a seam ratio near this baseline is no seam), and the time to the first chunk (decoding the first window)
against the whole decode's time.

    python benchmarks/stream_speech.py                  # CPU, 8 held-out clips
    python benchmarks/stream_speech.py --device cuda
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from timing import device_name, sync, write_json

CHUNKINGS = [(25, 50, 4), (25, 50, 0), (25, 0, 4), (10, 50, 4)]  # (chunk, context, lookahead) in codes


def seam_ratio(chunks: list[torch.Tensor], whole: torch.Tensor) -> tuple[float, float]:
    """The largest sample jump at a chunk join over the whole decode's median sample jump; and, as its baseline,
    the whole decode's own largest jump at the same sample positions over the same median (what speech itself
    jumps there, with no join)."""
    joined = torch.cat(chunks, dim=-1)[0]
    joins = np.cumsum([c.shape[-1] for c in chunks])[:-1]
    jumps = [abs(float(joined[j] - joined[j - 1])) for j in joins]
    natural = [abs(float(whole[0, j] - whole[0, j - 1])) for j in joins if j < whole.shape[-1]]
    median = max(float((whole[0, 1:] - whole[0, :-1]).abs().median()), 1e-8)
    return max(jumps, default=0.0) / median, max(natural, default=0.0) / median


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
    for chunk, context, lookahead in CHUNKINGS:
        distances, seams, natural, first, whole_s = [], [], [], [], []
        for ids in codes:
            sync(args.device)
            start = time.perf_counter()
            whole = codec.decode([ids], **options)[0]
            sync(args.device)
            whole_s.append(time.perf_counter() - start)
            decoder = ChunkedDecoder(codec, options, chunk, context, lookahead)
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
            seam, baseline = seam_ratio(chunks, whole)
            seams.append(seam)
            natural.append(baseline)
        rows.append({"chunk": chunk, "context": context, "lookahead": lookahead,
                     "mel_distance": float(np.mean(distances)), "seam_ratio_max": float(np.max(seams)),
                     "seam_ratio_median": float(np.median(seams)),
                     "whole_at_joins_max": float(np.max(natural)), "whole_at_joins_median": float(np.median(natural)),
                     "first_chunk_s": float(np.median(first)) if first else None,
                     "whole_decode_s": float(np.median(whole_s))})
    print(f"{'chunk/context/lookahead':<24} {'mel dist':>9} {'seam max':>9} {'seam med':>9} {'whole@joins max':>16} "
          f"{'med':>6} {'first s':>8} {'whole s':>8}")
    for r in rows:
        first = f"{r['first_chunk_s']:.3f}" if r["first_chunk_s"] is not None else "-"
        print(f"{r['chunk']}/{r['context']}/{r['lookahead']:<18} {r['mel_distance']:>9.3f} {r['seam_ratio_max']:>9.2f} "
              f"{r['seam_ratio_median']:>9.2f} {r['whole_at_joins_max']:>16.2f} {r['whole_at_joins_median']:>6.2f} "
              f"{first:>8} {r['whole_decode_s']:>8.3f}")
    write_json(args.out, {"benchmark": "stream_speech", "device": device_name(args.device), "clips": len(codes),
                          "steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
