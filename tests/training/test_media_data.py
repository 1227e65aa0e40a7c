"""Audio clips for codec training, and `anygpt fit` on a model class that the config names."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from anygpt import AnyGPTError
from anygpt.training.media_data import AudioClipsDataModule

ROOT = Path(__file__).resolve().parents[2]


def write_corpus(folder: Path) -> Path:
    """Three tones (2.0 s, 0.5 s at 8 kHz, 1.5 s at 16 kHz), a corrupt file, a missing one; a manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, seconds, rate, freq in [("a.wav", 2.0, 16000, 220), ("b.wav", 0.5, 8000, 440), ("c.flac", 1.5, 16000, 330)]:
        t = np.arange(int(seconds * rate)) / rate
        soundfile.write(folder / name, 0.5 * np.sin(2 * math.pi * freq * t), rate)
    (folder / "bad.wav").write_bytes(b"RIFF not audio at all" * 10)
    manifest = folder / "train.jsonl"
    lines = [{"path": n} for n in ("a.wav", "b.wav", "c.flac", "bad.wav", "gone.wav")]
    lines[0]["phonemes"] = [["a", 0.0, 2.0]]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


class FakeTrainer:
    global_rank, world_size, current_epoch = 0, 1, 0


def test_unreadable_media_are_skipped_and_counted(tmp_path):
    data = AudioClipsDataModule(train=str(write_corpus(tmp_path)), clip_seconds=1.0, batch_size=3)
    data.setup("fit")
    assert [Path(i["path"]).name for i in data.train_items] == ["a.wav", "b.wav", "c.flac"]
    assert len(data.skipped) == 2
    assert any("bad.wav" in s and "not readable as audio" in s for s in data.skipped)
    assert any("gone.wav" in s and "not found" in s for s in data.skipped)


def test_clips_are_cropped_resampled_padded_and_masked(tmp_path):
    data = AudioClipsDataModule(train=str(write_corpus(tmp_path)), clip_seconds=1.0, batch_size=3, seed=3)
    data.setup("fit")
    data.trainer = FakeTrainer()  # the loader reads the rank, world size and epoch from the trainer
    loader = data.train_dataloader()
    assert len(loader) == 1
    [batch] = list(loader)
    assert batch["audio"].shape == batch["mask"].shape == (3, 16000)
    for row, item in enumerate(batch["items"]):
        real = int(batch["mask"][row].sum())
        name = Path(item["path"]).name
        assert real == (8000 if name == "b.wav" else 16000)  # b.wav: 0.5 s resampled from 8 kHz
        assert torch.all(batch["audio"][row, real:] == 0)
        assert 0 <= batch["offset"][row] <= item["seconds"] - 1.0 + 1e-6 or name == "b.wav"
        # the clip is the tone at the file's own frequency: compare with the analytic signal at that offset
        freq = {"a.wav": 220, "b.wav": 440, "c.flac": 330}[name]
        t = float(batch["offset"][row]) + torch.arange(real, dtype=torch.float64) / 16000
        expected = 0.5 * torch.sin(2 * math.pi * freq * t)
        assert torch.allclose(batch["audio"][row, 100:real - 100].double(), expected[100:real - 100], atol=2e-2)
    assert batch["items"][0].get("phonemes") or any(i.get("phonemes") for i in batch["items"])


def test_speed_plays_clips_faster_like_a_tape_and_labels_follow(tmp_path):
    from anygpt.training.teachers import frame_labels

    data = AudioClipsDataModule(train=str(write_corpus(tmp_path)), clip_seconds=0.5, batch_size=3, seed=1,
                                speed=(0.8, 1.25))
    data.setup("fit")
    data.trainer = FakeTrainer()
    [batch] = list(data.train_dataloader())
    speeds = batch["speed"].tolist()
    assert all(0.79 <= v <= 1.26 for v in speeds) and len(set(speeds)) == 3
    for row, item in enumerate(batch["items"]):
        name, real = Path(item["path"]).name, int(batch["mask"][row].sum())
        freq = {"a.wav": 220, "b.wav": 440, "c.flac": 330}[name] * speeds[row]  # the tone, played faster
        t = float(batch["offset"][row]) / speeds[row] + torch.arange(real, dtype=torch.float64) / 16000
        expected = 0.5 * torch.sin(2 * math.pi * freq * t)
        assert torch.allclose(batch["audio"][row, 100:real - 100].double(), expected[100:real - 100], atol=3e-2)
    # frame centres move through the file `speed` times faster: 0.05 s frames at speed 2 from 0.1 s
    item = {"path": "x.wav", "phonemes": [["a", 0.0, 0.2], ["b", 0.2, 0.4]]}
    labels = frame_labels([item], [0.1], 3, 0.05, {"a": 0, "b": 1, "<unk>": 2}, speeds=[2.0])
    assert labels.tolist() == [[0, 1, 1]]  # centres 0.15, 0.25, 0.35 s of the file
    with pytest.raises(AnyGPTError, match="data.speed"):
        AudioClipsDataModule(train=str(tmp_path), speed=(1.5, 1.0))
    plain = AudioClipsDataModule(train=str(tmp_path), seed=1)
    assert "speed" not in plain.settings() and data.settings()["speed"] == [0.8, 1.25]

def test_fit_trains_a_model_class_that_the_config_names(tmp_path, monkeypatch):
    """`anygpt fit` builds the LightningModule named by `model.class_path` (not UnifiedLM) and trains it."""
    from anygpt.cli import names_other_model

    manifest = write_corpus(tmp_path / "media")
    config = tmp_path / "toy.yaml"
    config.write_text(json.dumps({
        "trainer": {"accelerator": "cpu", "max_steps": 30, "logger": False, "enable_checkpointing": False,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "model": {"class_path": "tests.training.toy_gain.ToyGain", "init_args": {"target": 0.5}},
        "data": {"class_path": "anygpt.training.media_data.AudioClipsDataModule",
                 "init_args": {"train": str(manifest), "clip_seconds": 0.5, "batch_size": 1}}}))
    assert names_other_model(["fit", "--config", str(config)])
    assert not names_other_model(["fit", "--config", str(ROOT / "tests/configs/fit_tiny.yaml")])
    monkeypatch.chdir(ROOT)
    from anygpt.cli import AnyModelCLI

    cli = AnyModelCLI(args=["fit", "--config", str(config)])
    assert type(cli.model).__name__ == "ToyGain"
    assert float(cli.model.gain) == pytest.approx(0.5, abs=0.05)


def test_images_are_scaled_cropped_and_bad_files_skipped(tmp_path):
    from PIL import Image

    from anygpt.training.media_data import ImageFilesDataModule

    folder = tmp_path / "images"
    folder.mkdir()
    left_red = np.zeros((40, 80, 3), dtype=np.uint8)
    left_red[:, :40, 0] = 255  # a 80x40 image: red left half, black right half
    Image.fromarray(left_red).save(folder / "wide.png")
    Image.fromarray(np.full((64, 32, 3), 200, dtype=np.uint8)).save(folder / "tall.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    data = ImageFilesDataModule(train=str(folder), val=str(folder), image_size=16, batch_size=2, flip=False)
    data.setup("fit")
    assert [Path(i["path"]).name for i in data.train_items] == ["tall.jpg", "wide.png"]
    assert len(data.skipped) == 2 and all("broken.png" in s for s in data.skipped)  # by train and by val
    [val] = list(data.val_dataloader())
    assert val["image"].shape == (2, 3, 16, 16) and 0 <= val["image"].min() and val["image"].max() <= 1
    wide = val["image"][[Path(i["path"]).name for i in val["items"]].index("wide.png")]
    # scaled to 32x16, the centre 16x16 crop spans columns 8-23: red on its left half, black on its right
    assert wide[0, :, :6].mean() > 0.95 and wide[0, :, 10:].mean() < 0.05
    data.trainer = FakeTrainer()
    [train] = list(data.train_dataloader())
    assert train["image"].shape == (2, 3, 16, 16)
