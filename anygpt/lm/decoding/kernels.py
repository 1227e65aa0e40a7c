"""The compute pieces of a fast decode step, compiled once per process on CUDA (plain functions elsewhere).

``kernels(device)`` hands :class:`anygpt.lm.decoding.fast.StaticLlama` its pieces: RMSNorm (with the residual sum),
RoPE on the fused q/k/v projection, the SiLU gate, the whole decoder layer for one new token per row at batch 1,
the LM head, and ``_choose`` (grammar mask, repetition penalty, filters, sampling and the loop's state update).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from anygpt.lm.decoding.gpu_sampling import filter_logits, penalize_repeats, sample


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """transformers' LlamaRMSNorm: float32 statistics, the weight applied in the input dtype."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _add_rms(hidden: Tensor, delta: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The residual sum and its RMSNorm."""
    hidden = hidden + delta
    return hidden, _rms(hidden, weight, eps)


def _qkv_rope(qkv: Tensor, cos: Tensor, sin: Tensor, heads: int, kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Queries, keys and values ``[B, H, T, D]`` from the fused projection ``[B, T, (H + 2 H_kv) D]``, with RoPE on
    queries and keys (``cos``/``sin`` ``[B, T, 1, D]``)."""
    batch, steps, _ = qkv.shape
    dim = cos.shape[-1]
    qk, v = qkv.split([(heads + kv_heads) * dim, kv_heads * dim], -1)
    qk = qk.view(batch, steps, heads + kv_heads, dim)
    first, second = qk.chunk(2, dim=-1)
    qk = qk * cos + torch.cat((-second, first), dim=-1) * sin
    q, k = qk.split([heads, kv_heads], 2)
    v = v.view(batch, steps, kv_heads, dim)
    return q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()


def _silu_mul(gate_up: Tensor) -> Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def _decode_layer(hidden: Tensor, x: Tensor, qkv_w: list[Tensor], o_w: Tensor, gate_up_w: list[Tensor], down_w: Tensor,
                  post_w: Tensor, next_w: Tensor, cos: Tensor, sin: Tensor, keys: Tensor, values: Tensor,
                  index: Tensor, bias: Tensor, heads: int, kv_heads: int, scaling: float,
                  eps: float) -> tuple[Tensor, Tensor]:
    """One decoder layer for one new token per row (``x`` is ``hidden`` normed), writing its key and value at
    cache slot ``index``; returns the residual stream and its norm by ``next_w`` (the next layer's input norm).
    ``qkv_w``/``gate_up_w`` hold the fused q/k/v (gate/up) matrix, or the separate ones.

    ``keys`` ``[B, H_kv, S, D]`` and ``values`` ``[B, H_kv, D, S]`` (transposed, so that the probability-weighted
    sum reads contiguous memory) are views of the cache's first ``S`` slots, so the writes land in it; attention
    reads them with ``bias`` ``[B, 1, 1, S]`` (0 or -inf), in float32. Written as
    plain tensor algebra so that, compiled, each matrix-vector product becomes one bandwidth-bound reduction with
    its neighbouring elementwise work fused in.
    """
    batch = x.shape[0]
    q, key, value = _qkv_rope(_project(x, qkv_w), cos, sin, heads, kv_heads)
    keys.index_copy_(2, index, key)
    values.index_copy_(3, index, value.transpose(2, 3))
    dim = q.shape[-1]
    q = q.reshape(batch, kv_heads, heads // kv_heads, dim).float()  # query heads grouped by their key head
    scores = q @ keys.float().transpose(2, 3) * scaling + bias
    out = (scores.softmax(-1) @ values.float().transpose(2, 3)).to(x.dtype)
    hidden, x = _add_rms(hidden, F.linear(out.reshape(batch, 1, heads * dim), o_w), post_w, eps)
    return _add_rms(hidden, F.linear(_silu_mul(_project(x, gate_up_w)), down_w), next_w, eps)


def _project(x: Tensor, weights: list[Tensor]) -> Tensor:
    """``x`` through the row blocks of one projection: a fused matrix, or its parts (quantized weights)."""
    return F.linear(x, weights[0]) if len(weights) == 1 else torch.cat([F.linear(x, w) for w in weights], -1)


def _head(x: Tensor, weight: Tensor) -> Tensor:
    return F.linear(x, weight).float()


def _choose(loop: Any, logits: Tensor) -> None:
    """``anygpt.lm.decoding.fast._Loop.choose`` (``loop``): grammar mask, repetition penalty, filters, sampling,
    then the state update, as one function of the loop's tensors (compiled whole on CUDA: ~200 small kernels become
    a few)."""
    p = loop.table.row_params(loop.params)
    logits = logits.masked_fill(~loop.table.mask(), float("-inf"))
    logits = penalize_repeats(logits, loop.seen > 0, p["penalty"])
    logits = filter_logits(logits, p["temperature"], p["top_k"], p["top_p"], loop.width)
    next_ids = sample(logits, p["do_sample"], loop.seeds, loop.step)
    live = ~loop.table.finished() & (loop.count < loop.budgets)
    loop.out.scatter_(1, loop.step[:, None], torch.where(live, next_ids, loop.pad_id)[:, None])
    loop.table.advance(next_ids, live)
    loop.count += live.long()
    loop.seen.scatter_reduce_(1, next_ids[:, None], live[:, None].to(torch.uint8), reduce="amax")
    loop.feed.copy_(torch.where(live, next_ids, loop.pad_id))
    loop.live.copy_(live)
    loop.step += 1


COMPILED: dict[str, object] = {}


def kernels(device: torch.device) -> dict:
    """The pieces of a step; on CUDA compiled once per process. Elementwise pieces fuse into one kernel each (a
    step is otherwise ~30 tiny kernels per layer, whose fixed cost rivals the weight reads at batch 1). The decode
    layer compiles whole, with coordinate-descent tuning, under which a product with one row (batch 1) becomes a
    tuned reduction kernel that reaches the memory bandwidth where cuBLAS does not."""
    plain = {"rms": _rms, "add_rms": _add_rms, "qkv_rope": _qkv_rope, "silu_mul": _silu_mul,
             "layer": _decode_layer, "head": _head, "choose": _choose}
    if device.type != "cuda":
        return plain
    if not COMPILED:
        import torch._dynamo

        # one compiled variant per batch size (cache buckets share it: their length is a dynamic dimension)
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        tuned = {"coordinate_descent_tuning": True}
        COMPILED.update({name: torch.compile(plain[name], dynamic=True)
                         for name in ("rms", "add_rms", "qkv_rope", "silu_mul")})
        COMPILED.update({name: torch.compile(plain[name], dynamic=False, options=tuned) for name in ("layer", "head")})
        COMPILED["choose"] = torch.compile(_choose, dynamic=False)
    return COMPILED
