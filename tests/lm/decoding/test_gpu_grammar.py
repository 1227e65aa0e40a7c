"""Tensor grammar: the mask and the state follow the Python ``SpanGrammar`` along random legal sequences."""

from __future__ import annotations

import pytest
import torch

from anygpt.lm.decoding.grammar import ReplyGrammar
from anygpt.lm.decoding.grammar import SpanGrammar, _grammar_mask
from anygpt.lm.decoding.presets import GenerationPreset
from anygpt.lm.decoding.gpu_grammar import GrammarTensors
from anygpt.tokenizers.vocab import VocabLayout
from anygpt.tokenizers.music import EncodecMusicCodec


class ImageLike:
    """32 codes of 8192, no ``can_end`` (the ``span_length`` rule applies)."""

    span_length = 32

    def allowed(self, position):
        return 0, 8192


class SpeechLike:
    span_length = None

    def allowed(self, position):
        return 0, 1024

    def can_end(self, length):
        return length > 0


class MusicLike:
    """``EncodecMusicCodec``'s own grammar methods (4 layers x 2048) without building its model."""

    span_length = None
    codebook_size, num_codebooks = 2048, 4
    allowed = EncodecMusicCodec.allowed
    can_end = EncodecMusicCodec.can_end


class ThreeSlots:
    span_length = 6

    def allowed(self, position):
        return [(0, 5), (5, 9), (9, 12)][position % 3]

    def can_end(self, length):
        return length > 0 and length % 3 == 0


LAYOUT = VocabLayout(base_size=100)
IMAGE = LAYOUT.register("image", "i", 8192, "<soim>", "<eoim>")
SPEECH = LAYOUT.register("speech", "s", 1024, "<sosp>", "<eosp>")
MUSIC = LAYOUT.register("music", "m", 8192, "<somu>", "<eomu>")
SMALL = LAYOUT.register("small", "x", 12, "<sox>", "<eox>")
VOCAB = len(LAYOUT)
STOPS = [2, LAYOUT.token_id("<eos>")]
SPACE = 9


def _rows():
    text = dict(stop_ids=STOPS)
    media = dict(stop_ids=STOPS, lead_in_ids=[SPACE])
    return [
        SpanGrammar(None, None, **text),
        SpanGrammar(None, None, **text, text_ranges=[(0, 100)], min_new_tokens=5),
        SpanGrammar(None, None, **text, min_new_tokens=3),
        SpanGrammar(None, None, **text, enforce=False, min_new_tokens=2),
        SpanGrammar(IMAGE, ImageLike(), **media),
        SpanGrammar(IMAGE, ImageLike(), **media, min_new_tokens=50, max_lead_in=0),
        SpanGrammar(IMAGE, ImageLike(), **media, enforce=False),
        SpanGrammar(SPEECH, SpeechLike(), **media, max_lead_in=2),
        SpanGrammar(SPEECH, SpeechLike(), **media, max_lead_in=0, min_new_tokens=6),
        SpanGrammar(MUSIC, MusicLike(), **media),
        SpanGrammar(MUSIC, MusicLike(), **media, min_new_tokens=7, max_lead_in=3),
        SpanGrammar(MUSIC, MusicLike(), **media, enforce=False, min_new_tokens=4),
        SpanGrammar(SMALL, ThreeSlots(), **media, min_new_tokens=4),
    ]


def random_legal_tokens(mask, tags, chances, gen):
    """One legal token per row of ``mask``: with the row's chance one of the ``tags`` it allows, else any it allows."""
    tokens = torch.empty(len(mask), dtype=torch.long)
    for i, (row, chance) in enumerate(zip(mask, chances)):
        forced = tags[row[tags]]
        legal = forced if len(forced) and torch.rand(1, generator=gen) < chance else row.nonzero()[:, 0]
        tokens[i] = legal[torch.randint(len(legal), (1,), generator=gen)]
    return tokens


def _python_mask(grammars):
    mask = _grammar_mask(grammars, VOCAB, "cpu")
    return torch.ones(len(grammars), VOCAB, dtype=torch.bool) if mask is None else mask


def _state(gt):
    return [gt.phase.tolist(), gt.generated.tolist(), gt.span_codes.tolist(), gt.lead_in.tolist()]


def _python_state(grammars):
    phases = {"text": 0, "lead": 1, "span": 2, "done": 3}
    return [[phases[g.state] for g in grammars], [g.generated for g in grammars],
            [g.span_codes for g in grammars], [g.lead_in for g in grammars]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_and_state_follow_the_python_grammar(seed):
    gen = torch.Generator().manual_seed(seed)
    grammars = _rows()
    gt = GrammarTensors.from_grammars(grammars, VOCAB, "cpu")
    assert gt is not None
    storage = [t.data_ptr() for t in (gt.phase, gt.generated, gt.span_codes, gt.lead_in)]
    special = torch.tensor([*STOPS, SPACE, IMAGE.bos, IMAGE.eos, SPEECH.bos, SPEECH.eos, MUSIC.bos, MUSIC.eos,
                            SMALL.bos, SMALL.eos])
    for step in range(70):
        expected = _python_mask(grammars)
        assert torch.equal(gt.mask(), expected), step
        assert gt.finished().tolist() == [g.finished for g in grammars]
        assert _state(gt) == _python_state(grammars)
        if step == 20:  # built mid-way, from the current state
            assert torch.equal(GrammarTensors.from_grammars(grammars, VOCAB, "cpu").mask(), expected)
        if all(g.finished for g in grammars):
            break
        tokens = random_legal_tokens(expected, special, [0.15] * len(grammars), gen)
        live = ~gt.finished() & (torch.rand(len(grammars), generator=gen) < 0.9)
        for g, token, on in zip(grammars, tokens.tolist(), live.tolist()):
            if on:
                g.step(token)
        gt.advance(tokens, live)
    assert storage == [t.data_ptr() for t in (gt.phase, gt.generated, gt.span_codes, gt.lead_in)]


def test_full_fixed_span_must_close_and_done_rows_keep_still():
    grammars = [SpanGrammar(IMAGE, ImageLike(), stop_ids=STOPS, min_new_tokens=50)]
    gt = GrammarTensors.from_grammars(grammars, VOCAB, "cpu")
    for token in [IMAGE.bos] + [IMAGE.start + 5] * 32:
        grammars[0].step(token)
        gt.advance(torch.tensor([token]), torch.tensor([True]))
    assert gt.mask()[0].nonzero()[:, 0].tolist() == [IMAGE.eos]
    gt.advance(torch.tensor([IMAGE.eos]), torch.tensor([True]))
    assert gt.finished().tolist() == [True]
    gt.advance(torch.tensor([5]), torch.tensor([False]))
    assert gt.generated.tolist() == [34] and gt.mask().all()


class Irregular:
    span_length = None

    def allowed(self, position):
        return 0, position + 1


class OddEnds:
    span_length = None

    def allowed(self, position):
        return 0, 16

    def can_end(self, length):
        return length in (3, 7)


def test_rows_that_cannot_be_expressed_give_none():
    def build(*grammars):
        return GrammarTensors.from_grammars([SpanGrammar(None, None, stop_ids=STOPS), *grammars], VOCAB, "cpu")

    assert build(SpanGrammar(SPEECH, Irregular(), stop_ids=STOPS)) is None
    assert build(SpanGrammar(SPEECH, OddEnds(), stop_ids=STOPS)) is None
    assert build(SpanGrammar(SPEECH, None, stop_ids=STOPS)) is None
    assert build(SpanGrammar(SPEECH, Irregular(), stop_ids=STOPS, enforce=False)) is not None  # never asked
    reply = ReplyGrammar({"speech": SPEECH}, {"speech": SpeechLike()}, {"text": GenerationPreset()}, STOPS,
                         [(0, 100)])
    assert GrammarTensors.from_grammars([reply], VOCAB, "cpu") is None
    gt = build(SpanGrammar(MUSIC, MusicLike(), stop_ids=STOPS), SpanGrammar(SMALL, ThreeSlots(), stop_ids=STOPS))
    assert gt.layers.tolist() == [1, 4, 3] and gt.end_every.tolist()[1:] == [4, 3]
    assert gt.lows[1].tolist() == [0, 2048, 4096, 6144]
