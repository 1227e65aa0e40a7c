"""Deprecated path: moved to ``anygpt.lm.decoding.quantize``. Importing it still works and warns once."""

from __future__ import annotations

import warnings

from anygpt.lm.decoding.quantize import is_quantized, quantize_backbone, storage_key

__all__ = ["is_quantized", "quantize_backbone", "storage_key"]

warnings.warn("anygpt.lm.quantize has moved to anygpt.lm.decoding.quantize; import it from there", DeprecationWarning, stacklevel=2)
