"""Round-trip consistency of a speech codec: decoded audio, encoded again, should give back the codes it came from.

A language model that writes RVQ level-1 codes and a recogniser that reads them only agree when the codec's decoder
makes audio that its encoder maps to the same codes. ``level_one_cycle`` scores that: the re-encoded frames'
squared distances to the level-1 codebook are the logits (the encoder's own nearest-code rule), in units of the
codebook's spread so that the loss does not depend on the embedding's scale, the original codes the targets. Its
gradient reaches the decoder through the encoder, frozen or not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["code_logits", "level_one_cycle"]


def code_logits(layer: nn.Module, embedding: torch.Tensor) -> torch.Tensor:
    """Negative squared distances ``[B, T, K]`` of ``embedding [B, D, T]`` to the codes of one RVQ level (a
    ``speechtokenizer`` ``VectorQuantization``), over the codes' total variance: their argmax is that level's
    ``encode``."""
    frames = layer.project_in(embedding.transpose(1, 2))
    embed = layer._codebook.embed
    distances = frames.pow(2).sum(-1, keepdim=True) - 2 * frames @ embed.t() + embed.pow(2).sum(-1)
    return -distances / embed.var(0).sum().detach().clamp_min(1e-12)


def level_one_cycle(model: nn.Module, wave: torch.Tensor, codes: torch.Tensor,
                    valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode ``wave [B, L]`` again with ``model`` (a ``SpeechTokenizer``) and compare with level-1 ``codes [B, T]``.

    Args:
        model: The SpeechTokenizer whose encoder and first RVQ level re-encode the audio.
        wave: Decoded audio, with its graph (the loss trains what made it).
        codes: The level-1 codes the audio was decoded from.
        valid: ``[B, T]`` frames that hold audio; the others are left out.

    Returns:
        The cross-entropy of the re-encoded frames against ``codes`` and the share of frames re-encoded to the same
        code (detached).
    """
    embedding = model.encoder(wave.unsqueeze(1))
    logits = code_logits(model.quantizer.vq.layers[0], embedding)
    frames = min(logits.shape[1], codes.shape[1])
    logits, codes, valid = logits[:, :frames], codes[:, :frames], valid[:, :frames]
    if not valid.any():
        return logits.sum() * 0, logits.new_zeros(())
    picked, target = logits[valid], codes[valid]
    agreement = (picked.argmax(-1) == target).float().mean().detach()
    return F.cross_entropy(picked.float(), target), agreement
