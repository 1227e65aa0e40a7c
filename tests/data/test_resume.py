"""Exact resume: a fit stopped at a checkpoint and resumed gives the per-step losses of an uninterrupted fit.

The runs are `anygpt fit` processes on the tiny pretraining and SFT configs (one process, and two gloo processes);
per-step losses come from the CSV logger. The stopping step falls inside an epoch, and the runs cross epochs.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS, STOP = 10, 3


def fit(config: str, folder: Path, max_steps: int, devices: int, *extra: str) -> subprocess.CompletedProcess:
    strategy = ["--trainer.strategy", "ddp"] if devices > 1 else []
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "anygpt", "fit", "--config", config, *strategy, "--trainer.devices", str(devices),
         "--trainer.max_steps", str(max_steps), "--model.lr_scheduler.init_args.total_steps", str(STEPS),
         "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
         "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(folder),
         "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(folder / "logs"),
         *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def step_losses(folder: Path, first: int = 0) -> list[float]:
    """Training losses in step order; the logged steps must run on from ``first`` with no gap."""
    [metrics] = folder.rglob("metrics.csv")
    rows = [row for row in csv.DictReader(metrics.open()) if row.get("train/loss")]
    assert [int(row["step"]) for row in rows] == list(range(first, first + len(rows))), "logged steps have a gap"
    return [float(row["train/loss"]) for row in rows]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(config, devices, steps)``: the losses and folder of one uninterrupted fit, run once per module."""
    done: dict[tuple, tuple[list[float], Path]] = {}

    def run(config: str, devices: int, steps: int) -> tuple[list[float], Path]:
        if (config, devices, steps) not in done:
            folder = tmp_path_factory.mktemp("fit")
            result = fit(config, folder, steps, devices)
            assert result.returncode == 0, result.stderr[-3000:]
            done[config, devices, steps] = step_losses(folder), folder
        return done[config, devices, steps]

    return run


def checkpoint(folder: Path) -> Path:
    [ckpt] = [p for p in folder.rglob("*.ckpt") if p.name != "last.ckpt"] or list(folder.rglob("last.ckpt"))
    return ckpt


@pytest.mark.parametrize("devices", [1, 2])
@pytest.mark.parametrize("config", ["tests/configs/fit_pretrain_tiny.yaml", "tests/configs/fit_sft_tiny.yaml"])
def test_stopped_and_resumed_fit_gives_the_losses_of_an_uninterrupted_one(config, devices, runs, tmp_path):
    expected, _ = runs(config, devices, STEPS)
    before, part = runs(config, devices, STOP)
    resumed = fit(config, tmp_path / "resumed", STEPS, devices, "--ckpt_path", str(checkpoint(part)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr

    got = before + step_losses(tmp_path / "resumed", first=STOP)
    assert len(expected) == len(got) == STEPS
    for step in range(STEPS):
        assert got[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}: {got[step]} vs {expected[step]}"
    # the steps differ from one another (a loader that replays one batch would not)
    assert len({round(v, 6) for v in expected}) > STEPS // 2


def test_resume_on_two_processes_from_one_keeps_the_global_batch(runs, tmp_path):
    """One process at batch 2 stops; two processes at batch 1 each resume with the same items per step."""
    config = "tests/configs/fit_pretrain_tiny.yaml"
    expected, _ = runs(config, 1, STEPS)
    _, part = runs(config, 1, STOP)
    resumed = fit(config, tmp_path / "resumed", STEPS, 2, "--ckpt_path", str(checkpoint(part)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = step_losses(tmp_path / "resumed", first=STOP)
    assert len(after) == STEPS - STOP
    for step, loss in enumerate(after, start=STOP):  # the same tokens over two processes: float32 reduction order
        assert loss == pytest.approx(expected[step], rel=1e-4), f"step {step}: {loss} vs {expected[step]}"


def test_resume_with_changed_data_fails_in_one_line_and_writes_nothing(tmp_path):
    data = tmp_path / "speech_train.jsonl"
    shutil.copy(ROOT / "tests/configs/data/sft_train.jsonl", data)
    config = "tests/configs/fit_sft_tiny.yaml"
    files = ["--data.init_args.train_files", json.dumps([str(data)])]
    part = fit(config, tmp_path / "part", STOP, 1, *files)
    assert part.returncode == 0, part.stderr[-3000:]
    ckpt = checkpoint(tmp_path / "part")
    with data.open("a") as handle:
        handle.write(data.read_text().splitlines()[0] + "\n")
    resumed = fit(config, tmp_path / "resumed", STEPS, 1, *files, "--ckpt_path", str(ckpt))
    assert resumed.returncode == 1
    [line] = [l for l in resumed.stderr.splitlines() if l.startswith("anygpt: error:")]
    assert str(data) in line and "changed since the checkpoint" in line
    assert not list((tmp_path / "resumed").rglob("*.ckpt"))


def test_resume_from_another_model_shape_fails_in_one_line(runs, tmp_path):
    import torch

    _, part = runs("tests/configs/fit_pretrain_tiny.yaml", 1, STOP)
    ckpt = torch.load(checkpoint(part), weights_only=False)
    key = "backbone.model.layers.1.mlp.up_proj.weight"
    ckpt["state_dict"][key] = torch.zeros(96, ckpt["state_dict"][key].shape[1])  # a wider MLP than the model's
    torch.save(ckpt, tmp_path / "other.ckpt")
    resumed = fit("tests/configs/fit_pretrain_tiny.yaml", tmp_path / "resumed", STEPS, 1,
                  "--ckpt_path", str(tmp_path / "other.ckpt"))
    assert resumed.returncode == 1
    [line] = [l for l in resumed.stderr.splitlines() if l.startswith("anygpt: error:")]
    assert "does not fit the model" in line and key in line and "(96, 32)" in line and "(64, 32)" in line
    assert not list((tmp_path / "resumed").rglob("*.ckpt"))


def test_resume_from_a_missing_checkpoint_fails_in_one_line(capsys, monkeypatch):
    from anygpt.cli import main

    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", "tests/configs/fit_pretrain_tiny.yaml", "--ckpt_path", "no/such.ckpt"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "anygpt: error: --ckpt_path no/such.ckpt: no such checkpoint file or folder"
