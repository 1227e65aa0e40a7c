"""Quiet runs: a normal predict prints the project's own lines and Lightning's, not third-party notices."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from anygpt.quiet import NOTICES, quiet_third_party

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_predict_prints_no_third_party_notices(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "anygpt", "predict", "--config", str(ROOT / "configs" / "tiny.yaml"),
         "--trainer.callbacks.init_args.output_dir", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-2000:]
    assert "anygpt: 7 ok, 0 failed" in out
    for noise in ("Tip:", "torchvision", "torchao", "Enum subclass", "LeafSpec", "Warning"):
        assert noise not in out, out


def test_filters_drop_only_the_named_notices(caplog):
    quiet_third_party()
    quiet_third_party()  # idempotent
    name, fragments = next(iter(NOTICES.items()))
    logger = logging.getLogger(name)
    assert sum(type(f).__name__ == "DropNotices" for f in logger.filters) == 1
    with caplog.at_level(logging.INFO, logger=name):
        logger.info(f"{fragments[0]} try a cloud product")
        logger.info("GPU available: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False"]
