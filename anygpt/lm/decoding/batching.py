"""Prompts of different lengths as one batch: left padding, so every row's next token is in the last column."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` ``[batch, longest]`` (on the CPU), each prompt at the right end."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p):] = torch.as_tensor(p)
        mask[i, width - len(p):] = 1
    return input_ids, mask
