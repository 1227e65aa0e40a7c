"""Reply parsing against the original CLI's results (fixtures `base_parse`), with its bugs fixed on purpose.

The original cut answers out of decoded text by string search over prompt + generation. We parse generated ids:
where the original is right we must give the same answer or codes; where the fixture marks a bug, we give the
documented behaviour instead (an error naming the problem, or the clean answer).
"""

from __future__ import annotations

import json

import pytest
import torch

from anygpt import AnyGPTError
from anygpt.lm.unified import UnifiedLM
from anygpt.tokenizers.base import BaseCodec
from anygpt.tokenizers.music import EncodecMusicCodec, unflatten_codes
from tests.conftest import fixture_path


class StandInCodec(BaseCodec):
    """Image / speech stand-ins with the released token blocks (only the grammar matters here)."""

    def __init__(self, modality, prefix, start_tag, end_tag, size, span_length=None):
        super().__init__()
        self.modality, self.token_prefix, self.start_tag, self.end_tag = modality, prefix, start_tag, end_tag
        self.vocab_size, self.span_length = size, span_length


# Where we differ from the original on purpose, and what we do instead.
TEXT_FIXES = {
    "parse_text_empty_answer": "",  # the original fell back to the text after the tag: "<eos> Second answer. <eos>"
    "parse_text_nothing_generated": "",  # the original returned the whole prompt
    "parse_text_specials_inside": "hello",  # we stop at </s>; the original never stopped and skipped it
}
SPAN_ERRORS = {
    "parse_image_missing_end": "not a image code",  # the original took digits from the following text as codes
    "parse_image_missing_start": "no <soim> span",  # the original took digits from the prompt as codes
    "parse_image_short": "incomplete",  # the original passed 20 codes on to a decoder that needs 32
    "parse_image_empty_span": "empty",  # the original took digits after <eoim>
    "parse_music_not_multiple_of_4": "position 48",  # the original silently dropped a partial frame
    "parse_music_wrong_layer": "position 1",  # the original took every code mod 2048
    "parse_music_missing_start": "no <somu> span",  # the original parsed the prompt's digits
}


@pytest.fixture(scope="module")
def cases():
    return json.loads(fixture_path("prompts", "public", "cases.json").read_text(encoding="utf-8"))["base_parse"]


@pytest.fixture(scope="module")
def model():
    tokenizer = fixture_path("prompts", "public", "tokenizer")
    codecs = {
        "image": StandInCodec("image", "👀", "<soim>", "<eoim>", 8192, span_length=32),
        "speech": StandInCodec("speech", "🗣️", "<sosp>", "<eosp>", 1024),
        "music": EncodecMusicCodec.tiny(),
    }
    backbone = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    return UnifiedLM(backbone=backbone, tokenizer=str(tokenizer), codecs=codecs)


def test_fixture_cases_are_all_classified(cases):
    assert {c["id"] for c in cases} >= set(TEXT_FIXES) | set(SPAN_ERRORS)


@pytest.mark.parametrize("name", ["parse_text_ok", "parse_text_no_eos", "parse_text_two_eos",
                                  "parse_text_with_modality_tokens", *TEXT_FIXES])
def test_text_replies(name, cases, model):
    case = next(c for c in cases if c["id"] == name)
    text, truncated = model.parse_text(case["generated_ids"])
    assert text == TEXT_FIXES.get(name, case["returned"])
    assert truncated == (name == "parse_text_no_eos")


@pytest.mark.parametrize("name", ["parse_image_ok", "parse_image_no_space", "parse_speech_ok",
                                  "parse_speech_two_spans", "parse_speech_missing_end", "parse_music_ok"])
def test_well_formed_spans_give_the_original_codes(name, cases, model):
    case = next(c for c in cases if c["id"] == name)
    codes, truncated = model.parse_span(case["to_modality"], case["generated_ids"])
    expected = torch.tensor(case["parsed"]).squeeze()
    if case["to_modality"] == "music":  # the original's decoder input is [4, frames] without layer offsets
        codes = unflatten_codes(codes)
    assert torch.equal(codes, expected)
    assert truncated == (name == "parse_speech_missing_end")


@pytest.mark.parametrize("name", list(SPAN_ERRORS))
def test_broken_spans_are_reported_not_guessed(name, cases, model):
    case = next(c for c in cases if c["id"] == name)
    with pytest.raises((AnyGPTError, ValueError), match=SPAN_ERRORS[name]):
        model.parse_span(case["to_modality"], case["generated_ids"])
