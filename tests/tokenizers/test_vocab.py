"""VocabLayout: the released AnyGPT ids (DESIGN.md, pipeline §1) and the string form of spans."""

from __future__ import annotations

import pytest
import torch

from anygpt import AnyGPTError
from anygpt.tokenizers.vocab import VocabLayout

MODALITIES = [("image", "👀", 8192, "<soim>", "<eoim>"), ("speech", "🗣️", 1024, "<sosp>", "<eosp>"),
              ("music", "🎶", 8192, "<somu>", "<eomu>")]


class _Codec:
    def __init__(self, modality, token_prefix, vocab_size, start_tag, end_tag):
        self.modality, self.token_prefix, self.vocab_size = modality, token_prefix, vocab_size
        self.start_tag, self.end_tag = start_tag, end_tag


def released_layout() -> VocabLayout:
    layout = VocabLayout(32000)
    for spec in MODALITIES:
        layout.register(*spec)
    return layout


def test_released_ids():
    layout = released_layout()
    assert [layout.token_id(t) for t in ("[Human]", "[MMGPT]", "<eoh>", "<eos>")] == [32000, 32001, 32002, 32003]
    image, speech, music = (layout.ranges[m] for m in ("image", "speech", "music"))
    assert (image.start, image.stop - 1, image.bos, image.eos) == (32004, 40195, 40196, 40197)
    assert (speech.start, speech.stop - 1, speech.bos, speech.eos) == (40198, 41221, 41222, 41223)
    assert (music.start, music.stop - 1, music.bos, music.eos) == (41224, 49415, 49416, 49417)
    assert layout.token_id("<🗣️0>") == 40198 and layout.token_id("<🎶8191>") == 49415
    assert layout.token_id("<soim>") == 40196 and layout.token_id("<eomu>") == 49417
    assert len(layout) == 49418
    assert layout.add_token("<-Res->") == 49418 and layout.add_token("<-Ins->") == 49419
    assert layout.add_token("<eos>") == 32003 and len(layout) == 49420
    strings = layout.token_strings()
    assert len(strings) == 49420 - 32000 and strings[0] == "[Human]" and strings[-1] == "<-Ins->"


def test_ranges_are_disjoint_and_map_codes():
    layout = released_layout()
    spans = sorted((r.start, r.eos) for r in layout.ranges.values())
    assert all(a_end < b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    music = layout.ranges["music"]
    codes = torch.tensor([0, 2048, 4096, 8191])
    assert music.to_lm(codes).tolist() == [41224, 43272, 45320, 49415]
    assert music.from_lm(music.to_lm(codes)).tolist() == codes.tolist()
    assert layout.modality_of(40197) == "image" and layout.modality_of(32003) is None
    with pytest.raises(AnyGPTError):
        music.to_lm([8192])
    with pytest.raises(AnyGPTError):
        music.from_lm([40196])


def test_string_form_is_an_exact_inverse():
    layout = released_layout()
    text = "<somu><🎶26><🎶2490><🎶4385><🎶7219><🎶2047><🎶8191><eomu>"
    ids = layout.ids_from_string(text)
    assert ids == [49416, 41250, 43714, 45609, 48443, 43271, 49415, 49417]
    assert layout.string_from_ids(ids) == text
    speech = "<sosp><🗣️0><🗣️1023><eosp>"
    assert layout.string_from_ids(layout.ids_from_string(speech)) == speech
    for foreign in ("<somu> <🎶1><eomu>", "<somu><🎶8192><eomu>", "hello<eoh>", "<🗣1>", "<👀-1>"):
        with pytest.raises(AnyGPTError):
            layout.ids_from_string(foreign)
    with pytest.raises(AnyGPTError):
        layout.string_from_ids([31999])


def test_from_tokenizer_reads_a_released_table():
    vocab = {t: 32000 + i for i, t in enumerate(released_layout().token_strings())}
    codecs = [_Codec(*spec) for spec in MODALITIES]
    layout = VocabLayout.from_tokenizer(vocab, codecs)
    assert len(layout) == 49418 and layout.ranges["speech"].start == 40198
    vocab.update({"<-Res->": 49418, "<-Ins->": 49419})
    assert len(VocabLayout.from_tokenizer(vocab, codecs)) == 49420


def test_from_tokenizer_rejects_a_non_contiguous_table():
    vocab = {t: 32000 + i for i, t in enumerate(released_layout().token_strings())}
    codecs = [_Codec(*spec) for spec in MODALITIES]
    gap = dict(vocab, **{"<🗣️5>": 60000})
    with pytest.raises(AnyGPTError):
        VocabLayout.from_tokenizer(gap, codecs)
    swapped = dict(vocab, **{"<🗣️5>": vocab["<🗣️6>"], "<🗣️6>": vocab["<🗣️5>"]})
    with pytest.raises(AnyGPTError):
        VocabLayout.from_tokenizer(swapped, codecs)
    missing = {t: i for t, i in vocab.items() if t != "<👀100>"}
    with pytest.raises(AnyGPTError):
        VocabLayout.from_tokenizer(missing, codecs)
    with pytest.raises(AnyGPTError):
        VocabLayout.from_tokenizer({"hello": 5}, codecs)


def test_the_old_path_still_imports_the_same_types():
    import importlib
    import sys
    import warnings

    import anygpt.tokenizers.vocab as vocab

    sys.modules.pop("anygpt.lm.vocab", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("anygpt.lm.vocab")
    assert old.VocabLayout is vocab.VocabLayout and old.TokenRange is vocab.TokenRange
    assert any(issubclass(w.category, DeprecationWarning) and "anygpt.tokenizers.vocab" in str(w.message)
               for w in caught)
