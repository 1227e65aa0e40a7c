"""Fast batched decoding for LLaMA backbones: a static KV cache, CUDA-graph steps, sampling and grammar on the GPU.

:class:`StaticLlama` runs a transformers ``LlamaForCausalLM`` through its own modules and weights (no copies) with
a preallocated KV cache. A decode step reads the cache up to a bucket of 256 slots, so a step's cost follows the
sequence length, and on CUDA each (batch, bucket) shape is replayed from a CUDA graph captured once
(``anygpt.decoders.cuda_graphs.GraphCache``): no per-kernel launch overhead, no recompilation per request length.
:func:`fast_generate` is ``anygpt.lm.generation.generate`` on top of it: per-row presets, seeds and grammars, with
the repetition penalty, filtering, sampling (counter-based random numbers: a row's draws depend on its seed and
step only) and the span grammar all as tensor operations, so the host waits on the GPU only every
``sync_every`` tokens to see whether every row has finished.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from anygpt.decoders.cuda_graphs import GraphCache

BUCKET = 256


class StaticLlama:
    """A LLaMA causal LM with a static KV cache for ``batch`` rows of up to ``length`` tokens.

    Args:
        model: A transformers ``LlamaForCausalLM`` (its modules are called as they are).
        batch: Rows.
        length: Cache slots per row (prompt width + new tokens).
        graphs: Replay decode steps from CUDA graphs (CUDA only).
    """

    def __init__(self, model, batch: int, length: int, graphs: bool = True):
        self.model, self.config = model, model.config
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        cfg = self.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.length = BUCKET * math.ceil(length / BUCKET)
        shape = (batch, self.kv_heads, self.length, self.head_dim)
        layers = cfg.num_hidden_layers
        self.keys = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(layers)]
        self.values = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(layers)]
        self.graphs = GraphCache(max_graphs=self.length // BUCKET + 1) if graphs and self.device.type == "cuda" else None

    def forward(self, tokens: Tensor, positions: Tensor, slot: Tensor, valid: Tensor) -> Tensor:
        """Logits ``[B, V]`` (float32) of the last of ``T`` new tokens written at slots ``slot .. slot+T-1``.

        Args:
            tokens: ``[B, T]`` token ids.
            positions: ``[B, T]`` RoPE positions.
            slot: 0-dim long tensor: the cache slot of the first new token (the same for every row).
            valid: ``[B, K]`` bool: which of the first ``K`` cache slots hold real tokens once these are written
                (``K`` bounds what attention reads; it must cover ``slot + T``).
        """
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        core = self.model.model
        hidden = core.embed_tokens(tokens)
        cos, sin = core.rotary_emb(hidden, positions)
        batch, steps = tokens.shape
        span = valid.shape[1]
        index = slot + torch.arange(steps, device=tokens.device)
        keys = torch.arange(span, device=tokens.device)
        causal = keys[None, None, None, :] <= index[None, None, :, None]
        # A query always sees its own slot, so a padding query has a key and writes no NaN into the cache.
        mask = (valid[:, None, None, :] & causal) | (keys[None, None, None, :] == index[None, None, :, None])
        for i, layer in enumerate(core.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(batch, steps, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(batch, steps, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(batch, steps, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            self.keys[i].index_copy_(2, index, k.to(self.dtype))
            self.values[i].index_copy_(2, index, v.to(self.dtype))
            out = F.scaled_dot_product_attention(q, self.keys[i][:, :, :span], self.values[i][:, :, :span],
                                                 attn_mask=mask, scale=attn.scaling,
                                                 enable_gqa=self.kv_heads != self.heads)
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(batch, steps, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        last = core.norm(hidden[:, -1])
        return self.model.lm_head(last).float()

    def prefill(self, tokens: Tensor, positions: Tensor, valid: Tensor) -> Tensor:
        """Write a left-padded prompt block at slot 0; logits of its last token."""
        zero = torch.zeros((), dtype=torch.long, device=tokens.device)
        return self.forward(tokens, positions, zero, valid[:, : tokens.shape[1]])

    def step(self, tokens: Tensor, positions: Tensor, slot: int, valid: Tensor) -> Tensor:
        """One new token per row at ``slot``; the attention reads the bucket of slots that covers it."""
        span = min(self.length, BUCKET * (slot // BUCKET + 1))
        args = (tokens[:, None], positions[:, None], torch.tensor(slot, device=tokens.device), valid[:, :span])
        if self.graphs is None:
            return self.forward(*args)
        return self.graphs(self.forward, *args)


@torch.inference_mode()
def fast_generate(model, prompts: Sequence[Sequence[int]], presets, grammars, seeds: Sequence[int], pad_id: int = 0,
                  sync_every: int = 8, graphs: bool = True) -> list[list[int]] | None:
    """``generate`` through :class:`StaticLlama`; None when the grammars cannot run as tensors (use ``generate``).

    Arguments and result as ``anygpt.lm.generation.generate``.
    """
    from anygpt.lm.gpu_grammar import GrammarTensors
    from anygpt.lm.gpu_sampling import filter_logits, penalize_repeats, sample, sampling_tensors

    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    table = GrammarTensors.from_grammars(list(grammars), vocab, device)
    if table is None:
        return None
    batch, width = len(prompts), max(len(p) for p in prompts)
    budgets = torch.tensor([p.max_new_tokens for p in presets], device=device)
    most = int(budgets.max())
    static = StaticLlama(model, batch, width + most, graphs=graphs)
    tokens = torch.full((batch, width), pad_id, dtype=torch.long)
    valid = torch.zeros((batch, static.length), dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):] = torch.as_tensor(p, dtype=torch.long)
        valid[i, width - len(p):width] = True
    tokens, valid = tokens.to(device), valid.to(device)
    positions = (valid[:, :width].long().cumsum(1) - 1).clamp(min=0)
    seen = torch.zeros((batch, vocab), dtype=torch.uint8, device=device)  # amax scatter: duplicates never clear
    seen.scatter_reduce_(1, tokens, valid[:, :width].to(torch.uint8), reduce="amax")
    params = sampling_tensors(presets, device)
    seeds_t = torch.tensor([int(s) for s in seeds], dtype=torch.long, device=device)
    out = torch.full((batch, most), pad_id, dtype=torch.long, device=device)
    count = torch.zeros(batch, dtype=torch.long, device=device)
    logits = static.prefill(tokens, positions, valid)
    position = positions[:, -1]
    for step in range(most):
        logits = logits.masked_fill(~table.mask(), float("-inf"))
        logits = penalize_repeats(logits, seen > 0, params["penalty"])
        logits = filter_logits(logits, params["temperature"], params["top_k"], params["top_p"])
        step_t = torch.full((batch,), step, dtype=torch.long, device=device)
        next_ids = sample(logits, params["do_sample"], seeds_t, step_t)
        live = ~table.finished() & (count < budgets)
        out[:, step] = torch.where(live, next_ids, out[:, step])
        table.advance(next_ids, live)
        count += live.long()
        seen.scatter_reduce_(1, next_ids[:, None], live[:, None].to(torch.uint8), reduce="amax")
        if (step + 1) % sync_every == 0 or step + 1 == most:
            if not bool((~table.finished() & (count < budgets)).any()):
                break
        position = position + 1
        valid[:, width + step] = live
        logits = static.step(torch.where(live, next_ids, torch.full_like(next_ids, pad_id)), position,
                             width + step, valid)
    lengths = count.tolist()
    return [row[:n] for row, n in zip(out.tolist(), lengths)]
