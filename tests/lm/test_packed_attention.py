"""The ``packed`` attention implementation: document boundaries and the varlen path's plumbing (CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anygpt.data.packing import collate_packed, cu_seq_lens
from anygpt.lm import packed_attention
from anygpt.lm.unified import UnifiedLM


def test_cu_seq_lens_counts_each_document_and_the_padding_tail():
    bounds, longest = cu_seq_lens([[3, 2], [4], [6]], width=6)
    assert bounds.tolist() == [0, 3, 5, 6, 10, 12, 18] and bounds.dtype == torch.int32
    assert longest == 6


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, is_causal=False):
    """Each document through SDPA on its own: what FlashAttention's varlen kernel computes."""
    assert is_causal and torch.equal(cu_q, cu_k) and max_q == max_k
    assert max_q == max(int(b - a) for a, b in zip(cu_q[:-1], cu_q[1:]))
    reference_varlen.calls += 1
    outs = []
    for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        one = [x[a:b].transpose(0, 1) for x in (q, k, v)]
        outs.append(F.scaled_dot_product_attention(*one, is_causal=True, scale=scale).transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_varlen_path_gives_each_document_its_logits_alone(monkeypatch, kv_heads):
    backbone = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=kv_heads, max_position_embeddings=256)
    model = UnifiedLM(backbone=backbone, tokenizer="tiny", attn_implementation="packed").eval()
    assert model.backbone.config._attn_implementation == "packed"
    reference_varlen.calls = 0
    monkeypatch.setattr(packed_attention, "_kernel",
                        lambda query, dtype: (reference_varlen, {"is_causal": True}, False))
    torch.manual_seed(0)
    docs = [(torch.randint(0, 300, (n,)).tolist(), "a") for n in (7, 4, 10)]
    batch = collate_packed([docs[:2], docs[2:]], task_names=["a"])
    with torch.no_grad():
        losses, valid = model._token_losses(batch)
        alone = [model.backbone(input_ids=torch.tensor([ids])).logits[0] for ids, _ in docs]
    assert reference_varlen.calls == backbone["num_hidden_layers"]
    for row, start, (ids, _), logits in [(0, 0, docs[0], alone[0]), (0, 7, docs[1], alone[1]),
                                         (1, 0, docs[2], alone[2])]:
        own = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")
        torch.testing.assert_close(losses[row, start:start + len(ids) - 1], own, atol=1e-5, rtol=1e-5)
    assert valid.sum().item() == 6 + 3 + 9


def test_without_boundaries_or_on_cpu_it_is_sdpa():
    backbone = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=256)
    packed = UnifiedLM(backbone=backbone, tokenizer="tiny", attn_implementation="packed").eval()
    sdpa = UnifiedLM(backbone=backbone, tokenizer="tiny", attn_implementation="sdpa").eval()
    ids = torch.randint(0, 300, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding, as in generation
    with torch.no_grad():
        torch.testing.assert_close(packed.backbone(input_ids=ids, attention_mask=mask).logits,
                                   sdpa.backbone(input_ids=ids, attention_mask=mask).logits)
    assert packed_attention._kernel(ids.float(), torch.bfloat16) is None  # CPU tensors never reach the kernel
