"""The decoding room's modules moved out of ``anygpt.lm`` (and ``anygpt.decoders.cuda_graphs`` to the top): the old
paths still import the very same objects, with a deprecation warning that names the new home."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

MOVED = {
    "anygpt.lm.generation": ("anygpt.lm.decoding.loop", "generate"),
    "anygpt.lm.fast_decode": ("anygpt.lm.decoding.fast", "fast_generate"),
    "anygpt.lm.decode_kernels": ("anygpt.lm.decoding.kernels", "kernels"),
    "anygpt.lm.gpu_grammar": ("anygpt.lm.decoding.gpu_grammar", "GrammarTensors"),
    "anygpt.lm.gpu_sampling": ("anygpt.lm.decoding.gpu_sampling", "sample"),
    "anygpt.lm.quantize": ("anygpt.lm.decoding.quantize", "quantize_backbone"),
    "anygpt.decoders.cuda_graphs": ("anygpt.cuda_graphs", "GraphCache"),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_imports_the_same_objects_and_warns(old):
    new, name = MOVED[old]
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
    home = "anygpt.lm.decoding" if old == "anygpt.lm.generation" else new  # generation split into three modules
    assert any(issubclass(w.category, DeprecationWarning) and home in str(w.message) for w in caught)


def test_presets_keep_their_public_home_in_generation():
    import anygpt.lm.decoding.presets as presets
    from anygpt.lm.generation import DEFAULT_PRESETS, GenerationPreset, SpanGrammar, build_presets, span_ranges

    assert DEFAULT_PRESETS is presets.DEFAULT_PRESETS and GenerationPreset is presets.GenerationPreset
    assert build_presets is presets.build_presets and SpanGrammar and span_ranges
