"""Reply grammar as tensors: mask, state and segment follow the Python ``ReplyGrammar`` along random replies."""

from __future__ import annotations

import pytest
import torch

from anygpt.lm.decoding.gpu_reply import ReplyTensors
from anygpt.lm.decoding.grammar import ReplyGrammar, _grammar_mask
from anygpt.lm.decoding.presets import GenerationPreset
from tests.lm.decoding.test_gpu_grammar import (IMAGE, MUSIC, SMALL, SPEECH, STOPS, VOCAB, ImageLike, Irregular,
                                                MusicLike, SpeechLike, ThreeSlots, random_legal_tokens)

RANGES = {"image": IMAGE, "speech": SPEECH, "music": MUSIC, "small": SMALL}
CODECS = {"image": ImageLike(), "speech": SpeechLike(), "music": MusicLike(), "small": ThreeSlots()}
PRESETS = {"text": GenerationPreset(temperature=0.7), "speech": GenerationPreset(temperature=1.0, top_k=5),
           "music": GenerationPreset(temperature=1.1)}


def _rows():
    def reply(**kw):
        return ReplyGrammar(RANGES, CODECS, PRESETS, STOPS, [(0, 100)], **kw)

    return [reply(), reply(require=["speech"]), reply(require=["music", "small"]), reply(enforce=False),
            reply(require=["image"], enforce=False), reply(require=["speech"])]


def _python_mask(grammars):
    mask = _grammar_mask(grammars, VOCAB, "cpu")
    return torch.ones(len(grammars), VOCAB, dtype=torch.bool) if mask is None else mask


def _python_state(grammars):
    order = list(RANGES)
    return ([{"text": 0, "span": 2, "done": 3}[g.state] for g in grammars],
            [order.index(g.modality) if g.state == "span" else -1 for g in grammars],
            [[g.done[m] for m in order] for g in grammars],
            [g.span_codes if g.state == "span" else None for g in grammars])


def _state(rt):
    phases = rt.phase.tolist()
    codes = [c if p == 2 else None for p, c in zip(phases, rt.span_codes.tolist())]
    return phases, [m if p == 2 else -1 for p, m in zip(phases, rt.modality.tolist())], rt.spans.tolist(), codes


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mask_state_and_segment_follow_the_python_grammar(seed):
    gen = torch.Generator().manual_seed(seed)
    grammars = _rows()
    rt = ReplyTensors.from_grammars(grammars, VOCAB, "cpu")
    assert rt is not None and rt.modalities == list(RANGES)
    storage = [t.data_ptr() for t in (rt.phase, rt.modality, rt.span_codes, rt.spans)]
    tags = torch.tensor([*STOPS, *(r.bos for r in RANGES.values()), *(r.eos for r in RANGES.values())])
    seen_spans = 0
    for step in range(400):
        expected = _python_mask(grammars)
        assert torch.equal(rt.mask(), expected), step
        assert rt.finished().tolist() == [g.finished for g in grammars]
        assert _state(rt) == _python_state(grammars), step
        segments = rt.segment().tolist()
        assert [rt.presets[s] for s in segments] == [g.preset for g in grammars]
        if step in (15, 60):  # built mid-reply, from the current state
            assert torch.equal(ReplyTensors.from_grammars(grammars, VOCAB, "cpu").mask(), expected)
        if all(g.finished for g in grammars):
            break
        chances = [0.3 if g.state == "text" else 0.04 for g in grammars]  # open spans often, close them sometimes
        tokens = random_legal_tokens(expected, tags, chances, gen)
        live = ~rt.finished() & (torch.rand(len(grammars), generator=gen) < 0.9)
        for g, token, on in zip(grammars, tokens.tolist(), live.tolist()):
            if on:
                g.step(token)
        rt.advance(tokens, live)
        seen_spans = max(seen_spans, int(rt.spans.sum()))
    assert sum(g.finished for g in grammars) >= 3 and seen_spans >= 3
    assert storage == [t.data_ptr() for t in (rt.phase, rt.modality, rt.span_codes, rt.spans)]


def test_a_spoken_reply_cannot_stop_before_its_speech_span():
    [grammar] = rows = [ReplyGrammar(RANGES, CODECS, PRESETS, STOPS, [(0, 100)], require=["speech"])]
    rt = ReplyTensors.from_grammars(rows, VOCAB, "cpu")
    assert not rt.mask()[0, STOPS].any() and rt.mask()[0, SPEECH.bos]
    for token in [5, SPEECH.bos, SPEECH.start + 3, SPEECH.start + 9, SPEECH.eos]:
        assert rt.mask()[0, token]
        grammar.step(token)
        rt.advance(torch.tensor([token]), torch.tensor([True]))
    assert rt.mask()[0, STOPS].all() and rt.spans[0].tolist() == [0, 1, 0, 0]
    rt.advance(torch.tensor([STOPS[0]]), torch.tensor([True]))
    assert rt.finished().tolist() == [True] and rt.mask().all()


def test_replies_that_cannot_be_expressed_give_none():
    ok = ReplyGrammar(RANGES, CODECS, PRESETS, STOPS, [(0, 100)])
    irregular = {**CODECS, "speech": Irregular()}
    assert ReplyTensors.from_grammars([ok, ReplyGrammar(RANGES, irregular, PRESETS, STOPS, [(0, 100)])],
                                      VOCAB, "cpu") is None  # another codec than the first row's
    assert ReplyTensors.from_grammars([ReplyGrammar(RANGES, irregular, PRESETS, STOPS, [(0, 100)])],
                                      VOCAB, "cpu") is None  # not a table of layer ranges
    assert ReplyTensors.from_grammars([ReplyGrammar(RANGES, irregular, PRESETS, STOPS, [(0, 100)], enforce=False)],
                                      VOCAB, "cpu") is not None  # never asked
    assert ReplyTensors.from_grammars([ok, ReplyGrammar(RANGES, CODECS, PRESETS, STOPS[:1], [(0, 100)])],
                                      VOCAB, "cpu") is None
    assert ReplyTensors.from_grammars([], VOCAB, "cpu") is None
