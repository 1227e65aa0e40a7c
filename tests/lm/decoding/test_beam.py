"""Beam search (anygpt.lm.decoding.beam) against transformers' own beam search on the same random LLaMA (float32,
CPU): plain text, left-padded prompts of different lengths, hypotheses that end on a stop token and at the budget;
one beam is greedy search; the grammar masks what a text target may not say."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from anygpt.lm.decoding.beam import beam_search
from anygpt.lm.decoding.grammar import SpanGrammar

EOS, PAD = 2, 0


def tiny(seed: int, eos_boost: float) -> LlamaForCausalLM:
    """A random LLaMA whose stop token is likelier by ``eos_boost`` (so that hypotheses end at different steps)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)  # peaked distributions, as a trained LM's
        model.lm_head.weight[EOS] += eos_boost * model.model.norm.weight / model.model.norm.weight.norm()
    return model


PROMPTS = [[1, 17, 33, 5, 60], [1, 9], [1, 44, 70, 12]]


def reference(model, prompts, num_beams: int, budget: int, **kwargs) -> list[list[int]]:
    """transformers' beam search on the left-padded batch: the generated ids up to and with the first stop token."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    config = GenerationConfig(num_beams=num_beams, do_sample=False, max_new_tokens=budget, eos_token_id=EOS,
                              pad_token_id=PAD, bos_token_id=1, **kwargs)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, width:].tolist()
    return [row[: row.index(EOS) + 1] if EOS in row else row for row in out]


def ours(model, prompts, num_beams: int, budget: int, **kwargs) -> list[list[int]]:
    grammars = [SpanGrammar(None, stop_ids=[EOS]) for _ in prompts]
    return beam_search(model, prompts, grammars, num_beams, [budget] * len(prompts), pad_id=PAD, **kwargs)


@pytest.mark.parametrize("seed,boost,num_beams,budget", [(0, 0.0, 3, 12), (1, 1.0, 4, 16), (2, 1.0, 5, 16),
                                                          (3, 1.0, 2, 16), (0, 1.0, 4, 16), (2, 3.0, 3, 10)])
def test_matches_transformers_beam_search(seed, boost, num_beams, budget):
    model = tiny(seed, boost)
    expected = reference(model, PROMPTS, num_beams, budget)
    got = ours(model, PROMPTS, num_beams, budget)
    print(f"seed {seed}: lengths {[len(r) for r in got]}, stopped {[EOS in r for r in got]}")
    assert got == expected


def test_length_penalty_and_early_stopping_mean_what_they_mean_in_transformers():
    model = tiny(1, 1.0)
    for kwargs in ({"length_penalty": 0.5}, {"length_penalty": 2.0}, {"early_stopping": True}):
        assert ours(model, PROMPTS, 4, 16, **kwargs) == reference(model, PROMPTS, 4, 16, **kwargs), kwargs


def test_some_hypotheses_end_on_the_stop_token_and_others_at_the_budget():
    """The cases above exercise both ends, also within one batch."""
    mixed = ours(tiny(1, 1.0), PROMPTS, 4, 16)
    assert any(r[-1] == EOS and len(r) < 16 for r in mixed), mixed
    assert any(EOS not in r and len(r) == 16 for r in mixed), mixed


def test_one_beam_is_greedy_search():
    model = tiny(5, 1.0)
    greedy = reference(model, PROMPTS, 1, 12)
    assert ours(model, PROMPTS, 1, 12) == greedy


def test_the_grammar_masks_every_beam():
    """A text grammar limited to ids 10-40 (and the stop token): no beam says anything else, and the search
    equals transformers' with the same ids suppressed."""
    model = tiny(6, 2.0)
    grammars = [SpanGrammar(None, stop_ids=[EOS], text_ranges=[(10, 40)]) for _ in PROMPTS]
    got = beam_search(model, PROMPTS, grammars, 3, [12] * 3, pad_id=PAD)
    assert all(10 <= t < 40 or t == EOS for row in got for t in row), got
    suppressed = [t for t in range(96) if not (10 <= t < 40 or t == EOS)]
    assert got == reference(model, PROMPTS, 3, 12, suppress_tokens=suppressed)
    assert all(not g.finished for g in grammars)  # the caller's grammars are left as they were


def test_bad_beam_count_is_an_error():
    with pytest.raises(ValueError, match="num_beams"):
        ours(tiny(0, 0.0), PROMPTS, 0, 4)


def test_generate_searches_the_rows_whose_preset_has_beams():
    """``generate`` (what predict runs) sends rows with ``num_beams`` > 1 to the search and decodes the others as
    before, in one batch; the presets check their beams."""
    from anygpt import AnyGPTError
    from anygpt.lm.decoding.loop import generate
    from anygpt.lm.decoding.presets import GenerationPreset

    model = tiny(1, 1.0)
    beams = GenerationPreset(do_sample=False, num_beams=4, max_new_tokens=16)
    greedy = GenerationPreset(do_sample=False, max_new_tokens=16)
    grammars = [SpanGrammar(None, stop_ids=[EOS]) for _ in PROMPTS]
    got = generate(model, PROMPTS, [beams, greedy, beams], grammars, seeds=[0, 1, 2], pad_id=PAD, fast=False)
    assert [got[0], got[2]] == ours(model, [PROMPTS[0], PROMPTS[2]], 4, 16)
    assert got[1] == reference(model, [PROMPTS[1]], 1, 16)[0]
    assert got[0] != reference(model, [PROMPTS[0]], 1, 16)[0]  # the search found another hypothesis than greedy
    assert [g.finished for g in grammars] == [EOS in row for row in got]
    with pytest.raises(AnyGPTError, match="do_sample: false"):
        GenerationPreset(num_beams=5)
    with pytest.raises(AnyGPTError, match="num_beams must be"):
        GenerationPreset(do_sample=False, num_beams=0)


def test_repetition_penalty_and_min_new_tokens_as_transformers_apply_them():
    """Both shape every beam's next-token scores as transformers' beam search shapes them (the penalty over the
    prompt and what each beam said, the stop token blocked for the first tokens); and they do change the result."""
    model = tiny(1, 1.0)
    cases = [({"repetition_penalty": 1.5}, {"repetition_penalty": 1.5}),
             ({"repetition_penalty": 0.7}, {"repetition_penalty": 0.7}),
             ({"min_new_tokens": 13}, {"min_new_tokens": [13] * len(PROMPTS)})]  # ours: one per prompt
    for kwargs, per_prompt in cases:
        got = ours(model, PROMPTS, 4, 16, **per_prompt)
        assert got == reference(model, PROMPTS, 4, 16, **kwargs), kwargs
        assert got != ours(model, PROMPTS, 4, 16), kwargs
