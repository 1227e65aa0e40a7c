"""Attention for packed training blocks: FlashAttention varlen kernels on CUDA, SDPA everywhere else.

``attn_implementation: packed`` registers :func:`packed_attention` with transformers. Packed batches (see
``anygpt.data.packing``) carry ``cu_seq_lens`` (document boundaries over the flattened ``[B * T]`` tokens) and
``max_length``; with them, on CUDA in half precision, each document attends only to itself through
``torch.nn.attention.varlen.varlen_attn``, with no ``[T, T]`` mask and no work on pairs across documents. Without
them (prediction, padded SFT batches, CPU, float32) the call falls back to transformers' SDPA path, whose mask
transformers builds as for ``sdpa`` (block-diagonal from the restarting ``position_ids``), so results agree.
"""

from __future__ import annotations

import inspect
import torch

NAME = "packed"


def _find_varlen():
    """``(varlen_attn, its causal keyword arguments, whether it takes ``enable_gqa``)``; None where torch lacks it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    return varlen_attn, causal, "enable_gqa" in params


_VARLEN = _find_varlen()  # looked up once: compiled code reads the global


def _kernel(query: torch.Tensor, dtype: torch.dtype):
    """The varlen kernel where it can run ``query`` computed in ``dtype`` (CUDA, half precision), else None."""
    if not query.is_cuda or dtype not in (torch.float16, torch.bfloat16):
        return None
    return _VARLEN


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     cu_seq_lens_q: torch.Tensor | None = None, max_length_q: int | None = None, **kwargs):
    """transformers attention function: ``query`` [B, H, T, D], ``key``/``value`` [B, H_kv, T, D] -> [B, T, H, D]."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    autocast = query.is_cuda and torch.is_autocast_enabled("cuda")
    dtype = torch.get_autocast_dtype("cuda") if autocast else query.dtype
    found = _kernel(query, dtype) if cu_seq_lens_q is not None and not dropout else None
    if found is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    varlen_attn, causal, gqa = found
    batch, heads, length, dim = query.shape
    if key.shape[1] != heads and not gqa:
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
        value = value.repeat_interleave(heads // value.shape[1], dim=1)
    extra = {"enable_gqa": True} if key.shape[1] != heads else {}

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(batch * length, x.shape[1], dim).to(dtype)

    cu = cu_seq_lens_q.to(device=query.device, dtype=torch.int32)
    out = varlen_attn(flat(query), flat(key), flat(value), cu, cu, max_length_q, max_length_q, scale=scaling,
                      **causal, **extra)
    return out.view(batch, length, heads, dim), None


def register() -> str:
    """Make ``packed`` a transformers attention implementation (idempotent); returns its name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME

