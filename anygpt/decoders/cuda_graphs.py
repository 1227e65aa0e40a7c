"""Deprecated path: moved to ``anygpt.cuda_graphs``. Importing it still works and warns once."""

from __future__ import annotations

import warnings

from anygpt.cuda_graphs import GraphCache, capture

__all__ = ["GraphCache", "capture"]

warnings.warn("anygpt.decoders.cuda_graphs has moved to anygpt.cuda_graphs; import it from there", DeprecationWarning, stacklevel=2)
