"""Chat prompts, the reply grammar and reply parsing, against the original's chat cases (fixtures/prompts/public).

Deliberate differences from the original, each checked here: the history keeps the clean reply (the original
stores it with a stray ``: `` in front, so its later prompts read ``[MMGPT]: : ...``); replies are parsed by ids
(a reply without ``<eos>`` is kept and marked truncated, where the original raised AttributeError).
"""

from __future__ import annotations

import pytest

from anygpt.lm.chat import (SYSTEM, VOICE_COMMAND, ReplyGrammar, chat_prompt_ids, chat_prompt_text, parse_reply,
                            user_message)
from anygpt.lm.decoding.presets import GenerationPreset
from anygpt.tokenizers.vocab import VocabLayout
from tests.lm.test_prompts import CODECS, span_ids
from tests.lm.test_tokenizer import cases, released


class Grammar:
    """The span rules of a codec, without its networks."""

    def __init__(self, modality, span_length=None, layers=1, size=8192):
        self.modality, self.span_length, self.layers, self.size = modality, span_length, layers, size

    def allowed(self, position):
        width = self.size // self.layers
        layer = position % self.layers
        return layer * width, (layer + 1) * width

    def can_end(self, length):
        return length == self.span_length if self.span_length else length > 0 and length % self.layers == 0


GRAMMARS = {"image": Grammar("image", 32), "speech": Grammar("speech", size=1024),
            "music": Grammar("music", layers=4)}


def layout() -> VocabLayout:
    return VocabLayout.from_tokenizer(released(), CODECS)


def fixture_spans(turn: dict, lay: VocabLayout) -> list[tuple[str, str]]:
    """The turn's attachments as (modality, token string), from its CLI line and the fixture's codes."""
    data = cases()
    by_path = {path: name for name, path in data["inputs"].items()}
    _, _, _, _, images, speeches, musics = turn["cli_line"].split("|")
    spans = []
    for modality, field in (("image", images), ("speech", speeches), ("music", musics)):
        for path in filter(None, field.split(",")):
            ids = span_ids(lay, modality, data["codes"][by_path[path]])
            spans.append((modality, lay.string_from_ids(ids)))
    return spans


def chat_case(case_id: str) -> dict:
    return next(c for c in cases()["chat"] if c["id"] == case_id)


@pytest.mark.parametrize("case_id", ["chat_1turn", "chat_image_music_speech_order", "chat_reply_without_eos"])
def test_first_turn_prompts_equal_the_originals(case_id):
    tok, lay = released(), layout()
    turn = chat_case(case_id)["turns"][0]
    instruction = turn["cli_line"].split("|")[1]
    message = user_message(instruction, fixture_spans(turn, lay))
    assert message == turn["user_message"]
    assert chat_prompt_text([], message) == turn["prompt"]
    assert chat_prompt_ids(tok, [], message) == turn["input_ids"]


def test_later_turns_keep_clean_replies_in_the_history():
    tok, lay = released(), layout()
    turns = chat_case("chat_3turn")["turns"]
    history = []
    for turn in turns:
        message = user_message(turn["cli_line"].split("|")[1], fixture_spans(turn, lay))
        assert message == turn["user_message"]
        # The original's prompt, with its stray ": " after each past [MMGPT] removed (our deliberate fix).
        expected = turn["prompt"].replace("[MMGPT]: : ", "[MMGPT]: ")
        assert chat_prompt_text(history, message) == expected
        assert chat_prompt_ids(tok, history, message) == tok.encode(expected)
        reply = turn["returned_reply"]
        assert reply.startswith(": ")
        history.append((message, reply[2:]))
    assert turns[2]["user_message"].endswith("  " + VOICE_COMMAND)  # speech only: two spaces before the wrapper


def test_generated_ids_in_the_history_are_kept_verbatim():
    tok = released()
    turn = chat_case("chat_1turn")["turns"][0]
    reply = turn["generated_ids"][:-1]  # without <eos>
    ids = chat_prompt_ids(tok, [(turn["user_message"], reply)], "Thanks!")
    assert ids[:len(turn["input_ids"])] == turn["input_ids"]
    rest = ids[len(turn["input_ids"]):]
    assert rest[:len(reply)] == reply
    assert rest[len(reply):] == tok.encode("<eos>\n[Human]: Thanks!<eoh>\n[MMGPT]:", bos=False)
    assert ids[0] == 1 and SYSTEM in tok.decode(ids)


@pytest.mark.parametrize("case_id, turn_index", [("chat_1turn", 0), ("chat_3turn", 0), ("chat_3turn", 2),
                                                  ("chat_image_music_speech_order", 0)])
def test_replies_parsed_by_ids_match_the_originals_text_and_media(case_id, turn_index):
    tok, lay = released(), layout()
    turn = chat_case(case_id)["turns"][turn_index]
    parsed = parse_reply(turn["generated_ids"], tok, lay.ranges, GRAMMARS, [1003, 2])
    original = turn["returned_reply"][2:]  # the original's text, spans included, space-joined by its decoder
    text_part = original.split(" <so")[0]
    assert parsed.text == text_part and not parsed.truncated
    assert [(m, c.tolist()) for m, c in parsed.spans] == [(m["modality"], m["codes"]) for m in turn["decoded_media"]]
    assert parsed.ids == turn["generated_ids"][:-1]


def test_a_reply_without_eos_is_kept_and_marked_truncated():
    tok, lay = released(), layout()
    turn = chat_case("chat_reply_without_eos")["turns"][0]
    assert turn["error"].startswith("AttributeError")  # the original lost the reply
    parsed = parse_reply(turn["generated_ids"], tok, lay.ranges, GRAMMARS, [1003, 2])
    assert parsed.text == "This reply never ends" and parsed.truncated and not parsed.spans


def test_parse_reply_spans_in_order_and_an_unclosed_span_trimmed():
    tok, lay = released(), layout()
    r = lay.ranges
    image = [r["image"].bos, *r["image"].to_lm(list(range(32))).tolist(), r["image"].eos]
    music = [r["music"].bos, *r["music"].to_lm([1, 2049, 4097, 6145, 7, 2055]).tolist()]  # 6 codes, no end tag
    ids = tok.encode("Here.", bos=False) + image + tok.encode("And a tune:", bos=False) + music
    parsed = parse_reply(ids, tok, r, GRAMMARS, [1003, 2])
    assert parsed.text == "Here. And a tune:" and parsed.truncated
    assert [m for m, _ in parsed.spans] == ["image", "music"] and parsed.spans[1][1].tolist() == [1, 2049, 4097, 6145]
    assert parsed.ids == ids[:len(ids) - len(music)]  # the history leaves the unclosed span out
    with pytest.raises(ValueError):
        parse_reply(image[:10] + [r["image"].eos], tok, r, GRAMMARS, [1003])  # 9 codes: not an image


def test_reply_grammar_switches_presets_and_requires_speech():
    lay = layout()
    presets = {"text": GenerationPreset(top_k=50), "speech": GenerationPreset(top_k=7),
               "image": GenerationPreset(top_k=3), "music": GenerationPreset(top_k=200)}
    grammar = ReplyGrammar(lay.ranges, GRAMMARS, presets, [1003, 2], [(0, 1000)], require=["speech"])
    speech = lay.ranges["speech"]

    def allows(token):
        return any(lo <= token < hi for lo, hi in grammar.allowed())

    assert allows(500) and allows(speech.bos) and not allows(1003) and not allows(2)  # no stop before speech
    assert not allows(speech.start) and grammar.preset.top_k == 50
    grammar.step(speech.bos)
    assert grammar.preset.top_k == 7 and allows(speech.start + 1023) and not allows(500) and not allows(1003)
    assert not allows(speech.eos)  # an empty span may not close
    grammar.step(speech.start + 5)
    assert allows(speech.eos)
    grammar.step(speech.eos)
    assert grammar.preset.top_k == 50 and allows(1003) and allows(2)
    image = lay.ranges["image"]
    grammar.step(image.bos)
    for i in range(32):
        grammar.step(image.start + i)
    assert grammar.allowed() == [(image.eos, image.eos + 1)]  # a full image span must close
    grammar.step(image.eos)
    grammar.step(1003)
    assert grammar.finished and grammar.allowed() is None
    off = ReplyGrammar(lay.ranges, GRAMMARS, presets, [1003, 2], [(0, 1000)], enforce=False)
    off.step(image.bos)
    assert off.allowed() is None and off.preset.top_k == 3
    off.step(2)
    assert off.finished


def test_user_message_orders_media_as_the_original():
    spans = [("speech", "<S>"), ("image", "<I1>"), ("music", "<M>"), ("image", "<I2>"), ("toy", "<T>")]
    assert user_message("Hi", spans) == f"<I1> <I2> <M> <T> <S> Hi {VOICE_COMMAND}"
    assert user_message("Just text", []) == "Just text"
