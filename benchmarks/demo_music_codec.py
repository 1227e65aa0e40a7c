"""The demo's music codecs alone, on held-out melodies: what an LM reading their codes can find of a melody.

For each codec folder (``EncodecMusicCodec(source=...)``), judged by ``anygpt.demo.music_judge`` (no learned model):

- round trip: melody -> codes -> waveform; tempo within 10 % and key and mode right (the ceiling of text -> music);
- residuals random: the same codes with every codebook after the first drawn at random, as an LM that gets the
  residual codes wrong would: whether the notes (the key) live in the first code of each frame;
- first-code purity: over the voiced frames of the held-out melodies (the judge's pitch track, one per codec
  frame), the share whose semitone (and pitch class) is the most common one among the frames with the same first
  code: 100 % when the first code alone names the note;
- LM tokens per second (codebooks x frames per second) and per 0.5-s note.

    python benchmarks/demo_music_codec.py --codec anygpt/demo/weights/music_codec runs/demo/music_v2 --count 60
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from demo_media import share
from timing import write_json

from anygpt.demo.verdicts import melody_right


def purity(pairs: list[tuple[int, int]]) -> float | None:
    """Share of (code, label) pairs whose label is its code's most common one."""
    by_code: dict[int, Counter] = defaultdict(Counter)
    for code, label in pairs:
        by_code[code][label] += 1
    total = sum(sum(c.values()) for c in by_code.values())
    return sum(c.most_common(1)[0][1] for c in by_code.values()) / total if total else None


def frame_pitches(wave: np.ndarray, frames: int, hop: int) -> np.ndarray:
    """The judge's MIDI pitch track (10-ms frames) sampled at the middle of each codec frame (NaN: unvoiced)."""
    from anygpt.demo.music_judge import HOP_SECONDS, judge

    track = np.asarray(judge(wave, 16000)["pitches"], dtype=np.float64)
    middle = ((np.arange(frames) + 0.5) * hop / 16000 / HOP_SECONDS).astype(int)
    return np.where(middle < len(track), track[np.minimum(middle, len(track) - 1)], np.nan)


def measure(folder: str, lines: list[dict], seed: int) -> dict:
    from anygpt.demo.heldout import play
    from anygpt.tokenizers.music import EncodecMusicCodec, flatten_codes, unflatten_codes

    codec = EncodecMusicCodec(source=folder, segment_seconds=None)
    levels, size = codec.num_codebooks, codec.codebook_size
    generator = torch.Generator().manual_seed(seed)
    kept, shuffled, semitones, classes = [], [], [], []
    for line in lines:
        wave = play(line)
        codes = codec.encode([(torch.from_numpy(wave)[None], 16000)])[0]
        kept.append(melody_right(codec.decode([codes])[0], line["attributes"]))
        frames = unflatten_codes(codes, levels, size)  # [levels, T], unshifted
        noisy = frames.clone()
        noisy[1:] = torch.randint(0, size, noisy[1:].shape, generator=generator)
        shuffled.append(melody_right(codec.decode([flatten_codes(noisy, size)])[0], line["attributes"]))
        pitch = frame_pitches(wave, frames.shape[1], codec.hop_length)
        voiced = ~np.isnan(pitch)
        first = frames[0].numpy()[voiced]
        semitones += list(zip(first, np.round(pitch[voiced]).astype(int)))
        classes += list(zip(first, np.round(pitch[voiced]).astype(int) % 12))
    per_second = levels * codec.sample_rate / codec.hop_length
    return {"codec": folder, "count": len(lines), "codebooks": levels, "tokens_per_second": per_second,
            "tokens_per_half_second_note": per_second / 2,
            "round_trip": {k: share([j[k] for j in kept]) for k in ("both", "tempo", "key")},
            "residuals_random": {k: share([j[k] for j in shuffled]) for k in ("both", "tempo", "key")},
            "first_code_purity": {"semitone": purity(semitones), "pitch_class": purity(classes),
                                  "first_codes_used": len({c for c, _ in semitones})}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", nargs="+", default=["anygpt/demo/weights/music_codec"])
    parser.add_argument("--count", type=int, default=60, help="held-out melodies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/demo_music_codec.json")
    args = parser.parse_args()
    from anygpt.demo.heldout import read

    lines = read(modality="music")[: args.count]
    results = [measure(folder, lines, args.seed) for folder in args.codec]
    write_json(args.out, {"benchmark": "demo_music_codec", "seed": args.seed, "codecs": results})

    def pct(value) -> str:
        return "   n/a" if value is None else f"{100 * value:5.1f}%"

    print(f"{'codec':<40} {'tok/s':>6} {'round trip key/tempo/both':>26} {'residuals random key/both':>26} "
          f"{'1st-code purity semitone/class':>31}")
    for r in results:
        trip, noisy, pure = r["round_trip"], r["residuals_random"], r["first_code_purity"]
        print(f"{Path(r['codec']).as_posix()[-40:]:<40} {r['tokens_per_second']:>6.1f} "
              f"{pct(trip['key'])} {pct(trip['tempo'])} {pct(trip['both']):>8}   "
              f"{pct(noisy['key'])} {pct(noisy['both']):>12}   {pct(pure['semitone']):>14} {pct(pure['pitch_class'])}")


if __name__ == "__main__":
    main()
