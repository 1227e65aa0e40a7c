"""StaticLlama (static KV cache, bucketed attention) against the transformers model it runs (CPU, float32)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from anygpt.lm.decoding.fast import BUCKET, StaticLlama, left_padded


def llama(kv_heads: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=1024)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("rows", [3, 1])  # batch 1 decodes through _decode_layer (transposed value cache)
def test_teacher_forced_logits_equal_the_transformers_model(kv_heads, rows):
    model = llama(kv_heads)
    prompts = [[1, 5, 9, 33, 2, 7], [1, 8], [1, 40, 41, 42]][:rows]
    follow = [[11, 12, 13], [21, 22, 23], [31, 32, 33]][:rows]
    width, batch = max(map(len, prompts)), len(prompts)
    static = StaticLlama(model, batch, width + 300)  # the steps cross a bucket boundary below
    assert static.length == 2 * BUCKET and static.whole_layers == (rows == 1)
    tokens, valid, positions = left_padded(prompts, static.length)
    with torch.no_grad():
        got = [static.prefill(tokens, positions, valid)]
        position = positions[:, -1]
        slot = width
        for step in range(3):
            if step == 2:  # jump to the next bucket: slots in between stay invalid
                slot = BUCKET + 5
            position = position + 1
            valid[:, slot] = True
            got.append(static.step(torch.tensor([f[step] for f in follow]), position, slot, valid))
            slot += 1
        for i, p in enumerate(prompts):
            reference = model(torch.tensor([p + follow[i]])).logits[0]
            for step in range(4):
                torch.testing.assert_close(got[step][i], reference[len(p) - 1 + step], atol=1e-4, rtol=1e-4)


def tiny_setup(layers: int, seed: int):
    """A tiny LLaMA over AnyGPT's 49418-token layout, the layout with span rules, the stop ids, and ``rows``:
    presets and grammars for ``[(target, budget)]`` (no minimum length; greedy unless ``sample``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
    from generate_speed import job, setup_vocab

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=49418, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
    layout, rules = setup_vocab()
    stops = [2, layout.token_id("<eos>")]

    def rows(spec, sample=False):
        made = [job(layout, rules, target, budget, stops) for target, budget in spec]
        for preset, grammar in made:
            preset.do_sample, grammar.min_new_tokens, preset.min_new_tokens = sample, 0, 0
        return [m[0] for m in made], [m[1] for m in made]

    return LlamaForCausalLM(config).eval(), layout, rows


def test_fast_generate_greedy_equals_the_python_loop_with_grammars():
    from anygpt.lm.decoding.fast import fast_generate
    from anygpt.lm.decoding.loop import generate

    model, layout, rows = tiny_setup(layers=2, seed=0)
    prompts = [[1, 5, 9, 33], [1, 8], [1, 40, 41, 42, 43, 44], [1, 7, 7]]
    spec = [("image", 40), ("music", 30), ("speech", 20), ("text", 12)]
    slow = generate(model, prompts, *rows(spec), [0, 1, 2, 3])
    fast = fast_generate(model, prompts, *rows(spec), [0, 1, 2, 3])
    assert fast == slow
    image = layout.ranges["image"]
    assert fast[0][fast[0].index(image.bos) + 33] == image.eos  # 32 codes, then the end tag


def test_kept_loops_give_the_results_of_fresh_ones():
    from anygpt.lm.decoding import fast as fast_decode
    from anygpt.lm.decoding.fast import fast_generate, release

    model, layout, rows = tiny_setup(layers=1, seed=1)

    def call(prompts, targets, seeds):
        return fast_generate(model, prompts, *rows([(t, 30) for t in targets], sample=True), seeds)

    cases = [([[1, 5, 9], [1, 8, 8, 8, 8]], ["music", "text"], [3, 4]),
             ([[1, 7], [1, 2, 3, 4, 5, 6, 7]], ["speech", "image"], [5, 6]),
             ([[1, 9, 9, 9]], ["music"], [7])]
    release()
    kept = [call(*case) for case in cases]
    loop = fast_decode._CACHED["loop"]
    assert call(*cases[2]) == kept[2] and fast_decode._CACHED["loop"] is loop  # reused, not rebuilt
    fresh = []
    for case in cases:
        release()
        fresh.append(call(*case))
    assert kept == fresh
    release()
    assert not fast_decode._CACHED


def test_release_gives_fused_weights_their_own_storage_back(tmp_path):
    from anygpt.lm.decoding.fast import fast_generate, release

    model, layout, rows = tiny_setup(layers=1, seed=2)
    attn = model.model.layers[0].self_attn
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    fast_generate(model, [[1, 5, 9]], *rows([("music", 8)]), [0])
    q, k = attn.q_proj.weight, attn.k_proj.weight
    assert k.untyped_storage().data_ptr() == q.untyped_storage().data_ptr()  # views of one fused matrix
    release()
    assert k.untyped_storage().data_ptr() != q.untyped_storage().data_ptr()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file()


@pytest.mark.slow  # ~80 s: inductor compiles the pieces for the CPU
def test_compiled_pieces_give_the_plain_results(monkeypatch):
    """The CUDA path's compiled pieces (whole decode layer over dynamic cache buckets, the sampling step), run by
    inductor on the CPU, sample exactly what the plain functions sample."""
    from anygpt.lm.decoding import kernels as decode_kernels
    from anygpt.lm.decoding.fast import fast_generate, release

    model, _, rows = tiny_setup(layers=2, seed=0)
    spec, prompt = [("music", 300)], [[1, 5, 9, 33]]  # crosses a cache bucket
    release()
    plain = fast_generate(model, prompt, *rows(spec, sample=True), [0])
    compiled = decode_kernels.kernels(torch.device("cuda"))  # builds the compiled set; nothing runs on CUDA
    monkeypatch.setattr(decode_kernels, "kernels", lambda device: compiled)
    release()
    assert fast_generate(model, prompt, *rows(spec, sample=True), [0]) == plain
    release()


def test_chat_replies_on_the_fast_path_equal_the_python_loop():
    """Reply grammars (text, media spans in any order, a stop once the required spans exist) as tensors: greedy ids
    equal the plain loop's, each segment sampled with its own preset (speech penalises repeats, music keeps the top 7)."""
    from anygpt.lm.decoding.grammar import ReplyGrammar
    from anygpt.lm.decoding.loop import generate
    from anygpt.lm.decoding.presets import GenerationPreset

    model, layout, _ = tiny_setup(layers=2, seed=1)
    from generate_speed import setup_vocab

    _, rules = setup_vocab()
    stops = [2, layout.token_id("<eos>")]
    speech, music = layout.ranges["speech"], layout.ranges["music"]
    with torch.no_grad():  # louder tags, so that a random model opens and closes spans
        for token, scale in [(speech.bos, 4.0), (speech.eos, 6.0), (music.bos, 4.0), (music.eos, 6.0), (stops[1], 3.0)]:
            model.get_output_embeddings().weight[token] *= scale
    presets = {"text": GenerationPreset(do_sample=False, max_new_tokens=60),
               "speech": GenerationPreset(do_sample=False, repetition_penalty=1.3),
               "music": GenerationPreset(do_sample=False, top_k=7)}

    def replies():
        return [presets["text"]] * 3, [ReplyGrammar(dict(layout.ranges), rules, presets, stops, [(0, layout.base_size)],
                                                    require=need) for need in (["speech"], [], ["music"])]

    prompts = [[1, 5, 9, 33], [1, 8], [1, 40, 41, 42]]
    slow = generate(model, prompts, *replies(), [0, 1, 2], fast=False)
    fast = generate(model, prompts, *replies(), [0, 1, 2], fast=True)
    assert fast == slow
    assert slow[0].count(speech.bos) == slow[0].count(speech.eos) >= 2 and slow[0].count(music.eos) >= 2
    assert slow[1][0] == speech.bos and slow[1][-1] in stops  # a spoken reply, then the stop
