"""Base prompts and pretraining sequences against the original's prompts and ids (fixtures/prompts/public)."""

from __future__ import annotations

import json
import random

import pytest

from anygpt import AnyGPTError
from anygpt.lm.prompts import InstructionPools, base_prompt_ids, base_prompt_text, pretrain_sequence_ids
from anygpt.tokenizers.vocab import VocabLayout
from tests.lm.test_tokenizer import _Codec, cases, released

CODECS = [_Codec("image", "👀", "<soim>", "<eoim>", 8192), _Codec("speech", "🗣️", "<sosp>", "<eosp>", 1024),
          _Codec("music", "🎶", "<somu>", "<eomu>", 8192)]


def span_ids(layout: VocabLayout, modality: str, codes) -> list[int]:
    """LM ids of ``<so..>`` codes ``<eo..>``; music codes [4][n] are flattened frame-major with 2048·layer offsets."""
    if modality == "music":
        codes = [codes[layer][t] + 2048 * layer for t in range(len(codes[0])) for layer in range(len(codes))]
    rng = layout.ranges[modality]
    return [rng.bos] + rng.to_lm(codes).tolist() + [rng.eos]


def test_base_prompts_rebuilt_from_their_parts():
    tok, data = released(), cases()
    layout = VocabLayout.from_tokenizer(tok, CODECS)
    assert len(data["base_prompts"]) == 6
    for case in data["base_prompts"]:
        instruction = case["instruction"]["instruction"]
        if case["modality"] == "text":
            kwargs = {"text": case["input_text"]}
        else:
            assert case["to_modality"] == "text"
            kwargs = {"span_ids": span_ids(layout, case["modality"], data["codes"][case["input_codes_name"]])}
            assert layout.string_from_ids(kwargs["span_ids"]) == case["modality_string"], case["id"]
        ids = base_prompt_ids(tok, instruction, **kwargs)
        assert ids == case["input_ids"], case["id"]
        assert [tok.id_to_piece(i) for i in ids] == case["tokens"], case["id"]
        assert base_prompt_text(tok, instruction, **kwargs) == case["prompt"], case["id"]


def test_modality_strings_from_codes():
    tok, data = released(), cases()
    layout = VocabLayout.from_tokenizer(tok, CODECS)
    for case in data["modality_strings"]:
        ids = span_ids(layout, case["modality"], case["codes"])
        assert ids == case["ids"], case["id"]
        assert layout.string_from_ids(ids) == case["string"] and layout.ids_from_string(case["string"]) == ids


def test_prompt_input_checks():
    tok = released()
    with pytest.raises(AnyGPTError):
        base_prompt_ids(tok, "Describe.", text="a", span_ids=[9196, 9197])
    with pytest.raises(AnyGPTError):
        base_prompt_ids(tok, "Describe.")
    with pytest.raises(AnyGPTError):  # text pieces are not a modality span
        base_prompt_ids(tok, "Describe.", span_ids=[476, 929])


# --- pretraining sequences (pipeline §5.2) ---


def test_pretrain_to_text_sequence():
    tok, data = released(), cases()
    layout = VocabLayout.from_tokenizer(tok, CODECS)
    span = span_ids(layout, "image", data["codes"]["img_a"])
    ids = pretrain_sequence_ids(tok, "Describe the image.", "A cat on a chair.", span, "to_text", eos_id=1003)
    text = f"[Human]: Describe the image. {layout.string_from_ids(span)}<eoh> [MMGPT]: A cat on a chair.<eos>"
    assert ids == tok.encode(text) + [2]
    pieces = [tok.id_to_piece(i) for i in ids]
    after = pieces.index("[MMGPT]")
    assert pieces[after - 2:after + 3] == ["<eoh>", "▁▁", "[MMGPT]", "▁:", "▁A"]
    assert pieces[-2:] == ["<eos>", "</s>"] and ids[ids.index(9196):ids.index(9197) + 1] == span


def test_pretrain_from_text_sequence():
    tok, data = released(), cases()
    layout = VocabLayout.from_tokenizer(tok, CODECS)
    span = span_ids(layout, "music", data["codes"]["mu_a"])
    ids = pretrain_sequence_ids(tok, "Compose this.", "calm piano", span, "from_text", add_eos_token=False)
    pieces = [tok.id_to_piece(i) for i in ids]
    # README (c): in training data `[MMGPT]: <somu>` tokenizes `: ` as `▁:` `▁`; no `</s>` without add_eos_token
    assert pieces[pieces.index("[MMGPT]"):pieces.index("<somu>") + 1] == ["[MMGPT]", "▁:", "▁", "<somu>"]
    assert pieces[-2:] == ["<eomu>", "<eos>"] and ids[0] == 1
    text = f"[Human]: Compose this. This is input: calm piano<eoh> [MMGPT]: {layout.string_from_ids(span)}<eos>"
    assert ids == tok.encode(text)
    with pytest.raises(AnyGPTError):
        pretrain_sequence_ids(tok, "x", "y", span, "sideways")


def test_voice_prompt_sits_after_the_text_and_the_training_sequence_extends_it():
    """Not in the original: a text-to-speech prompt may carry a voice span; the ids equal the tokenizer's encoding of
    the written-out prompt, and the training sequence starts with exactly the prompt that inference builds."""
    tok = released()
    layout = VocabLayout.from_tokenizer(tok, CODECS)
    voice, span = span_ids(layout, "speech", [3, 17, 17, 900]), span_ids(layout, "speech", [5, 6, 1023])
    prompt = base_prompt_ids(tok, "Speak this.", text="a red ball", voice_ids=voice)
    voice_text = layout.string_from_ids(voice)
    assert prompt == tok.encode(f"[Human]: Speak this. This is input: a red ball Voice: {voice_text}<eoh> [MMGPT]:")
    ids = pretrain_sequence_ids(tok, "Speak this.", "a red ball", span, "from_text", voice_ids=voice)
    assert ids == tok.encode(f"[Human]: Speak this. This is input: a red ball Voice: {voice_text}<eoh> [MMGPT]: "
                             f"{layout.string_from_ids(span)}<eos>") + [2]
    assert ids[:len(prompt)] == prompt
    with pytest.raises(AnyGPTError, match="voice_ids go with a text input"):
        base_prompt_ids(tok, "Describe.", span_ids=span, voice_ids=voice)
    with pytest.raises(AnyGPTError, match="from_text direction"):
        pretrain_sequence_ids(tok, "Describe.", "a red ball", span, "to_text", voice_ids=voice)
    with pytest.raises(AnyGPTError, match="added-token ids"):
        base_prompt_ids(tok, "Speak.", text="a", voice_ids=[476, 929])


# --- instruction pools ---


def _fixture_instructions() -> dict[str, dict[str, str]]:
    pools: dict[str, dict[str, list[str]]] = {"from_text": {}, "to_text": {}}
    for case in cases()["base_prompts"]:
        direction, modality = (("from_text", case["to_modality"]) if case["modality"] == "text"
                               else ("to_text", case["modality"]))
        pools[direction][modality] = [case["instruction"]["instruction"]]
    return pools


def test_builtin_pools_are_own_and_seeded():
    pools = InstructionPools()
    original = {case["instruction"]["instruction"] for case in cases()["base_prompts"]}
    for direction in ("from_text", "to_text"):
        for modality in ("image", "speech", "music"):
            pool = pools.pool(direction, modality)
            assert 12 <= len(pool) <= 20 and len(set(pool)) == len(pool) and not original & set(pool)
    draw = [pools.choose("to_text", "speech", random.Random(7)) for _ in range(3)]
    assert len(set(draw)) == 1
    assert len({pools.choose("from_text", "image", random.Random(s)) for s in range(40)}) > 5
    assert "smell" in pools.choose("from_text", "smell", random.Random(0))


def test_pools_from_file_reproduce_the_original_prompts(tmp_path):
    tok, data = released(), cases()
    path = tmp_path / "pools.json"
    path.write_text(json.dumps(_fixture_instructions(), ensure_ascii=False), encoding="utf-8")
    pools = InstructionPools.from_file(path)
    for case in data["base_prompts"]:
        if case["modality"] == "text":
            instruction = pools.choose("from_text", case["to_modality"], random.Random(0))
            assert base_prompt_ids(tok, instruction, text=case["input_text"]) == case["input_ids"]
        else:
            instruction = pools.choose("to_text", case["modality"], random.Random(0))
        assert instruction == case["instruction"]["instruction"]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"to_text": {"music": ["Only this."]}}), encoding="utf-8")
    pools = InstructionPools.from_file(partial)
    assert pools.pool("to_text", "music") == ["Only this."]
    assert pools.pool("to_text", "image") == InstructionPools().pool("to_text", "image")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"to_text": ["a"]}', '{"sideways": {"image": ["a"]}}',
                                     '{"to_text": {"image": []}}', '{"to_text": {"image": "one string"}}'])
def test_bad_pool_file_is_one_line_error(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(AnyGPTError) as err:
        InstructionPools.from_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(AnyGPTError, match="missing.json"):
        InstructionPools.from_file(tmp_path / "missing.json")
