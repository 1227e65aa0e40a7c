"""Learning-rate schedules for ``anygpt fit``."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from anygpt import AnyGPTError


class WarmupCosine(LambdaLR):
    """Linear warm-up from 0, then cosine decay to ``min_lr_ratio`` of the peak (the original: 3 % warm-up, to 0).

    Stepped once per optimizer step (``UnifiedLM`` asks Lightning for ``interval: step``).

    Args:
        optimizer: The optimizer whose learning rates are the peaks.
        total_steps: Steps of the whole run (``trainer.max_steps``).
        warmup_ratio: Share of ``total_steps`` spent warming up, used when ``warmup_steps`` is None.
        warmup_steps: Warm-up steps; overrides ``warmup_ratio``.
        min_lr_ratio: Final learning rate as a share of the peak.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.03,
                 warmup_steps: int | None = None, min_lr_ratio: float = 0.0):
        if total_steps < 1 or not 0 <= warmup_ratio < 1 or not 0 <= min_lr_ratio <= 1:
            raise AnyGPTError(f"WarmupCosine: need total_steps >= 1, warmup_ratio in [0, 1), min_lr_ratio in [0, 1]; "
                              f"got {total_steps}, {warmup_ratio}, {min_lr_ratio}")
        warmup = math.ceil(warmup_ratio * total_steps) if warmup_steps is None else int(warmup_steps)
        self.total_steps, self.warmup_steps, self.min_lr_ratio = total_steps, warmup, min_lr_ratio
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        """Multiplier of the peak learning rate at ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
