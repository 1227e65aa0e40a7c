"""The demo world's speech corpus: grammar sentences spoken by espeak-ng voices, with their phoneme timing.

A seed in, the same corpus out, on any machine and with any number of worker processes: every block of utterances
is synthesized in a fresh process (espeak-ng carries state from one utterance to the next), its random draws come
from the seed and the utterance's index only, and the library is the one build the ``espeakng-loader`` wheel ships.

Splits: ``train`` and ``val`` (new sentences, training voices) and ``test``, whose sentences and voices (whole
espeak variants) never occur in training. Each split is a manifest of the ``anygpt tokenize`` / codec-training
format, one JSON object a line, paths relative to the manifest::

    {"path": "wav/train/000000.wav", "text": "the red ball is on the table", "voice": "en-us+m3", "pitch": 52,
     "rate": 171, "phonemes": [["D", 0.012, 0.065], ...]}

    python -m anygpt.demo.speech_corpus data/demo/speech --seed 0 --train 60000 --workers 16
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import random
import time
from pathlib import Path

import numpy as np

from anygpt import AnyGPTError
from anygpt.demo.espeak import variants
from anygpt.demo.grammar import sentences

SAMPLE_RATE = 16000
ACCENTS = ["en-us", "en", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
HELDOUT_VARIANTS = 12
BLOCK = 128


def voice_split(seed: int) -> tuple[list[dict], list[dict]]:
    """Training and held-out voices: every accent with every variant, a held-out voice's variant never in training.

    A voice is ``{"name": "en-us+m3", "pitch": base pitch 0-100, "range": pitch range 0-100}``.
    """
    rng = random.Random(f"demo-voices:{seed}")
    names = variants()
    rng.shuffle(names)
    held = set(names[:HELDOUT_VARIANTS])
    train, test = [], []
    for variant in sorted(names):
        for accent in ACCENTS:
            voice = {"name": f"{accent}+{variant}", "pitch": rng.randint(25, 75), "range": rng.randint(30, 90)}
            (test if variant in held else train).append(voice)
    return train, test


def plan(seed: int, counts: dict[str, int]) -> dict[str, list[dict]]:
    """What each split says and who says it: one record (text, voice, rate, pitch, seed) per utterance."""
    train_voices, test_voices = voice_split(seed)
    texts = sentences(seed, sum(counts.values()))
    out, start = {}, 0
    for split, count in counts.items():
        voices = test_voices if split == "test" else train_voices
        rng = random.Random(f"demo-utterances:{seed}:{split}")
        records = []
        for i, text in enumerate(texts[start: start + count]):
            voice = voices[rng.randrange(len(voices))]
            records.append({"path": f"wav/{split}/{i:06d}.wav", "text": text, "voice": voice["name"],
                            "pitch": min(99, max(0, voice["pitch"] + rng.randint(-4, 4))), "range": voice["range"],
                            "rate": rng.randint(140, 210), "seed": rng.randrange(2**31)})
        out[split], start = records, start + count
    return out


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling of a whole utterance through its spectrum (exact, deterministic)."""
    if rate == target or len(audio) == 0:
        return audio
    length = int(round(len(audio) * target / rate))
    spectrum = np.fft.rfft(audio.astype(np.float64))[: length // 2 + 1]
    return (np.fft.irfft(spectrum, length) * (length / len(audio))).astype(np.float32)


def speak(record: dict) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """A record's text in its voice (``voice``, ``rate``, ``pitch``, ``range``, optional ``seed``) by espeak-ng:
    16 kHz float32 samples peaking at 0.7, and the phoneme spans ``(phoneme, start_s, end_s)`` without stress marks.
    espeak-ng's output also depends on what this process spoke before (see the module's docstring)."""
    from anygpt.demo.espeak import Espeak

    spoken = Espeak.shared().say(record["text"], record["voice"], rate=record["rate"], pitch=record["pitch"],
                                 pitch_range=record["range"], seed=record.get("seed", 0))
    audio = resample(spoken.audio, spoken.sample_rate)
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    audio = audio * (0.7 / peak) if peak > 0 else audio
    return audio, [(p.lstrip("'").lstrip(","), start, end) for p, start, end in spoken.phonemes]


def _synthesize_block(job: tuple[str, list[dict]]) -> list[dict]:
    """Speak one block of records into ``folder`` (runs in a fresh worker process)."""
    import soundfile

    folder, records = job
    done = []
    for record in records:
        audio, phonemes = speak(record)
        path = Path(folder) / record["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
        done.append({**{k: v for k, v in record.items() if k != "seed"}, "seconds": round(len(audio) / SAMPLE_RATE, 3),
                     "phonemes": [[p, round(start, 3), round(end, 3)] for p, start, end in phonemes]})
    return done


def build(folder: str | Path, seed: int = 0, train: int = 60000, val: int = 500, test: int = 500,
          workers: int = 1) -> dict:
    """Write the corpus into ``folder``: ``wav/<split>/*.wav`` (16 kHz), ``<split>.jsonl`` and ``corpus.json``
    (seed, counts, hours and a digest of every manifest). Returns the summary of ``corpus.json``."""
    if min(train, val, test) < 0:
        raise AnyGPTError(f"split sizes must not be negative, got train={train}, val={val}, test={test}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    splits = plan(seed, {"train": train, "val": val, "test": test})
    jobs = [(str(folder), records[i: i + BLOCK]) for records in splits.values() for i in range(0, len(records), BLOCK)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(max(1, workers), maxtasksperchild=1) as pool:  # a fresh espeak-ng for every block
        blocks = pool.map(_synthesize_block, jobs, chunksize=1)
    results = iter(blocks)
    summary = {"seed": seed, "sample_rate": SAMPLE_RATE, "splits": {}}
    for split, records in splits.items():
        done = [r for _ in range(0, len(records), BLOCK) for r in next(results)]
        text = "".join(json.dumps(r) + "\n" for r in done)
        (folder / f"{split}.jsonl").write_text(text, encoding="utf-8")
        audio = hashlib.sha256()
        for record in done:
            audio.update((folder / record["path"]).read_bytes())
        summary["splits"][split] = {"utterances": len(done), "hours": round(sum(r["seconds"] for r in done) / 3600, 3),
                                    "voices": len({r["voice"] for r in done}),
                                    "sha256": hashlib.sha256(text.encode()).hexdigest(),
                                    "audio_sha256": audio.hexdigest()}
    summary["build_seconds"] = round(time.perf_counter() - started, 1)
    (folder / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the demo world's speech corpus (espeak-ng, deterministic).")
    parser.add_argument("folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=60000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--workers", type=int, default=multiprocessing.cpu_count())
    args = parser.parse_args(argv)
    print(json.dumps(build(args.folder, args.seed, args.train, args.val, args.test, args.workers), indent=2))


if __name__ == "__main__":
    main()
