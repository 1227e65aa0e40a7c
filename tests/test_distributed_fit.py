"""Two training processes (DDP over gloo on CPU): the tiny pretraining fit, and its checkpoint on one process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anygpt.cli import AnyGPTCLI

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "tests/configs/fit_pretrain_tiny.yaml"


FSDP = """trainer:
  accelerator: gpu
  precision: bf16-mixed
  strategy:
    class_path: lightning.pytorch.strategies.FSDPStrategy
    init_args:
      auto_wrap_policy: [transformers.models.llama.modeling_llama.LlamaDecoderLayer]
      state_dict_type: full
"""


@pytest.mark.parametrize("kind", [
    "ddp-cpu",
    pytest.param("fsdp-gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")]),
])
def test_two_process_fit_checkpoint_gives_the_same_loss_on_one_process(kind, tmp_path, monkeypatch):
    """Two ranks train the tiny pretraining config and validate on all validation blocks (each rank half); the
    checkpoint they save gives the same validation loss on one process, and training goes on there."""
    logged, overrides = tmp_path / "logs", ["--trainer.strategy", "ddp"]
    if kind == "fsdp-gpu":
        (tmp_path / "fsdp.yaml").write_text(FSDP)
        overrides = ["--config", str(tmp_path / "fsdp.yaml")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "anygpt", "fit", "--config", CONFIG, *overrides, "--trainer.devices", "2",
         "--trainer.limit_val_batches", "1.0", "--trainer.enable_checkpointing", "true",
         "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
         "--trainer.logger.save_dir", str(logged)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    [metrics] = logged.rglob("metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("val/loss")]
    two_process = float(rows[-1]["val/loss"])  # after the last step, all validation blocks over both ranks
    [ckpt] = tmp_path.rglob("*.ckpt")

    monkeypatch.chdir(ROOT)
    one = ["--trainer.accelerator", "gpu", "--trainer.precision", "bf16-mixed"] if kind == "fsdp-gpu" else []
    validate = AnyGPTCLI(args=["validate", "--config", CONFIG, *one, "--ckpt_path", str(ckpt),
                               "--trainer.limit_val_batches", "1.0"])
    blocks = len(validate.datamodule.val_blocks)
    assert blocks % 2 == 0, f"{blocks} validation blocks: DistributedSampler would repeat one on 2 ranks"
    one_process = float(validate.trainer.callback_metrics["val/loss"])
    assert one_process == pytest.approx(two_process, rel=1e-5 if kind == "ddp-cpu" else 1e-3)

    # training goes on from the 2-process checkpoint on one process
    resumed = AnyGPTCLI(args=["fit", "--config", CONFIG, *one, "--ckpt_path", str(ckpt), "--trainer.max_steps", "6",
                              "--model.lr_scheduler.init_args.total_steps", "6"])
    assert resumed.trainer.global_step == 6


FSDP2 = """trainer:
  strategy:
    class_path: anygpt.lm.sharding.FSDP2Strategy
    init_args: {process_group_backend: %s}
"""


@pytest.mark.parametrize("kind", [
    "fsdp2-cpu",
    pytest.param("fsdp2-gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")]),
])
def test_sharded_checkpoint_resumes_on_two_processes_exactly_and_on_one(kind, tmp_path):
    """FSDP2 over 2 processes stops at a sharded checkpoint (one folder, a file per rank); resumed on 2 processes it
    gives the uninterrupted run's losses exactly, resharded onto 1 process within float reduction noise."""
    from tests.data.test_resume import STEPS, STOP, checkpoint, fit, step_losses

    gpu = kind.endswith("gpu")
    (tmp_path / "fsdp2.yaml").write_text(FSDP2 % ("nccl" if gpu else "gloo"))
    extra = ["--config", str(tmp_path / "fsdp2.yaml")]
    if gpu:  # the real path: bf16 weights gathered, float32 reductions, compiled and recomputed layers
        extra += ["--trainer.accelerator", "gpu", "--trainer.precision", "bf16-mixed", "--model.compile", "true",
                  "--trainer.deterministic", "true"]
    config = "tests/configs/fit_pretrain_tiny.yaml"
    whole = fit(config, tmp_path / "whole", STEPS, 2, *extra)
    part = fit(config, tmp_path / "part", STOP, 2, *extra)
    assert whole.returncode == 0 and part.returncode == 0, (whole.stderr + part.stderr)[-3000:]
    ckpt = checkpoint(tmp_path / "part")
    assert ckpt.is_dir() and len(list(ckpt.glob("*.distcp"))) == 2, "one shard file per rank"
    expected = step_losses(tmp_path / "whole")
    for devices, tolerance in [(2, 1e-6), (1, 1e-4)]:
        resumed = fit(config, tmp_path / f"resumed{devices}", STEPS, devices, *extra, "--ckpt_path", str(ckpt))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        after = step_losses(tmp_path / f"resumed{devices}", first=STOP)
        assert len(after) == STEPS - STOP
        for step, loss in enumerate(after, start=STOP):
            assert loss == pytest.approx(expected[step], rel=tolerance), f"{devices} processes, step {step}"

    # a folder that lost a rank's shard: one line, before anything runs
    next(ckpt.glob("*.distcp")).unlink()
    broken = fit(config, tmp_path / "broken", STEPS, 1, *extra, "--ckpt_path", str(ckpt))
    assert broken.returncode == 1
    [line] = [l for l in broken.stderr.splitlines() if l.startswith("anygpt: error:")]
    assert "is missing" in line and str(ckpt) in line
