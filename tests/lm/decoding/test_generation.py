"""Generation: presets, grammar, filters against transformers' processors, decode loop against generate()."""

from __future__ import annotations

import pytest
import torch

from anygpt import AnyGPTError
from anygpt.lm.decoding.grammar import SpanGrammar, _grammar_mask
from anygpt.lm.decoding.loop import _filter_logits, generate
from anygpt.lm.decoding.presets import DEFAULT_PRESETS, GenerationPreset, build_presets
from anygpt.tokenizers.vocab import TokenRange


class FourSlotCodec:
    """Music-like grammar: slot p holds codes of block p % 4, spans end on whole frames."""

    span_length = None

    def allowed(self, position):
        return 3 * (position % 4), 3 * (position % 4) + 3

    def can_end(self, n):
        return n > 0 and n % 4 == 0


class FixedCodec:
    span_length = 3

    def allowed(self, position):
        return 0, 5


MUSIC = TokenRange("music", start=20, size=12, bos=32, eos=33)
IMAGE = TokenRange("image", start=40, size=5, bos=45, eos=46)


def allowed_ids(grammar):
    spans = grammar.allowed()
    return None if spans is None else sorted({i for lo, hi in spans for i in range(lo, hi)})


def test_presets_default_to_the_original_configs():
    assert DEFAULT_PRESETS["music"].top_k == 200 and DEFAULT_PRESETS["music"].repetition_penalty == 1.15
    assert DEFAULT_PRESETS["music"].max_new_tokens == 2000
    assert DEFAULT_PRESETS["speech"].max_new_tokens == 1500 and DEFAULT_PRESETS["speech"].repetition_penalty == 1.05
    assert DEFAULT_PRESETS["image"].max_new_tokens == 200 and DEFAULT_PRESETS["text"].max_new_tokens == 100
    assert all(p.top_k == 50 for k, p in DEFAULT_PRESETS.items() if k != "music")
    presets = build_presets({"music": {"top_k": 7}})
    assert presets["music"].top_k == 7 and presets["music"].max_new_tokens == 2000
    with pytest.raises(AnyGPTError, match="unknown fields"):
        build_presets({"music": {"topk": 7}})
    with pytest.raises(AnyGPTError):
        GenerationPreset(top_p=0.0)


def test_music_grammar_walks_layer_blocks_and_ends_on_whole_frames():
    g = SpanGrammar(MUSIC, FourSlotCodec(), stop_ids=[2, 3], lead_in_ids=[9])
    assert allowed_ids(g) == [9, 32]  # lead-in piece or the start tag
    g.step(9)
    assert allowed_ids(g) == [32]  # one lead-in at most
    g.step(32)
    for position in range(8):
        expected = list(range(20 + 3 * (position % 4), 23 + 3 * (position % 4)))
        if position in (4, 8):
            expected.append(33)
        assert allowed_ids(g) == expected, position
        g.step(expected[0])
    assert allowed_ids(g)[-1] == 33
    g.step(33)
    assert g.finished and allowed_ids(g) is None


def test_fixed_span_grammar_forces_the_end_tag():
    g = SpanGrammar(IMAGE, FixedCodec(), stop_ids=[2])
    g.step(45)
    for _ in range(3):
        assert 46 not in allowed_ids(g)
        g.step(40)
    assert allowed_ids(g) == [46]


def test_text_grammar_runs_free_until_a_stop_and_respects_min_new_tokens():
    g = SpanGrammar(None, None, stop_ids=[2, 7], min_new_tokens=2)
    assert g.allowed() is None and g.blocked_stops() == [2, 7]
    g.step(5)
    g.step(6)
    assert g.blocked_stops() == []
    g.step(7)
    assert g.finished


def test_unenforced_grammar_only_watches_stops():
    g = SpanGrammar(MUSIC, FourSlotCodec(), stop_ids=[2], enforce=False)
    assert g.allowed() is None
    g.step(32)
    g.step(5)  # a foreign token inside the span is left for the parser to report
    assert not g.finished
    g.step(33)
    assert g.finished


@pytest.mark.parametrize("preset", [
    GenerationPreset(temperature=0.7, top_k=5, top_p=1.0, repetition_penalty=1.3),
    GenerationPreset(temperature=1.3, top_k=0, top_p=0.8, repetition_penalty=1.0),
    GenerationPreset(temperature=1.0, top_k=10, top_p=0.5, repetition_penalty=0.9),
])
def test_filters_match_transformers_processors(preset):
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(2, 40) * 3
    history = torch.randint(0, 40, (2, 12))
    expected = logits.clone()
    if preset.repetition_penalty != 1.0:
        expected = RepetitionPenaltyLogitsProcessor(preset.repetition_penalty)(history, expected)
    expected = TemperatureLogitsWarper(preset.temperature)(history, expected)
    if preset.top_k:
        expected = TopKLogitsWarper(preset.top_k)(history, expected)
    if preset.top_p < 1:
        expected = TopPLogitsWarper(preset.top_p)(history, expected)
    ours = _filter_logits(logits.clone(), history, [preset, preset])
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    finite = ~torch.isinf(expected)
    torch.testing.assert_close(ours[finite], expected[finite])


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def test_greedy_batch_matches_transformers_generate(tiny_llama):
    prompts = [[1, 5, 9, 11, 3, 7, 8], [1, 40, 41], [1, 12, 13, 14, 15]]
    n = 12
    greedy = GenerationPreset(do_sample=False, max_new_tokens=n)
    ours = generate(tiny_llama, prompts, [greedy] * 3, [SpanGrammar(None, stop_ids=[]) for _ in prompts],
                    seeds=[0, 1, 2])
    for prompt, out in zip(prompts, ours):
        ref = tiny_llama.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                  max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert out == ref[0, len(prompt):].tolist()


def test_sampling_depends_on_the_request_seed_not_the_batch(tiny_llama):
    preset = GenerationPreset(max_new_tokens=10, top_k=0)
    prompt = [1, 5, 9, 11]

    def run(prompts, seeds):
        return generate(tiny_llama, prompts, [preset] * len(prompts),
                        [SpanGrammar(None, stop_ids=[]) for _ in prompts], seeds=seeds)

    alone = run([prompt], [123])[0]
    assert run([prompt], [123])[0] == alone
    in_batch = run([[1, 2, 3, 4, 5, 6, 7], prompt], [5, 123])
    assert in_batch[1] == alone
    assert run([prompt], [124])[0] != alone


def test_rows_stop_at_their_own_stop_token_and_budget(tiny_llama):
    greedy = GenerationPreset(do_sample=False, max_new_tokens=20)
    free = generate(tiny_llama, [[1, 5, 9]], [greedy], [SpanGrammar(None, stop_ids=[])], seeds=[0])[0]
    stop = free[3]
    first = free.index(stop)
    short = GenerationPreset(do_sample=False, max_new_tokens=2)
    outs = generate(tiny_llama, [[1, 5, 9], [1, 5, 9]], [greedy, short],
                    [SpanGrammar(None, stop_ids=[stop]), SpanGrammar(None, stop_ids=[])], seeds=[0, 0])
    assert outs[0] == free[: first + 1]
    assert outs[1] == free[:2]


def test_grammar_constrains_the_model(tiny_llama):
    codec = FourSlotCodec()
    rng = TokenRange("music", start=20, size=12, bos=32, eos=33)
    preset = GenerationPreset(max_new_tokens=30, top_k=0)
    grammars = [SpanGrammar(rng, codec, stop_ids=[2], lead_in_ids=[9]) for _ in range(4)]
    outs = generate(tiny_llama, [[1, 5, 9]] * 4, [preset] * 4, grammars, seeds=[0, 1, 2, 3])
    for out, g in zip(outs, grammars):
        start = out.index(32)
        assert start <= 1 and all(t == 9 for t in out[:start])
        body = out[start + 1:]
        if g.finished:
            assert body[-1] == 33
            body = body[:-1]
            assert len(body) % 4 == 0
        for position, token in enumerate(body):
            assert 20 + 3 * (position % 4) <= token < 23 + 3 * (position % 4)


def test_text_replies_can_be_limited_to_text_pieces():
    g = SpanGrammar(None, None, stop_ids=[2, 60], text_ranges=[(0, 50)])
    assert allowed_ids(g) == list(range(50)) + [60]
    g.step(60)
    assert g.finished


def test_min_new_tokens_never_leaves_a_row_without_a_legal_token():
    # a span may end only once min_new_tokens are out (bos counts), unless the span is full and must close
    g = SpanGrammar(MUSIC, FourSlotCodec(), stop_ids=[2], min_new_tokens=7)
    g.step(32)
    for _ in range(4):
        g.step(allowed_ids(g)[0])
    assert 33 not in allowed_ids(g) and g.blocked_stops() == []  # 5 tokens out: too early to close
    for _ in range(4):
        g.step(allowed_ids(g)[0])
    assert 33 in allowed_ids(g)
    fixed = SpanGrammar(IMAGE, FixedCodec(), stop_ids=[2], min_new_tokens=50)
    fixed.step(45)
    for _ in range(3):
        fixed.step(40)
    assert allowed_ids(fixed) == [46] and fixed.blocked_stops() == []
    mask = _grammar_mask([fixed], 64, "cpu")
    assert mask[0].any()


def test_guided_rows_match_transformers_classifier_free_guidance(tiny_llama):
    """``guidance_scale`` against transformers' UnbatchedClassifierFreeGuidanceLogitsProcessor (greedy), with an
    unguided row in the same batch left as it decodes alone."""
    prompts, unconditional = [[1, 5, 9, 11, 3, 7, 8], [1, 40, 41]], [[1, 5, 9], [1, 20]]
    n = 10
    guided = GenerationPreset(do_sample=False, max_new_tokens=n, guidance_scale=3.0)
    greedy = GenerationPreset(do_sample=False, max_new_tokens=n)
    ours = generate(tiny_llama, prompts, [guided, greedy], [SpanGrammar(None, stop_ids=[]) for _ in prompts],
                    seeds=[0, 1], unconditional=unconditional)
    ref = tiny_llama.generate(torch.tensor([prompts[0]]), attention_mask=torch.ones(1, 7, dtype=torch.long),
                              max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None,
                              guidance_scale=3.0, negative_prompt_ids=torch.tensor([unconditional[0]]))
    assert ours[0] == ref[0, len(prompts[0]):].tolist()
    plain = generate(tiny_llama, prompts[:1], [greedy], [SpanGrammar(None, stop_ids=[])], seeds=[0])[0]
    assert ours[0] != plain  # the guidance changed the choice somewhere
    assert ours[1] == generate(tiny_llama, prompts[1:], [greedy], [SpanGrammar(None, stop_ids=[])], seeds=[1])[0]
    beam = GenerationPreset(do_sample=False, max_new_tokens=n, num_beams=2)
    beside_beams = generate(tiny_llama, prompts, [guided, beam], [SpanGrammar(None, stop_ids=[]) for _ in prompts],
                            seeds=[0, 1], unconditional=unconditional)
    assert beside_beams[0] == ours[0]  # a beam-searched neighbour leaves the guided row guided
    with pytest.raises(AnyGPTError, match="guidance_scale"):
        GenerationPreset(guidance_scale=2.0, num_beams=2, do_sample=False)
    with pytest.raises(AnyGPTError, match="unconditional holds 1 prompts for 2 rows"):
        generate(tiny_llama, prompts, [guided, greedy], [SpanGrammar(None, stop_ids=[]) for _ in prompts],
                 seeds=[0, 1], unconditional=[[1]])


def test_guidance_runs_under_a_grammar_and_sampling(tiny_llama):
    codec = FourSlotCodec()
    preset = GenerationPreset(max_new_tokens=30, top_k=0, guidance_scale=2.5)
    grammars = [SpanGrammar(MUSIC, codec, stop_ids=[2], lead_in_ids=[9]) for _ in range(2)]
    outs = generate(tiny_llama, [[1, 5, 9]] * 2, [preset] * 2, grammars, seeds=[0, 1],
                    unconditional=[[1, 5], [1, 5]])
    for out in outs:
        body = out[out.index(32) + 1:]
        body = body[:-1] if body[-1] == 33 else body
        for position, token in enumerate(body):
            assert 20 + 3 * (position % 4) <= token < 23 + 3 * (position % 4)
    again = generate(tiny_llama, [[1, 5, 9]], [preset], [SpanGrammar(MUSIC, codec, stop_ids=[2], lead_in_ids=[9])],
                     seeds=[1], unconditional=[[1, 5]])
    assert again[0] == outs[1]  # a guided row's draws depend on its seed, not its neighbours
