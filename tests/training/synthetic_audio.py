"""A tiny speech-like corpus for codec tests: tone segments of random pitch with "phoneme" timings.

Each file is a sequence of harmonic tones; the tone's pitch band is its label (``aa`` lowest ... ``sh`` highest), so
the timings are a perfect frame-label teacher. Short unlabelled gaps of silence separate some segments.
``python -m tests.training.synthetic_audio data/tones`` writes the corpus that
``tests/configs/codecs/speechtokenizer_tiny.yaml`` reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

LABELS = {"aa": 200.0, "iy": 700.0, "uw": 2000.0, "sh": 5000.0}  # label: base pitch in Hz, a band apart each


def tone_clip(rng: np.random.Generator, seconds: float, rate: int) -> tuple[np.ndarray, list[list]]:
    """One file's samples and its ``[[label, start_s, end_s], ...]`` timings."""
    wave, phonemes, t = [], [], 0.0
    while t < seconds - 0.05:
        if phonemes and rng.random() < 0.2:  # an unlabelled gap
            gap = min(float(rng.uniform(0.04, 0.1)), seconds - t)
            wave.append(np.zeros(int(round(gap * rate)), np.float32))
            t += gap
            continue
        label = str(rng.choice(list(LABELS)))
        length = min(float(rng.uniform(0.12, 0.35)), seconds - t)
        n = int(round(length * rate))
        pitch = LABELS[label] * rng.uniform(0.9, 1.1) * np.linspace(1.0, rng.uniform(0.95, 1.05), n)  # a slight glide
        phase = 2 * np.pi * np.cumsum(pitch) / rate
        tone = sum(np.sin(k * phase + rng.uniform(0, 6.28)) / k for k in (1, 2, 3) if k * pitch.max() < 0.45 * rate)
        envelope = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.01 * rate))
        wave.append((0.25 * rng.uniform(0.6, 1.0) * tone * envelope).astype(np.float32))
        phonemes.append([label, round(t, 4), round(t + length, 4)])
        t += length
    return np.concatenate(wave)[: int(seconds * rate)], phonemes


def write_tone_corpus(folder: str | Path, train: int = 12, val: int = 4, seconds: float = 2.0, rate: int = 16000,
                      seed: int = 0, corrupt: bool = True) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``val.jsonl`` manifests (paths relative to them) and their wavs into ``folder``.

    With ``corrupt``, the training manifest also lists ``broken.wav``: random bytes, which the data module skips.
    """
    import soundfile

    folder = Path(folder)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    manifests = []
    for split, count in (("train", train), ("val", val)):
        records = []
        for i in range(count):
            wave, phonemes = tone_clip(rng, seconds, rate)
            name = f"wav/{split}_{i:03d}.wav"
            soundfile.write(folder / name, wave, rate)
            records.append({"path": name, "phonemes": phonemes})
        if split == "train" and corrupt:
            (folder / "wav" / "broken.wav").write_bytes(rng.bytes(3000))
            records.insert(len(records) // 2, {"path": "wav/broken.wav", "phonemes": []})
        manifest = folder / f"{split}.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        manifests.append(manifest)
    return manifests[0], manifests[1]


if __name__ == "__main__":
    print(*write_tone_corpus(sys.argv[1] if len(sys.argv) > 1 else "data/tones"))
