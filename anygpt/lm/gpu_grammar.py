"""Deprecated path: moved to ``anygpt.lm.decoding.gpu_grammar``. Importing it still works and warns once."""

from __future__ import annotations

import warnings

from anygpt.lm.decoding.gpu_grammar import GrammarTensors

__all__ = ["GrammarTensors"]

warnings.warn("anygpt.lm.gpu_grammar has moved to anygpt.lm.decoding.gpu_grammar; import it from there", DeprecationWarning, stacklevel=2)
