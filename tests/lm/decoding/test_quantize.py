"""int8 weight-only backbones (torchao): the fast decode paths against the quantized transformers model."""

from __future__ import annotations

import pytest
import torch

from anygpt import AnyGPTError
from anygpt.lm.decoding.fast import StaticLlama, left_padded

pytest.importorskip("torchao", reason="quantization needs torchao (pip install 'anygpt[quant]')")

from anygpt.lm.decoding.quantize import is_quantized, quantize_backbone  # noqa: E402

from .test_fast_decode import llama, tiny_setup  # noqa: E402


@pytest.mark.parametrize("rows", [1, 2])  # batch 1: the decode layer on separate int8 weights; 2: transformers' modules
def test_quantized_teacher_forcing_equals_the_quantized_transformers_model(rows):
    model = llama(kv_heads=2)
    plain = model.lm_head(torch.ones(1, 64)).detach()
    quantize_backbone(model, "int8")
    attn = model.model.layers[0].self_attn
    assert is_quantized(attn.q_proj.weight) and is_quantized(model.lm_head.weight)
    assert not is_quantized(model.model.embed_tokens.weight)
    quantized = model.lm_head(torch.ones(1, 64)).detach()
    assert 0 < (quantized - plain).abs().max() < 0.05 * plain.abs().max()  # int8 rounding: close, not equal
    prompts, follow = [[1, 5, 9, 33, 2], [1, 8]][:rows], [[11, 12], [21, 22]][:rows]
    width = max(map(len, prompts))
    static = StaticLlama(model, rows, width + 8)
    assert static.fused[0] == (None, None) and static.whole_layers == (rows == 1)
    tokens, valid, positions = left_padded(prompts, static.length)
    with torch.no_grad():
        got = [static.prefill(tokens, positions, valid)]
        position = positions[:, -1]
        for step in range(2):
            position = position + 1
            valid[:, width + step] = True
            got.append(static.step(torch.tensor([f[step] for f in follow]), position, width + step, valid))
        for i, p in enumerate(prompts):
            reference = model(torch.tensor([p + follow[i]])).logits[0]
            for step in range(3):
                torch.testing.assert_close(got[step][i], reference[len(p) - 1 + step], atol=1e-4, rtol=1e-4)


def test_quantized_fast_generate_equals_the_python_loop():
    from anygpt.lm.decoding.fast import fast_generate, release
    from anygpt.lm.decoding.loop import generate

    model, _, rows = tiny_setup(layers=2, seed=3)
    quantize_backbone(model, "int8")
    release()
    for prompts, spec in (([[1, 5, 9, 33]], [("music", 24)]), ([[1, 8], [1, 40, 41]], [("speech", 16), ("image", 40)])):
        seeds = list(range(len(prompts)))
        assert fast_generate(model, prompts, *rows(spec), seeds) == generate(model, prompts, *rows(spec), seeds, fast=False)
    release()


def test_unified_lm_quantizes_for_prediction_only():
    from anygpt.lm.unified import UnifiedLM

    backbone = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=256)
    model = UnifiedLM(backbone=backbone, tokenizer="tiny", quantize="int8")
    assert is_quantized(model.backbone.model.layers[0].mlp.down_proj.weight)
    with pytest.raises(AnyGPTError, match="quantize: int8 weights are for predict and chat"):
        model.configure_optimizers()
    with pytest.raises(AnyGPTError, match="quantize: 'int4' is not a known scheme"):
        UnifiedLM(backbone=backbone, tokenizer="tiny", quantize="int4")


def test_tiny_predict_with_int8_weights(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    from anygpt.cli import main

    root = Path(__file__).resolve().parents[3]
    monkeypatch.chdir(tmp_path)
    main(["predict", "--config", str(root / "configs" / "tiny.yaml"), "--model.quantize", "int8",
          "--data.init_args.requests", json.dumps(["text|music|A calm piano piece", "text|image|A red kite"])])
    lines = [json.loads(l) for l in (tmp_path / "outputs" / "tiny" / "predictions.jsonl").read_text().splitlines()]
    assert [l["status"] for l in lines] == ["ok", "ok"]
