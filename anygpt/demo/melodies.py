"""The demo world's music: short numpy-synthesized melodies, captioned from the parameters that made them.

A melody has an instrument (an additive-synthesis timbre), a tempo (slow, medium or fast, in beats per minute), a
key and mode (major, or harmonic minor), a contour (rising, falling, arch or valley) and a rhythm of quarter and
eighth notes (quarters on most beats, so the beat is what the notes mostly step by; beats are accented). It starts on
the tonic chord and ends on a long tonic (a minor melody reaches it from the raised seventh), so the key is audible::

    {"path": "wav/train/000000.wav", "text": "a slow rising melody in d minor on the flute at 72 beats per minute",
     "instrument": "flute", "tempo": 72, "tempo_class": "slow", "key": "d", "mode": "minor", "contour": "rising",
     "notes": [[62, 0.0, 0.833], ...]}   # MIDI pitch, start and length in seconds

A seed in, the same melodies out (the draws come from the seed and the melody's index; synthesis is plain numpy).
Splits: ``train``, ``val`` and ``test``, whose combinations of instrument, key, mode, tempo class and contour never
occur in training (each value alone does).

    python -m anygpt.demo.melodies data/demo/music --seed 0 --train 12000 --workers 16
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

import numpy as np

from anygpt import AnyGPTError

SAMPLE_RATE = 16000
KEYS = ["c", "c sharp", "d", "d sharp", "e", "f", "f sharp", "g", "g sharp", "a", "a sharp", "b"]
MODES = {"major": [0, 2, 4, 5, 7, 9, 11], "minor": [0, 2, 3, 5, 7, 8, 11]}  # minor: harmonic (raised seventh)
TEMPI = {"slow": (64, 84), "medium": (96, 120), "fast": (138, 168)}
CONTOURS = ["rising", "falling", "arch", "valley"]
INSTRUMENTS = {  # harmonic amplitudes, attack s, decay per s (0: sustained), vibrato depth in semitones
    "piano": ([1.0, 0.55, 0.3, 0.18, 0.1, 0.06], 0.005, 3.0, 0.0),
    "flute": ([1.0, 0.12, 0.04], 0.06, 0.0, 0.15),
    "organ": ([1.0, 0.8, 0.6, 0.5, 0.0, 0.35, 0.0, 0.25], 0.01, 0.0, 0.0),
    "clarinet": ([1.0, 0.0, 0.45, 0.0, 0.25, 0.0, 0.12], 0.03, 0.0, 0.0),
    "violin": ([1.0, 0.5, 0.33, 0.25, 0.2, 0.16, 0.14, 0.12], 0.08, 0.0, 0.3),
    "guitar": ([1.0, 0.7, 0.35, 0.2, 0.12], 0.003, 5.0, 0.0),
}
MELODY_SECONDS = 5.0
HELD_OUT_SHARE = 0.1


def combinations() -> list[tuple[str, str, str, str, str]]:
    """Every (instrument, key, mode, tempo class, contour)."""
    return [(i, k, m, t, c) for i in INSTRUMENTS for k in KEYS for m in MODES for t in TEMPI for c in CONTOURS]


def held_out(combination: tuple, seed: int) -> bool:
    """Whether a combination belongs to the test split (a hash of it and the seed)."""
    digest = hashlib.sha256(json.dumps([seed, "music", list(combination)]).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELD_OUT_SHARE


def caption(record: dict) -> str:
    """The melody's description in the demo language."""
    return (f"a {record['tempo_class']} {record['contour']} melody in {record['key']} {record['mode']} on the "
            f"{record['instrument']} at {record['tempo']} beats per minute")


def compose(rng: random.Random, key: str, mode: str, tempo: int, contour: str) -> list[list[float]]:
    """The notes ``[midi, start s, length s]`` of one melody of about ``MELODY_SECONDS`` (at least two bars).

    Every other beat is a tonic-chord tone on a path that follows the contour from the tonic back to the tonic (an
    octave up for ``rising``, down for ``falling``) and passes the mode's third; the beats between step towards
    the next chord tone (a fifth of them in two eighths); the last note, two beats long, is the tonic, reached from
    the raised seventh in minor and from the second in major.
    """
    beat = 60.0 / tempo
    beats = max(8, 2 * round(MELODY_SECONDS / beat / 2))
    tonic = 60 + KEYS.index(key)
    scale = MODES[mode]
    ladder = [-3, 0, 2, 4, 7, 9]  # tonic-chord tones, in scale degrees (7: the tonic an octave up)
    start, end, turn = {"rising": (1, 4, None), "falling": (4, 1, None), "arch": (1, 1, rng.choice([3, 4])),
                        "valley": (4, 4, rng.choice([0, 1]))}[contour]
    strong = beats // 2 - 1  # chord tones before the final tonic
    path = _path(start, end, turn, strong + 1)
    if all(ladder[i] % 7 != 2 for i in path[:-1]):  # no third yet: it takes the middle slot
        middle = strong // 2 if strong > 1 else 0
        path[middle] = min((i for i in range(len(ladder)) if ladder[i] % 7 == 2), key=lambda i: abs(i - path[middle]))
    skeleton = [ladder[i] for i in path]
    notes, time = [], 0.0
    for k in range(strong):
        here, there = skeleton[k], skeleton[k + 1]
        notes.append([tonic + _semitones(scale, here), time, beat])
        time += beat
        if k == strong - 1:
            home = tonic + _semitones(scale, there)
            notes.append([home - 1 if mode == "minor" else home + 2, time, beat])
        else:
            step = 1 if there > here else -1 if there < here else rng.choice([1, -1])
            passing = [here + step] if rng.random() < 0.8 else [here + step, here + 2 * step]
            for degree in passing:
                notes.append([tonic + _semitones(scale, degree), time, beat / len(passing)])
                time += beat / len(passing)
        time = notes[-1][1] + notes[-1][2]
    notes.append([tonic + _semitones(scale, skeleton[-1]), time, 2 * beat])
    return notes


def _path(start: int, end: int, turn: int | None, length: int) -> list[int]:
    """``length`` ladder indices from ``start`` to ``end`` (through ``turn`` at the middle), evenly spaced."""
    if length < 2:
        return [end]
    if turn is None:
        return [round(start + (end - start) * k / (length - 1)) for k in range(length)]
    half = (length - 1) / 2
    return [round(start + (turn - start) * k / half) if k <= half else round(turn + (end - turn) * (k - half) / half)
            for k in range(length)]


def _semitones(scale: list[int], degree: int) -> int:
    octave, step = divmod(degree, 7)
    return 12 * octave + scale[step]


def plan(seed: int, counts: dict[str, int]) -> dict[str, list[dict]]:
    """Each split's melodies: a record per clip (path, caption, parameters, notes)."""
    out = {}
    for split, count in counts.items():
        rng = random.Random(f"demo-melodies:{seed}:{split}")
        records = []
        while len(records) < count:
            combination = (rng.choice(sorted(INSTRUMENTS)), rng.choice(KEYS), rng.choice(sorted(MODES)),
                           rng.choice(sorted(TEMPI)), rng.choice(CONTOURS))
            if held_out(combination, seed) != (split == "test"):
                continue
            instrument, key, mode, tempo_class, contour = combination
            tempo = rng.randint(*TEMPI[tempo_class])
            record = {"path": f"wav/{split}/{len(records):06d}.wav", "instrument": instrument, "tempo": tempo,
                      "tempo_class": tempo_class, "key": key, "mode": mode, "contour": contour}
            record["text"] = caption(record)
            record["notes"] = [[n[0], round(n[1], 4), round(n[2], 4)] for n in
                               compose(rng, key, mode, tempo, contour)]
            record["seed"] = rng.randrange(2**31)
            records.append(record)
        out[split] = records
    return out


def synthesize(record: dict, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The melody's waveform (float32, mono, peak 0.8): each note an additive tone in the instrument's timbre with
    an attack, a decay or sustain, a short release before the next note, and beats louder than off-beats."""
    if record.get("instrument") not in INSTRUMENTS:
        raise AnyGPTError(f"unknown instrument {record.get('instrument')!r}; expected one of {sorted(INSTRUMENTS)}")
    amplitudes, attack, decay, vibrato = INSTRUMENTS[record["instrument"]]
    rng = np.random.default_rng(record.get("seed", 0))
    beat = 60.0 / record["tempo"]
    end = max(start + length for _, start, length in record["notes"])
    out = np.zeros(int(round((end + 0.1) * sample_rate)), dtype=np.float64)
    for midi, start, length in record["notes"]:
        n = int(round(length * sample_rate))
        t = np.arange(n) / sample_rate
        freq = 440.0 * 2 ** ((midi - 69) / 12)
        wobble = 2 ** (vibrato / 12 * np.sin(2 * np.pi * 5.5 * t + rng.uniform(0, 2 * np.pi)))
        phase = 2 * np.pi * np.cumsum(freq * wobble) / sample_rate
        tone = sum(a * np.sin(k * phase + rng.uniform(0, 2 * np.pi)) for k, a in enumerate(amplitudes, 1)
                   if a and k * freq < 0.45 * sample_rate)
        envelope = np.minimum(1.0, t / attack) * (np.exp(-decay * t) if decay else 1.0)
        release = int(min(0.04, 0.2 * length) * sample_rate)
        envelope[n - release:] *= np.linspace(1.0, 0.0, release)
        on_beat = abs(start / beat - round(start / beat)) < 1e-3
        first = int(round(start * sample_rate))
        out[first:first + n] += (1.0 if on_beat else 0.6) * envelope * tone
    return (0.8 * out / max(np.abs(out).max(), 1e-9)).astype(np.float32)


def _write(job: tuple[str, dict]) -> tuple[str, float]:
    """Synthesizes one record into its file; returns the waveform's digest and its seconds."""
    import soundfile

    folder, record = job
    path = Path(folder) / record["path"]
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = synthesize(record)
    soundfile.write(path, wave, SAMPLE_RATE, subtype="PCM_16")
    return hashlib.sha256(wave.tobytes()).hexdigest(), len(wave) / SAMPLE_RATE


def build(folder: str | Path, seed: int = 0, counts: dict[str, int] | None = None, workers: int = 1) -> dict:
    """Synthesizes every split's clips (over ``workers`` processes; the files are the same for any number) and
    writes its manifest (``{split}.jsonl``, the ``anygpt tokenize`` / codec-training format) and ``corpus.json``
    (counts, hours, digests)."""
    import multiprocessing

    folder = Path(folder)
    counts = counts or {"train": 12000, "val": 300, "test": 300}
    if any(count < 0 for count in counts.values()) or workers < 1:
        raise AnyGPTError(f"split sizes must not be negative and workers must be >= 1, got {counts}, {workers}")
    summary = {"seed": seed, "sample_rate": SAMPLE_RATE, "splits": {}}
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        for split, records in plan(seed, counts).items():
            jobs = [(str(folder), record) for record in records]
            done = pool.map(_write, jobs, chunksize=64) if pool else [_write(job) for job in jobs]
            manifest = "".join(json.dumps(r) + "\n" for r in records)
            (folder / f"{split}.jsonl").write_text(manifest, encoding="utf-8")
            summary["splits"][split] = {
                "clips": len(records), "hours": round(sum(s for _, s in done) / 3600, 3),
                "manifest_sha256": hashlib.sha256(manifest.encode()).hexdigest()[:16],
                "audio_sha256": hashlib.sha256("".join(d for d, _ in done).encode()).hexdigest()[:16]}
    finally:
        if pool:
            pool.close()
    (folder / "corpus.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Synthesize the demo world's melodies.")
    parser.add_argument("folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=12000)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--workers", type=int, default=1, help="synthesizing processes")
    args = parser.parse_args(argv)
    counts = {"train": args.train, "val": args.val, "test": args.test}
    print(json.dumps(build(args.folder, args.seed, counts, args.workers), indent=1))


if __name__ == "__main__":
    main()
