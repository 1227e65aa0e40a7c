"""MediaWriter: safe unique names, no overwrite, manifest in input order with errors."""

from __future__ import annotations

import json
from pathlib import Path

import soundfile
import torch
from PIL import Image

from anygpt.writers import MediaWriter, create_unique, safe_stem


class FakeTrainer:
    world_size, global_rank = 1, 0


def test_safe_stem_never_holds_path_characters():
    for text in ["../../etc/passwd", "a/b\\c", "..", "", "   ", "héllo wörld?*<>|"]:
        stem = safe_stem("0001", "text2music", text)
        assert "/" not in stem and "\\" not in stem and ".." not in stem and stem
        assert all(c.isalnum() or c in "-_" for c in stem)


def test_create_unique_never_overwrites(tmp_path):
    (tmp_path / "x.txt").write_text("keep")
    path, handle = create_unique(tmp_path, "x", ".txt")
    handle.close()
    assert path.name == "x-1.txt" and (tmp_path / "x.txt").read_text() == "keep"


def test_writer_outputs_and_manifest(tmp_path):
    writer = MediaWriter(output_dir=str(tmp_path / "out"))
    writer.setup(FakeTrainer(), None, "predict")
    audio = torch.linspace(-2, 2, 3200)[None]  # out of range on purpose: clipped when written
    batch = [
        {"index": 0, "request": "text|music|../../evil", "content": "../../evil", "source": "text",
         "target": "music", "status": "ok", "media": audio, "sample_rate": 32000},
        {"index": 1, "request": "text|music", "source": "", "target": "", "status": "error",
         "error": "request 1: expected source|target|content"},
        {"index": 2, "request": "music|text|a.wav", "content": "a.wav", "source": "music", "target": "text",
         "status": "ok", "text": "A calm song."},
        {"index": 3, "request": "text|image|cat", "content": "cat", "source": "text", "target": "image",
         "status": "ok", "media": Image.new("RGB", (8, 8))},
    ]
    writer.write_on_batch_end(FakeTrainer(), None, batch, None, None, 0)
    lines = [json.loads(l) for l in writer.manifest_path.read_text().splitlines()]
    assert [l["index"] for l in lines] == [0, 1, 2, 3]
    assert [l["status"] for l in lines] == ["ok", "error", "ok", "ok"]
    wav, sr = soundfile.read(lines[0]["file"])
    assert sr == 32000 and len(wav) == 3200 and wav.max() <= 1.0 and wav.min() >= -1.0
    assert Path(lines[0]["file"]).parent == tmp_path / "out"
    assert open(lines[2]["file"]).read().strip() == "A calm song." and lines[2]["text"] == "A calm song."
    assert lines[3]["file"].endswith(".jpg") and "media" not in lines[0]
    # a second run never replaces the first run's files
    second = MediaWriter(output_dir=str(tmp_path / "out"))
    second.setup(FakeTrainer(), None, "predict")
    second.write_on_batch_end(FakeTrainer(), None, batch, None, None, 0)
    assert second.manifest_path.name == "predictions-1.jsonl"
    again = [json.loads(l) for l in second.manifest_path.read_text().splitlines()]
    assert again[0]["file"] != lines[0]["file"]
    assert len(list((tmp_path / "out").glob("*.wav"))) == 2
