"""``anygpt evaluate``'s runner on the demo world (CPU): the ASR twin end to end, its WER against torchmetrics
computed directly on the written samples, a resumed run that ends with the same summary, a LibriSpeech-shaped
split, and bad inputs in one line."""

from __future__ import annotations

import json

import pytest

from anygpt import AnyGPTError
from anygpt.evaluation.protocol import EvalProtocol
from anygpt.evaluation.runner import evaluate
from anygpt.evaluation.scorers import basic_normalize
from tests.evaluation.common import ROOT, Counting, protocol


def test_demo_asr_scores_what_it_wrote_and_resumes_to_the_same_summary(demo, tmp_path):
    from torchmetrics.functional.text import char_error_rate, word_error_rate

    counting = Counting(demo)
    summary = evaluate(protocol(tmp_path, instruction="Transcribe the audio."), model=counting)
    out = tmp_path / "out"
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2, 3] and counting.asked == 4
    assert {line["instruction"] for line in lines} == {"Transcribe the audio."}  # pinned, not drawn
    refs = [basic_normalize(line["reference"]) for line in lines]
    hyps = [basic_normalize(line["hypothesis"]) for line in lines]
    print(summary["metrics"], hyps)
    assert summary["metrics"]["wer"] == pytest.approx(float(word_error_rate(hyps, refs)), abs=1e-9)
    assert summary["metrics"]["cer"] == pytest.approx(float(char_error_rate(hyps, refs)), abs=1e-9)
    assert summary["metrics"]["wer"] <= 0.25  # the shipped demo hears its held-out speakers (benchmark: 3.7 %)
    assert summary["scored"] == summary["samples"] == 4 and summary["failed"] == []
    assert "wer" in (out / "table.md").read_text()
    first = (out / "summary.json").read_text()
    # an interruption after the first batch: the rerun generates the other two and ends with the same files
    (out / "samples.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines[:2]))
    (out / "summary.json").unlink()
    again = Counting(demo)
    evaluate(protocol(tmp_path, instruction="Transcribe the audio."), model=again)
    assert again.asked == 2 and (out / "summary.json").read_text() == first
    evaluate(protocol(tmp_path, instruction="Transcribe the audio."), model=again)  # nothing left to do
    assert again.asked == 2
    with pytest.raises(AnyGPTError, match=r"another protocol \(changed: generation, seed\)") as err:
        evaluate(protocol(tmp_path, instruction="Transcribe the audio.", seed=1, generation={"text": {
            "num_beams": 2, "do_sample": False}}), model=again)
    assert "\n" not in str(err.value) and again.asked == 2


def test_missing_and_corrupt_samples(tmp_path):
    data = tmp_path / "LibriSpeech"
    data.mkdir()
    listing = tmp_path / "pinned.jsonl"
    listing.write_text(json.dumps({"id": "a", "audio": "a.flac", "text": "hello"}) + "\n")
    with pytest.raises(AnyGPTError, match="download: openslr.org/12") as err:
        evaluate(protocol(tmp_path, samples=str(listing), data_root=str(tmp_path / "nowhere"),
                          download_hint="openslr.org/12 test-clean"))
    assert "\n" not in str(err.value)
    summary = evaluate(protocol(tmp_path, samples=str(listing), data_root=str(data)))  # its file is missing
    assert summary["skipped"] == [{"id": "a", "problem": f"missing file {data / 'a.flac'}"}]
    assert summary["scored"] == 0 and summary["metrics"] == {"wer": None, "cer": None}
    assert "n/a" in (tmp_path / "out" / "table.md").read_text()
    listing.write_text("not json\n")
    with pytest.raises(AnyGPTError, match="pinned.jsonl:1: not JSON"):
        evaluate(protocol(tmp_path, samples=str(listing)))
    with pytest.raises(AnyGPTError, match="no sample list"):
        evaluate(protocol(tmp_path, samples=str(tmp_path / "absent.jsonl")))


def test_bad_protocols_are_one_line(capsys):
    from anygpt.cli import main

    with pytest.raises(AnyGPTError, match="'bleu' is not a metric of task asr"):
        EvalProtocol(task="asr", model_config="x", samples="y", output_dir="z", metrics=["bleu"])
    with pytest.raises(SystemExit):
        main(["evaluate", "--config", str(ROOT / "configs/eval/demo_asr.yaml"), "--metrics", "[bleu]"])
    err = capsys.readouterr().err
    assert "bleu" in err and len(err.strip().splitlines()) <= 3, err


def test_a_librispeech_split_is_read_in_id_order_with_its_transcripts(demo, tmp_path):
    """A LibriSpeech-shaped folder (two speakers, upper-case transcripts, FLAC): every utterance in id order, the
    count checked against the protocol's pin, and the demo transcribes them (its own held-out sentences)."""
    import soundfile

    from anygpt.demo.heldout import read, speak

    root = tmp_path / "test-clean"
    lines = read(modality="speech")[:3]
    for (speaker, chapter, utt), line in zip([("908", "31957", 1), ("121", "121726", 0), ("908", "31957", 0)],
                                             lines):
        folder = root / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        ident = f"{speaker}-{chapter}-{utt:04d}"
        soundfile.write(folder / f"{ident}.flac", speak(line)[0], 16000)
        with (folder / f"{speaker}-{chapter}.trans.txt").open("a") as f:
            f.write(f"{ident} {line['text'].upper()}\n")
    summary = evaluate(protocol(tmp_path, samples="librispeech", data_root=str(root), expected_count=3,
                                limit=None), model=demo)
    written = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert [x["id"] for x in written] == ["121-121726-0000", "908-31957-0000", "908-31957-0001"]
    assert written[0]["reference"] == lines[1]["text"].upper()
    assert summary["scored"] == 3 and summary["metrics"]["wer"] <= 0.25, written
    # a corrupt file: its request fails, it is written with its error, counted, and not scored
    broken = root / "908" / "31957" / "908-31957-0002.flac"
    broken.write_bytes(b"not audio at all")
    with (root / "908" / "31957" / "908-31957.trans.txt").open("a") as f:
        f.write("908-31957-0002 A BROKEN FILE\n")
    again = evaluate(protocol(tmp_path, samples="librispeech", data_root=str(root), limit=None), model=demo)
    assert again["scored"] == 3 and [x["id"] for x in again["failed"]] == ["908-31957-0002"]
    assert again["failed"][0]["error"]  # its reason, in one line
    assert again["metrics"] == summary["metrics"]
    with pytest.raises(AnyGPTError, match="gives 4 samples, the protocol pins 2620"):
        evaluate(protocol(tmp_path, samples="librispeech", data_root=str(root), expected_count=2620))
    with pytest.raises(AnyGPTError, match="no LibriSpeech split"):
        evaluate(protocol(tmp_path, samples="librispeech", data_root=str(tmp_path / "none")))
