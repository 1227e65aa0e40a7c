"""Codebook statistics that only training reads, left out of shipped weights and filled back in when loading.

The EMA vector quantizers of SpeechTokenizer and Encodec keep, beside each codebook ``embed``, the running
``embed_avg`` (as large as the codebook) and ``cluster_size`` from which training recomputes it; encoding and decoding
read ``embed`` only. Files written without them (``anygpt.demo.ship``) load through :func:`fill_codebook_stats`,
which restarts the statistics from the codebook (``embed_avg = embed``, ``cluster_size = 1``: the codebook they
give back is ``embed`` itself), so strict loading, encoding and further training all work.
"""

from __future__ import annotations

import torch

STATS = ("embed_avg", "cluster_size")


def drop_codebook_stats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the ``...embed_avg`` / ``...cluster_size`` entries of codebooks that have an ``embed``."""
    def is_stat(key: str) -> bool:
        prefix, _, name = key.rpartition(".")
        return name in STATS and f"{prefix}.embed" in state

    return {k: v for k, v in state.items() if not is_stat(k)}


def fill_codebook_stats(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the codebook statistics that ``expected`` (a model's state dict) has and ``state`` lacks,
    restarted from the codebook of the same prefix. Other missing keys stay missing."""
    out = dict(state)
    for key, ref in expected.items():
        prefix, _, name = key.rpartition(".")
        embed = state.get(f"{prefix}.embed")
        if key in state or name not in STATS or embed is None:
            continue
        out[key] = embed.clone().to(ref.dtype) if name == "embed_avg" else torch.ones_like(ref)
    return out
