"""StaticLlama (static KV cache, bucketed attention) against the transformers model it runs (CPU, float32)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from anygpt.lm.fast_decode import BUCKET, StaticLlama


def llama(kv_heads: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=1024)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_teacher_forced_logits_equal_the_transformers_model(kv_heads):
    model = llama(kv_heads)
    prompts = [[1, 5, 9, 33, 2, 7], [1, 8], [1, 40, 41, 42]]
    follow = [[11, 12, 13], [21, 22, 23], [31, 32, 33]]
    width, batch = max(map(len, prompts)), len(prompts)
    static = StaticLlama(model, batch, width + 300)  # the steps cross a bucket boundary below
    assert static.length == 2 * BUCKET
    tokens = torch.zeros((batch, width), dtype=torch.long)
    valid = torch.zeros((batch, static.length), dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):] = torch.tensor(p)
        valid[i, width - len(p):width] = True
    positions = (valid[:, :width].long().cumsum(1) - 1).clamp(min=0)
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


def test_fast_generate_greedy_equals_the_python_loop_with_grammars():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from generate_speed import job, setup_vocab

    from anygpt.lm.fast_decode import fast_generate
    from anygpt.lm.generation import generate

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49418, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
    model = LlamaForCausalLM(config).eval()
    layout, rules = setup_vocab()
    stops = [2, layout.token_id("<eos>")]
    prompts = [[1, 5, 9, 33], [1, 8], [1, 40, 41, 42, 43, 44], [1, 7, 7]]
    rows = [job(layout, rules, target, budget, stops) for target, budget in
            [("image", 40), ("music", 30), ("speech", 20), ("text", 12)]]
    for preset, grammar in rows:
        preset.do_sample, grammar.min_new_tokens, preset.min_new_tokens = False, 0, 0
    slow = generate(model, prompts, [r[0] for r in rows], [r[1] for r in rows], [0, 1, 2, 3])
    rows = [job(layout, rules, target, budget, stops) for target, budget in
            [("image", 40), ("music", 30), ("speech", 20), ("text", 12)]]
    for preset, grammar in rows:
        preset.do_sample, grammar.min_new_tokens, preset.min_new_tokens = False, 0, 0
    fast = fast_generate(model, prompts, [r[0] for r in rows], [r[1] for r in rows], [0, 1, 2, 3])
    assert fast == slow
    image = layout.ranges["image"]
    assert fast[0][fast[0].index(image.bos) + 33] == image.eos  # 32 codes, then the end tag
