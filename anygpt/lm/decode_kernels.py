"""Deprecated path: moved to ``anygpt.lm.decoding.kernels``. Importing it still works and warns once."""

from __future__ import annotations

import warnings

from anygpt.lm.decoding.kernels import COMPILED, kernels

__all__ = ["COMPILED", "kernels"]

warnings.warn("anygpt.lm.decode_kernels has moved to anygpt.lm.decoding.kernels; import it from there", DeprecationWarning, stacklevel=2)
