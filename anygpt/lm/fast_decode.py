"""Deprecated path: moved to ``anygpt.lm.decoding.fast``. Importing it still works and warns once."""

from __future__ import annotations

import warnings

from anygpt.lm.decoding.fast import BUCKET, StaticLlama, fast_generate, left_padded, release

__all__ = ["BUCKET", "StaticLlama", "fast_generate", "left_padded", "release"]

warnings.warn("anygpt.lm.fast_decode has moved to anygpt.lm.decoding.fast; import it from there", DeprecationWarning, stacklevel=2)
