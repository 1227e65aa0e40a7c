"""Tensor-only sampling for a decode loop that stays on the device: no host sync, no per-row Python.

Every function takes per-row tensors (one preset per row) and uses no data-dependent Python branch, so a
step can be captured in a CUDA graph or compiled. Randomness is a counter-based hash of (seed, step, token
id): a row's draws depend only on its own seed and step, on any device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from anygpt.lm.decoding.presets import GenerationPreset

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, m: int) -> torch.Tensor:
    """``x * m mod 2**32`` for ``0 <= x < 2**32`` without int64 overflow (m split into 16-bit halves)."""
    return (x * (m & 0xFFFF) + (((x * (m >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (Wellons' lowbias32) on non-negative int64 values below 2**32."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hash_uniform(seeds: torch.Tensor, step: torch.Tensor | int, vocab: int) -> torch.Tensor:
    """Counter-based uniforms in the open interval (0, 1), a pure function of (seed, step, index).

    Args:
        seeds: LongTensor ``[B]``, one seed per row (any int64 value).
        step: LongTensor, 0-dim or ``[B]`` (the decode step of each row).
        vocab: Number of uniforms per row.

    Returns:
        FloatTensor ``[B, vocab]`` of multiples of 2**-24 in [2**-24, 1 - 2**-24]; identical on every device.
    """
    seeds = seeds.long()
    step = torch.as_tensor(step, dtype=torch.long, device=seeds.device)
    key = _mix32((seeds & _M32) ^ 0x9E3779B9)
    key = _mix32(key ^ ((seeds >> 32) & _M32))  # arithmetic shift, masked: the high half's bits
    key = _mix32(key ^ (step & _M32))
    key = _mix32(key ^ ((step >> 32) & _M32))[:, None]
    index = _mix32(torch.arange(vocab, dtype=torch.long, device=seeds.device) ^ 0x85EBCA6B)
    bits = _mix32((_mix32(key ^ index) + key) & _M32) >> 9  # 23 bits
    return (2 * bits + 1).float() * 2.0 ** -24


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """transformers' repetition penalty: seen logits below zero are multiplied by the penalty, others divided.

    Args:
        logits: ``[B, V]`` float logits.
        seen: ``[B, V]`` bool, True where the token already occurs in the row's sequence.
        penalty: ``[B]`` penalty of each row (1.0 is off).
    """
    penalty = penalty.to(logits.dtype)[:, None]
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def filter_logits(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                  top_p: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Temperature, then top-k, then top-p per row, as ``generation._filter_logits`` (dropped entries -inf).

    Args:
        logits: ``[B, V]`` float logits (penalised already where a penalty applies).
        temperature: ``[B]`` (1.0 for greedy rows).
        top_k: ``[B]`` long, 0 keeps all.
        top_p: ``[B]``, 1.0 keeps all.
        width: Candidates ranked per row: None sorts the whole vocabulary; an int ``K`` ranks only the ``K`` best
            (a top-k pass instead of a sort), which is exact when every row has ``0 < top_k <= K`` or keeps
            all with ``top_k == 0`` and ``top_p == 1`` (see ``filter_width``).
    """
    vocab = logits.shape[1]
    logits = logits / temperature.to(logits.dtype)[:, None]
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab).long()
    if width is None:
        ordered, order = logits.sort(dim=1, descending=True)
        kth = ordered.gather(1, (k - 1)[:, None])
    else:
        ordered, order = logits.topk(min(width, vocab), dim=1)
        last = ordered.gather(1, (k - 1).clamp(max=ordered.shape[1] - 1)[:, None])
        kth = torch.where((top_k > 0)[:, None], last, float("-inf"))
    logits = logits.masked_fill(logits < kth, float("-inf"))
    # The ranked top-k result is the ranked logits with the same cut: one ranking serves both filters.
    ordered = ordered.masked_fill(ordered < kth, float("-inf"))
    probs = ordered.softmax(dim=1)
    top_p = top_p.to(probs.dtype)[:, None]
    drop = ((probs.cumsum(dim=1) - probs) >= top_p) & (top_p < 1)  # rounding must not cut rows with p = 1
    drop[:, 0] = False
    return logits.masked_fill(torch.zeros_like(logits, dtype=torch.bool).scatter(1, order, drop), float("-inf"))


def filter_width(presets: Sequence[GenerationPreset], vocab: int) -> int | None:
    """The ``width`` of ``filter_logits`` for these rows: the largest top-k, or None where a row needs the whole
    vocabulary ranked (top-p over all tokens)."""
    if any((p.top_k == 0 or p.top_k >= vocab) and p.top_p < 1 for p in presets):
        return None
    return max([min(p.top_k, vocab) for p in presets if p.top_k > 0] or [1])


def sample(logits: torch.Tensor, do_sample: torch.Tensor, seeds: torch.Tensor,
           step: torch.Tensor | int) -> torch.Tensor:
    """One token per row: Gumbel-max over ``hash_uniform`` where ``do_sample``, argmax elsewhere.

    Args:
        logits: ``[B, V]`` filtered float logits (-inf where excluded).
        do_sample: ``[B]`` bool.
        seeds: ``[B]`` long seeds.
        step: 0-dim or ``[B]`` long decode step.

    Returns:
        LongTensor ``[B]``; a row that is all -inf gets some index, never an error.
    """
    u = hash_uniform(seeds, step, logits.shape[1])
    gumbel = -torch.log(-torch.log(u))  # finite: u is never 0 or 1
    scores = torch.where(do_sample[:, None], logits + gumbel.to(logits.dtype), logits)
    return scores.argmax(dim=1)


@dataclass
class SamplingParams:
    """Per-row sampling tensors of a batch (see ``sampling_tensors``)."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    penalty: torch.Tensor
    do_sample: torch.Tensor

    @classmethod
    def from_presets(cls, presets: Sequence[GenerationPreset], device=None) -> SamplingParams:
        """Tensors of one preset per row; greedy rows get temperature 1.0 as ``_filter_logits`` does."""
        def tensor(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device)

        return cls(
            temperature=tensor([p.temperature if p.do_sample else 1.0 for p in presets], torch.float32),
            top_k=tensor([p.top_k for p in presets], torch.long),
            top_p=tensor([p.top_p for p in presets], torch.float32),
            penalty=tensor([p.repetition_penalty for p in presets], torch.float32),
            do_sample=tensor([p.do_sample for p in presets], torch.bool),
        )


def sampling_tensors(presets: Sequence[GenerationPreset], device=None) -> dict[str, torch.Tensor]:
    """``{temperature, top_k, top_p, penalty, do_sample}``: ``[B]`` tensors on ``device``, one preset per row."""
    params = SamplingParams.from_presets(presets, device)
    return {f.name: getattr(params, f.name) for f in fields(params)}
