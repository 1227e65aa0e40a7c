"""Training residual vector quantizers whose codebooks are EMA buffers (``embed``, ``embed_avg``, ``cluster_size``,
``inited``): the layout of transformers' Encodec and of SpeechTokenizer, whose inference modules keep them as they are.

``StraightThroughRVQ`` quantizes an encoder's output layer by layer as the inference ``encode`` does (nearest code of
the residual), and in training also: initialises a codebook by k-means on its first batch, moves each code toward
the mean of the vectors it wins (exponential moving averages with Laplace smoothing), replaces codes that win almost
nothing by vectors of the batch (dead-code restart), and returns the commitment loss. Each layer sees the residual
with the earlier layers' codes detached and one straight-through estimator covers the sum, so every layer's
commitment reaches the encoder (audiocraft's correction of Encodec's original loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anygpt.training.codebooks import restart_dead_codes


def kmeans(vectors: Tensor, clusters: int, iterations: int, generator: torch.Generator | None = None) -> Tensor:
    """Centroids ``[clusters, D]`` of ``vectors [N, D]`` (Lloyd's algorithm from random samples; with fewer vectors
    than clusters, samples repeat). An empty cluster keeps its previous centroid."""
    picks = torch.randint(len(vectors), (clusters,), generator=generator, device="cpu").to(vectors.device)
    if len(vectors) >= clusters:
        picks = torch.randperm(len(vectors), generator=generator, device="cpu")[:clusters].to(vectors.device)
    centroids = vectors[picks].clone()
    for _ in range(iterations):
        assign = torch.cdist(vectors, centroids).argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, vectors)
        counts = torch.bincount(assign, minlength=clusters).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids


class StraightThroughRVQ(nn.Module):
    """Training-time quantization over existing EMA codebook modules (they stay where the inference model has them).

    Args:
        codebooks: The codebook modules, one per level, each with ``embed [K, D]``, ``embed_avg``, ``cluster_size``
            and ``inited`` buffers (e.g. ``[layer.codebook for layer in encodec.quantizer.layers]``).
        decay: EMA decay of the codebooks (0.99 in audiocraft and SpeechTokenizer).
        epsilon: Laplace smoothing of the cluster sizes.
        dead_code_threshold: Codes whose EMA cluster size falls below it are replaced by batch vectors.
        kmeans_iterations: Lloyd iterations of the first-batch initialisation of a codebook whose ``inited`` is 0.
    """

    def __init__(self, codebooks: list[nn.Module], decay: float = 0.99, epsilon: float = 1e-5,
                 dead_code_threshold: float = 2.0, kmeans_iterations: int = 50):
        super().__init__()
        self.codebooks = list(codebooks)  # not submodules: their buffers belong to the inference model
        self.decay, self.epsilon = decay, epsilon
        self.dead_code_threshold, self.kmeans_iterations = dead_code_threshold, kmeans_iterations

    def reset(self) -> None:
        """Mark every codebook uninitialised: the next training batch initialises it by k-means (from scratch)."""
        for book in self.codebooks:
            book.inited.fill_(0)

    def forward(self, x: Tensor, levels: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Quantize ``x [B, D, T]`` with the first ``levels`` codebooks.

        Returns:
            The quantized sum ``[B, D, T]`` (straight-through: its gradient is the identity to ``x``), the codes
            ``[levels, B, T]`` and the mean commitment loss over the levels (MSE of each residual to its code).
        """
        batch, dim, frames = x.shape
        flat = x.permute(0, 2, 1).reshape(-1, dim)
        residual, total, codes, commit = flat, torch.zeros_like(flat), [], []
        for book in self.codebooks[: levels or len(self.codebooks)]:
            if self.training:
                self._update(book, residual.detach().float())
            embed = book.embed.to(residual.dtype)
            index = torch.cdist(residual.detach(), embed).argmin(dim=1)
            quantized = F.embedding(index, embed)
            commit.append(F.mse_loss(residual, quantized.detach()))
            total = total + quantized
            residual = residual - quantized.detach()
            codes.append(index.view(batch, frames))
        out = flat + (total - flat).detach()
        return out.view(batch, frames, dim).permute(0, 2, 1), torch.stack(codes), torch.stack(commit).mean()

    @torch.no_grad()
    def _update(self, book: nn.Module, vectors: Tensor) -> None:
        size = book.embed.shape[0]
        if not bool(book.inited.item()):
            centroids = kmeans(vectors, size, self.kmeans_iterations)
            book.embed.copy_(centroids)
            book.embed_avg.copy_(centroids)
            book.cluster_size.copy_(torch.bincount(torch.cdist(vectors, centroids).argmin(1), minlength=size).float())
            book.inited.fill_(1)
        index = torch.cdist(vectors, book.embed.float()).argmin(dim=1)
        counts = torch.bincount(index, minlength=size).float()
        sums = torch.zeros(size, vectors.shape[1], device=vectors.device).index_add_(0, index, vectors)
        book.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        book.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = book.cluster_size.sum()
        smoothed = (book.cluster_size + self.epsilon) / (total + size * self.epsilon) * total
        book.embed.copy_(book.embed_avg / smoothed.unsqueeze(1))
        restart_dead_codes(book, vectors, self.dead_code_threshold)
