"""Deprecated path: moved to ``anygpt.lm.decoding (presets, grammar, loop)``. Importing it still works and warns once."""

from __future__ import annotations

import warnings

from anygpt.lm.decoding.grammar import SpanGrammar, span_ranges
from anygpt.lm.decoding.loop import generate
from anygpt.lm.decoding.presets import DEFAULT_PRESETS, GenerationPreset, build_presets

__all__ = ["DEFAULT_PRESETS", "GenerationPreset", "SpanGrammar", "build_presets", "generate", "span_ranges"]

warnings.warn("anygpt.lm.generation has moved to anygpt.lm.decoding; import it from there", DeprecationWarning, stacklevel=2)
