"""Shared timing for the benchmark scripts: warm-up, synchronised median wall time, peak memory, JSON output."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch


def sync(device: str) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn: Callable[[], Any], device: str, repeats: int, warmup: int = 2) -> tuple[float, Any, float | None]:
    """Median seconds of ``repeats`` calls after ``warmup`` untimed ones; also the last output and peak GiB (CUDA)."""
    out = None
    for _ in range(warmup):
        out = fn()
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return statistics.median(times), out, peak


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's."""
    return torch.cuda.get_device_name() if str(device).startswith("cuda") else platform.processor() or "cpu"


def write_json(path: str | Path, result: dict) -> None:
    """Write the result (with the torch version) and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"torch": torch.__version__, **result}, indent=2) + "\n")
    print(f"wrote {path}")


def seconds(fn: Callable[[], Any], device: str, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn`` (see ``median_time``)."""
    return median_time(fn, device, repeats, warmup)[0]
