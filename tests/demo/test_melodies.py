"""The demo world's melodies (anygpt.demo.melodies) and the tracker that reads them (anygpt.demo.music_judge)."""

import numpy as np
import pytest

from anygpt import AnyGPTError


def test_plan_is_deterministic_and_holds_combinations_out():
    from anygpt.demo.melodies import INSTRUMENTS, KEYS, TEMPI, plan

    a, b = plan(0, {"train": 2000, "test": 100}), plan(0, {"train": 2000, "test": 100})
    assert a == b and plan(1, {"test": 100})["test"] != a["test"]
    keys = ("instrument", "key", "mode", "tempo_class", "contour")
    seen = {tuple(r[k] for k in keys) for r in a["train"]}
    assert not seen & {tuple(r[k] for k in keys) for r in a["test"]}
    assert {r["instrument"] for r in a["train"]} == set(INSTRUMENTS) and {r["key"] for r in a["train"]} == set(KEYS)
    assert all(TEMPI[r["tempo_class"]][0] <= r["tempo"] <= TEMPI[r["tempo_class"]][1] for r in a["test"])


def test_held_out_music_lines_are_the_shipped_ones():
    from anygpt.demo import heldout

    lines = heldout.read(modality="music")
    assert lines == heldout.music_lines(0, heldout.MELODIES)
    assert all(str(line["attributes"]["tempo"]) in line["text"] and line["attributes"]["instrument"] in line["text"]
               for line in lines)
    assert heldout.play(lines[0]).dtype == np.float32


def test_synthesis_is_deterministic():
    from anygpt.demo.melodies import plan, synthesize

    record = plan(0, {"val": 1})["val"][0]
    wave = synthesize(record)
    assert np.array_equal(wave, synthesize(record)) and 0.79 < np.abs(wave).max() <= 0.8


def test_judge_reads_synthesized_melodies():
    """Held-out and training melodies: tempo within 5 % and key and mode as planned."""
    from anygpt.demo.melodies import plan, synthesize
    from anygpt.demo.music_judge import judge

    records = [r for split in plan(5, {"train": 30, "test": 30}).values() for r in split]
    tempo = key = 0
    for record in records:
        found = judge(synthesize(record), 16000)
        tempo += found["tempo"] is not None and abs(found["tempo"] / record["tempo"] - 1) < 0.05
        key += (found["key"], found["mode"]) == (record["key"], record["mode"])
    assert tempo >= 0.95 * len(records) and key >= 0.95 * len(records)


@pytest.mark.parametrize("mode,steps,key", [("major", [0, 2, 4, 5, 7, 9, 11, 12, 7, 4, 0], "c"),
                                             ("minor", [0, 2, 3, 5, 7, 8, 11, 12, 7, 3, 11, 0], "a")])
def test_judge_on_hand_made_scales(mode, steps, key):
    """Plain sine notes written here (not by the melody synthesizer): 120 bpm, a scale up and its chord down."""
    from anygpt.demo.music_judge import judge

    rate, beat = 16000, 0.5
    tonic = 60 if key == "c" else 57
    notes = []
    for midi in [tonic + s for s in steps]:
        t = np.arange(int(beat * rate)) / rate
        envelope = np.minimum(1, t / 0.01) * np.minimum(1, (beat - t) / 0.03)
        notes.append(0.5 * envelope * np.sin(2 * np.pi * 440 * 2 ** ((midi - 69) / 12) * t))
    found = judge(np.concatenate(notes), rate)
    assert abs(found["tempo"] - 120) < 4 and (found["key"], found["mode"]) == (key, mode)


def test_bad_input_is_one_line(tmp_path):
    from anygpt.demo.melodies import build, synthesize
    from anygpt.demo.music_judge import judge

    with pytest.raises(AnyGPTError, match="non-finite"):
        judge(np.full(16000, np.nan), 16000)
    with pytest.raises(AnyGPTError, match="at least 0.25 s"):
        judge(np.zeros(100), 16000)
    with pytest.raises(AnyGPTError, match="must not be negative"):
        build(tmp_path, counts={"train": -2})
    with pytest.raises(AnyGPTError, match="unknown instrument 'kazoo'"):
        synthesize({"instrument": "kazoo", "tempo": 100, "notes": [[60, 0.0, 0.5]]})
