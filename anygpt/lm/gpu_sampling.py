"""Deprecated path: moved to ``anygpt.lm.decoding.gpu_sampling``. Importing it still works and warns once."""

from __future__ import annotations

import warnings

from anygpt.lm.decoding.gpu_sampling import (filter_logits, filter_width, hash_uniform, penalize_repeats, sample,
                                          sampling_tensors)

__all__ = ["filter_logits", "filter_width", "hash_uniform", "penalize_repeats", "sample", "sampling_tensors"]

warnings.warn("anygpt.lm.gpu_sampling has moved to anygpt.lm.decoding.gpu_sampling; import it from there", DeprecationWarning, stacklevel=2)
