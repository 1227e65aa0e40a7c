"""Deprecated path of ``anygpt.tokenizers.vocab``, where the vocabulary types now live (below the codecs that
register into them). Importing it still works and warns once; the names are the same objects."""

from __future__ import annotations

import warnings

from anygpt.tokenizers.vocab import SPECIALS, TokenRange, VocabLayout

__all__ = ["SPECIALS", "TokenRange", "VocabLayout"]

warnings.warn("anygpt.lm.vocab has moved to anygpt.tokenizers.vocab; import it from there", DeprecationWarning,
              stacklevel=2)
