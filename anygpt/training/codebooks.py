"""Codebook tools shared by the RVQ codec trainers: usage statistics and the upkeep of EMA codebooks.

Usage: per RVQ level, a histogram of the codes picked; its perplexity ``exp(entropy)`` (K when every code is used
equally, 1 when one code takes everything) and the number of live codes (used at least once).

EMA codebooks (Encodec's ``EuclideanCodebook``, which the ``speechtokenizer`` package copies: buffers ``inited``,
``cluster_size``, ``embed``, ``embed_avg``). Read from ``speechtokenizer/quantization/core_vq.py``:

- k-means init works as advertised: while ``inited`` is 0, the first ``forward`` (train or eval mode) runs k-means
  (``kmeans_iters``, 50 in SpeechTokenizer) on that batch, level by level down the residual stack.
  ``reset_for_kmeans`` arms it again.
- dead-code expiry does not: ``expire_codes_`` writes batch vectors into ``embed``, but the same step then
  overwrites ``embed`` with ``embed_avg / cluster_size``, where the dead code keeps its old statistics, so the
  replacement is lost and a dead code stays dead. ``restart_dead_codes`` replaces ``embed``, ``embed_avg`` and
  ``cluster_size`` together; ``configure_ema`` turns the package's no-op expiry off.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import Metric

_BUFFERS = ("inited", "cluster_size", "embed", "embed_avg")


def ema_codebooks(model: nn.Module) -> list[nn.Module]:
    """The EMA codebooks of ``model``, in module order (RVQ level 1 first)."""
    books = [m for m in model.modules() if all(hasattr(m, name) for name in _BUFFERS)]
    return [m for m in books if isinstance(m.embed, torch.Tensor) and m.embed.dim() == 2]


def configure_ema(books: list[nn.Module], decay: float | None = None, kmeans_iters: int | None = None) -> None:
    """Set the EMA decay and k-means iterations, and turn off the built-in dead-code expiry (see the module doc)."""
    for book in books:
        if decay is not None:
            book.decay = float(decay)
        if kmeans_iters is not None:
            book.kmeans_iters = int(kmeans_iters)
        book.threshold_ema_dead_code = 0


def reset_for_kmeans(books: list[nn.Module]) -> None:
    """Make the next forward pass initialise every codebook by k-means on its batch."""
    for book in books:
        book.inited.fill_(0)


@torch.no_grad()
def restart_dead_codes(book: nn.Module, samples: torch.Tensor, threshold: float) -> int:
    """Re-seed the codes whose EMA ``cluster_size`` is below ``threshold`` with random rows of ``samples``.

    Args:
        book: An EMA codebook.
        samples: Vectors ``[N, D]`` this codebook quantised in the current batch (its residual inputs).
        threshold: EMA count (roughly uses per step) below which a code counts as dead; 0 turns restarts off.

    Returns:
        The number of codes re-seeded. A restarted code gets ``cluster_size = threshold`` and a matching
        ``embed_avg``, so the next EMA update keeps it where it was put.
    """
    if threshold <= 0 or samples.shape[0] == 0:
        return 0
    dead = book.cluster_size < threshold
    count = int(dead.sum())
    if count == 0:
        return 0
    samples = samples.detach().to(book.embed.dtype)
    picks = torch.randint(0, samples.shape[0], (count,), device=samples.device)
    fresh = samples[picks]
    book.embed[dead] = fresh
    book.embed_avg[dead] = fresh * threshold
    book.cluster_size[dead] = threshold
    return count


def histogram(codes: torch.Tensor, codebook_size: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Counts ``[levels, K]`` of codes ``[levels, B, T]``, over the frames where ``valid [B, T]`` is True."""
    codes = codes.reshape(codes.shape[0], -1)
    weights = torch.ones_like(codes, dtype=torch.float32)
    if valid is not None:
        weights = valid.reshape(1, -1).expand_as(codes).to(torch.float32)
    return torch.zeros(codes.shape[0], codebook_size, device=codes.device).scatter_add_(1, codes.long(), weights)


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """``exp(entropy)`` of each row of a histogram ``[levels, K]``: from 1 (one code) to K (uniform use)."""
    p = counts / counts.sum(-1, keepdim=True).clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
    return entropy.exp()


def live_codes(counts: torch.Tensor) -> torch.Tensor:
    """Number of codes used at least once, per level."""
    return (counts > 0).sum(-1)


class CodebookUsage(Metric):
    """Accumulated code histograms per RVQ level (summed across processes).

    Args:
        levels: RVQ levels.
        codebook_size: Codes per level.
    """

    full_state_update = False

    def __init__(self, levels: int, codebook_size: int):
        super().__init__()
        self.codebook_size = codebook_size
        self.add_state("counts", torch.zeros(levels, codebook_size), dist_reduce_fx="sum")

    def update(self, codes: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Add codes ``[levels, B, T]`` (frames where ``valid [B, T]`` is True)."""
        self.counts += histogram(codes, self.codebook_size, valid).to(self.counts)

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"perplexity": [levels], "live": [levels]}``."""
        return {"perplexity": perplexity(self.counts), "live": live_codes(self.counts).float()}
