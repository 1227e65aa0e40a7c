"""Codebook training statistics: left out of shipped files, restarted from the codebook when loading."""

from __future__ import annotations

import torch

from anygpt.tokenizers.codebook_state import drop_codebook_stats, fill_codebook_stats


def test_dropped_stats_come_back_as_a_restart_that_keeps_the_codebook():
    torch.manual_seed(0)
    full = {"vq.layers.0._codebook.embed": torch.randn(16, 4), "vq.layers.0._codebook.embed_avg": torch.randn(16, 4),
            "vq.layers.0._codebook.cluster_size": torch.rand(16) * 9, "vq.layers.0._codebook.inited": torch.ones(1),
            "encoder.cluster_size": torch.ones(3)}  # not a codebook's (no .embed beside it): kept
    slim = drop_codebook_stats(full)
    assert set(slim) == {"vq.layers.0._codebook.embed", "vq.layers.0._codebook.inited", "encoder.cluster_size"}
    filled = fill_codebook_stats(slim, full)
    assert set(filled) == set(full)
    # the codebook an EMA quantizer recomputes from its statistics (Laplace-smoothed, as SpeechTokenizer and
    # Encodec do) is the codebook itself
    size, avg = filled["vq.layers.0._codebook.cluster_size"], filled["vq.layers.0._codebook.embed_avg"]
    eps, n = 1e-5, size.sum()
    smoothed = (size + eps) / (n + 16 * eps) * n
    torch.testing.assert_close(avg / smoothed[:, None], full["vq.layers.0._codebook.embed"], atol=1e-4, rtol=1e-4)
    assert fill_codebook_stats({"other": torch.zeros(1)}, full) == {"other": torch.zeros(1)}  # nothing to restart from
