"""What the trainers share about their arguments: key checks of the nested dicts that configs pass on, whether
LightningCLI builds the module, the warm-up + cosine scheduler entry, and the check of an image batch."""

from __future__ import annotations

import inspect
from typing import Any

from anygpt import AnyGPTError


def check_keys(section: str, spec: Any, *functions) -> dict:
    """``spec`` as a dict, checked to name only parameters of ``functions``.

    Raises:
        AnyGPTError: ``spec`` is not a mapping, or names an unknown key (the message lists the known ones).
    """
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise AnyGPTError(f"model.init_args.{section} must be a mapping of arguments, got {type(spec).__name__}")
    known = {name for fn in functions for name, p in inspect.signature(fn).parameters.items()
             if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self", "cls"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise AnyGPTError(f"model.init_args.{section}: unknown key {unknown[0]!r}; known keys: "
                          f"{', '.join(sorted(known))}")
    return dict(spec)


def warmup_schedule(optimizer, trainer, warmup_steps: int, min_lr_ratio: float) -> dict:
    """Lightning's scheduler entry: linear warm-up over ``warmup_steps``, then a cosine from the peak to
    ``min_lr_ratio`` of it at ``trainer.max_steps`` (1.0: constant after the warm-up)."""
    from anygpt.lm.schedules import WarmupCosine

    total = trainer.max_steps if trainer is not None and trainer.max_steps and trainer.max_steps > 0 else None
    if total is None and min_lr_ratio < 1:
        raise AnyGPTError("min_lr_ratio < 1 decays the learning rate until trainer.max_steps: set max_steps")
    schedule = WarmupCosine(optimizer, max(total or 1, warmup_steps + 1), warmup_steps=warmup_steps,
                            min_lr_ratio=min_lr_ratio)
    return {"scheduler": schedule, "interval": "step"}


def from_cli() -> bool:
    """Whether the module being built is instantiated by LightningCLI (its hparams are then the config's, where
    modules are ``class_path`` entries, not objects)."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # a Lightning without it: treat as built in Python
        return False
    return _given_hyperparameters.get() is not None


def check_images(images) -> None:
    """Raises ``AnyGPTError`` unless ``images`` is a float ``[B, 3, H, W]`` tensor."""
    from torch import Tensor

    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise AnyGPTError(f"images must be a float [batch, 3, height, width] tensor in [0, 1], got {shape}")
