"""Pieces of SEED-2 stage-2 training (``SeedTrainer``): the straight-through VQ, the reconstruction head on
quantised vectors, and dead-code restarts.

The image head is the inference model's own (``SeedQuantizer.image_features``, which ``codebook_entry`` runs); the
reconstruction head is the reference's ``get_recon`` path (``pos_embed`` + ``blocks``, unused at inference). Both
take decoded vectors instead of ids, so that gradient reaches the codebook and ``encode_task_layer``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from anygpt.tokenizers.seed.model import SeedQuantizer, VectorQuantizer, fit_codebook, random_state

#: Parameters of the frozen encoder side (stage 1): the ViT, ``ln_vision``, the causal Q-Former, its queries.
FROZEN_PREFIXES = ("visual_encoder.", "ln_vision.", "Qformer.", "query_tokens")
#: Parameters after the encoder side that decide the codes: the projection to the codebook space and the codebook.
CODE_PREFIXES = ("encode_task_layer.", "quantize.")


def redraw_stage2(model: SeedQuantizer, seed: int) -> None:
    """Give the stage-2 parts (everything outside ``FROZEN_PREFIXES``) fresh random weights, as a random codec's
    (``random_state``), and fit the codebook to the z of the kept encoder (``fit_codebook``)."""
    keys = [k for k in model.state_dict() if not k.startswith(FROZEN_PREFIXES)]
    device = model.query_tokens.device
    with torch.no_grad():
        for key, value in random_state(model, keys, seed, device).items():
            model.get_parameter(key).copy_(value)
    fit_codebook(model, seed, device)


def quantize_st(quantizer: VectorQuantizer, z: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest codes of ``z [B, Q, D]`` with a straight-through gradient and the VQ loss.

    The loss is taming's ``VectorQuantizer2(legacy=True)``, as SEED trains it: ``mean|z - sg(e)|^2 + beta *
    mean|e - sg(z)|^2`` (commitment weight 1, codebook weight ``beta``).

    Returns:
        ``(quantised [B, Q, D] = z + sg(e - z), ids [B, Q], loss)``.
    """
    ids = quantizer(z.detach().float())
    entries = quantizer.embedding(ids)
    loss = F.mse_loss(z.float(), entries.detach().float()) + beta * F.mse_loss(entries.float(), z.detach().float())
    return z + (entries - z).detach(), ids, loss


def recon_from_decoded(model: SeedQuantizer, decoded: Tensor) -> Tensor:
    """The reconstruction head: ``blocks(decoded + pos_embed)``, ``[B, Q, qformer_hidden]`` (compared with q)."""
    x = decoded + model.pos_embed.expand(decoded.shape[0], -1, -1)
    for block in model.blocks:
        x = block(x)
    return x


@torch.no_grad()
def restart_codes(book: Tensor, usage: Tensor, ids: Tensor, z: Tensor, threshold: float, decay: float = 0.9) -> int:
    """Update the EMA use count of each code and move codes used less than ``threshold`` onto batch vectors.

    Args:
        book: The codebook ``[K, D]`` (changed in place).
        usage: EMA of each code's uses per step ``[K]`` (changed in place); a restarted code gets ``threshold + 1``.
        ids: This step's codes (any shape).
        z: This step's encoder vectors ``[..., D]``, one per id.
        threshold: Restart below this EMA count.
        decay: EMA decay of the counts.

    Returns:
        How many codes restarted (at most one per batch vector). Draws from the global RNG; with several processes
        the draws differ per process, so use it on one device (or keep it off).
    """
    counts = torch.bincount(ids.reshape(-1), minlength=usage.numel()).to(usage)
    usage.mul_(decay).add_(counts, alpha=1 - decay)
    dead = torch.nonzero(usage < threshold).flatten()
    samples = z.detach().reshape(-1, z.shape[-1]).to(book)
    if dead.numel() == 0 or samples.shape[0] == 0:
        return 0
    dead = dead[torch.randperm(dead.numel(), device=dead.device)[:samples.shape[0]]]
    picks = torch.randint(0, samples.shape[0], (dead.numel(),), device=samples.device)
    spread = samples.std(0, keepdim=True) * 0.01 if samples.shape[0] > 1 else 0.0
    book[dead] = samples[picks] + spread * torch.randn_like(samples[picks])
    usage[dead] = threshold + 1.0
    return int(dead.numel())
