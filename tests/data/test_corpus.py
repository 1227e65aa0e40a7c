"""Corpus tokenization: manifest problems are reported by line, shards equal the codec's codes, runs resume."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch import Callback, Trainer

from anygpt import AnyGPTError
from anygpt.cli import main
from anygpt.data.corpus import REPORT, CorpusDataModule, CorpusTokenizer, ShardWriterCallback, read_manifest
from anygpt.data.shards import BinaryShard, read_shard
from anygpt.tokenizers.music import EncodecMusicCodec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MANIFEST = ROOT / "tests" / "configs" / "data" / "tokenize_manifest.jsonl"


@pytest.fixture(scope="module")
def codec():
    return EncodecMusicCodec.tiny(segment_seconds=1.0)


def tokenize(codec, output_dir, format="bin", manifest=MANIFEST, callbacks=(), report=REPORT, **data):
    data = {"shard_size": 2, "batch_size": 2, **data}
    writer = ShardWriterCallback(format=format)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, use_distributed_sampler=False, callbacks=[writer, *callbacks])
    trainer.predict(CorpusTokenizer(codec), datamodule=CorpusDataModule(str(manifest), str(output_dir), **data),
                    return_predictions=False)
    return json.loads((Path(output_dir) / report).read_text())


def shard_rows(folder: Path) -> dict[str, list]:
    stems = sorted({p.name.split(".")[0] for p in folder.glob("shard-*")})
    return {s: [(np.asarray(c).tolist(), t) for c, t in read_shard(folder / s)] for s in stems}


def test_manifest_problems_are_reported_by_line():
    items, problems = read_manifest(MANIFEST)
    assert [item["where"].rsplit(":", 1)[1] for item in items] == ["1", "2", "4", "6", "8", "9"]
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in problems] == ["3", "5", "7"]
    assert "bad JSON" in problems[0] and "no 'text'" in problems[1] and "nope.wav" in problems[2]
    assert items[0]["path"] == os.path.normpath(EXAMPLES / "tone.wav")
    with pytest.raises(AnyGPTError, match="manifest not found"):
        read_manifest(MANIFEST.with_name("nope.jsonl"))


def test_folder_manifest_uses_sidecar_captions(tmp_path):
    shutil.copy(EXAMPLES / "tone.wav", tmp_path / "a.wav")
    shutil.copy(EXAMPLES / "picture.jpg", tmp_path / "b.jpg")
    shutil.copy(EXAMPLES / "voice.wav", tmp_path / "c.wav")
    (tmp_path / "a.txt").write_text("a tone\n")
    (tmp_path / "b.txt").write_text("a picture")
    items, problems = read_manifest(tmp_path)
    assert [(Path(i["path"]).name, i["text"]) for i in items] == [("a.wav", "a tone"), ("b.jpg", "a picture")]
    assert len(problems) == 1 and "c.wav: no caption" in problems[0]


def test_batches_never_cross_shards_and_split_by_rank(tmp_path):
    data = CorpusDataModule(str(MANIFEST), str(tmp_path), shard_size=3, batch_size=2)
    data.setup("predict")
    assert [[i["shard"] for i in b] for b in data.batches()] == [[0, 0], [0], [1, 1], [1]]
    assert {i["shard"] for b in data.batches(rank=1, world_size=2) for i in b} == {1}


@pytest.mark.parametrize("format", ["bin", "jsonl"])
def test_shards_hold_the_codecs_codes_and_bad_items_fail_alone(codec, tmp_path, format):
    report = tokenize(codec, tmp_path, format)
    assert (report["items_ok"], report["items_failed"], report["lines_skipped"]) == (5, 1, 3)
    assert report["shards_written"] == 3 and report["failed"][0].startswith(f"{MANIFEST}:4: ")
    assert "picture.jpg" in report["failed"][0] and len(report["skipped"]) == 3
    rows = shard_rows(tmp_path)
    expected = {"shard-00000": [("tone.wav", "A pure tone"), ("voice.wav", "Someone speaking")],
                "shard-00001": [("tone.wav", "The tone again")],  # picture.jpg failed alone
                "shard-00002": [("voice.wav", "The voice again"), ("tone.wav", "The tone a third time")]}
    assert list(rows) == list(expected)
    for stem, items in expected.items():
        for (codes, text), (name, want_text) in zip(rows[stem], items, strict=True):
            assert text == want_text
            assert codes == codec.encode([str(EXAMPLES / name)])[0].tolist()
    if format == "jsonl":
        line = json.loads((tmp_path / "shard-00000.jsonl").read_text(encoding="utf-8").splitlines()[0])
        assert set(line) == {"text", "music"} and line["music"].startswith("<somu><🎶")


def test_resume_skips_finished_shards_and_matches_a_clean_run(codec, tmp_path):
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    tokenize(codec, clean)
    tokenize(codec, resumed)
    for suffix in (".bin", ".idx.npy", ".meta.json", ".texts.jsonl"):
        (resumed / f"shard-00001{suffix}").unlink()  # one shard lost
    kept = {p.name: p.stat().st_mtime_ns for p in resumed.glob("shard-0000[02].*")}
    report = tokenize(codec, resumed)
    assert report["shards_written"] == 1 and report["shards_already_done"] == 2 and report["items_ok"] == 1
    assert {p.name: p.stat().st_mtime_ns for p in resumed.glob("shard-0000[02].*")} == kept  # not recomputed
    for path in clean.glob("shard-*"):
        assert (resumed / path.name).read_bytes() == path.read_bytes()


def test_parts_of_one_manifest_make_the_shards_of_one_run(codec, tmp_path):
    clean, parted = tmp_path / "clean", tmp_path / "parted"
    tokenize(codec, clean)
    first = tokenize(codec, parted, part="0/2", report="tokenize_report-part0of2.json")
    assert sorted({p.name.split(".")[0] for p in parted.glob("shard-*")}) == ["shard-00000", "shard-00002"]
    assert (first["shards_total"], first["shards_written"], first["items_ok"]) == (2, 2, 4)
    second = tokenize(codec, parted, part="1/2", report="tokenize_report-part1of2.json")
    assert (second["shards_total"], second["shards_written"], second["items_ok"]) == (1, 1, 1)
    assert sorted(p.name for p in clean.glob("shard-*")) == sorted(p.name for p in parted.glob("shard-*"))
    for path in clean.glob("shard-*"):
        assert (parted / path.name).read_bytes() == path.read_bytes()
    data = CorpusDataModule(str(MANIFEST), str(tmp_path / "new"), shard_size=1, part="1/3")
    data.setup("predict")
    assert data.pending == [1, 4]  # 6 items, one shard each: shards 1 and 4
    assert {i["shard"] for b in data.batches(rank=1, world_size=2) for i in b} == {4}
    for bad in ("2/2", "1", "a/3", "-1/2"):
        with pytest.raises(AnyGPTError, match=f"data.part must be 'i/n'.*{bad}"):
            CorpusDataModule(str(MANIFEST), str(tmp_path), part=bad)


class CrashAfterFirstShard(Callback):
    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 4:  # batches of one item: shard 0 is complete, shard 1 has its first item written
            raise RuntimeError("simulated crash")


def test_a_crash_leaves_only_finished_shards_and_a_rerun_completes(codec, tmp_path):
    clean = tmp_path / "clean"
    tokenize(codec, clean, shard_size=4, batch_size=2)
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):  # the writer runs first: it holds a partial shard
        tokenize(codec, crashed, shard_size=4, batch_size=1, callbacks=[CrashAfterFirstShard()])
    assert sorted(p.name for p in crashed.iterdir()) == [f"shard-00000{s}" for s in
                                                         (".bin", ".idx.npy", ".meta.json", ".texts.jsonl")]
    report = tokenize(codec, crashed, shard_size=4, batch_size=2)
    assert report["shards_already_done"] == 1 and report["shards_written"] == 1
    for path in clean.glob("shard-*"):
        assert (crashed / path.name).read_bytes() == path.read_bytes()
    assert len(BinaryShard(crashed / "shard-00001")) == 2  # lines 8 and 9 (shard 0: lines 1, 2, 4 failed, 6)


def test_tokenize_cli_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "shards"
    main(["tokenize", "--config", "tests/configs/tokenize_tiny.yaml", "--data.output_dir", str(out),
          "--writer.format", "jsonl"])
    summary = capsys.readouterr().out
    assert "5 items ok, 1 failed, 3 manifest entries skipped; 3 shards written" in summary
    assert sorted(p.name for p in out.iterdir()) == [f"shard-0000{k}.jsonl" for k in range(3)] + [
        "tokenize_report.json"]
    main(["tokenize", "--config", "tests/configs/tokenize_tiny.yaml", "--data.output_dir", str(out)])
    assert "0 shards written, 3 already done" in capsys.readouterr().out


def test_tokenize_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as done:
        main(["tokenize", "--config", "tests/configs/tokenize_tiny.yaml", "--data.output_dir", str(tmp_path),
              "--data.manifest", str(tmp_path / "missing.jsonl")])
    assert done.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("anygpt: error: manifest not found")
