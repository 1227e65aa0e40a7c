"""Fast batched decoding for LLaMA backbones: a static KV cache, CUDA-graph steps, sampling and grammar on the GPU.

:class:`StaticLlama` runs a transformers ``LlamaForCausalLM`` through its own modules and weights (no copies) with
a preallocated KV cache. A decode step reads the cache up to a bucket of 256 slots, so a step's cost follows the
sequence length, and on CUDA the whole step of each (batch, bucket) shape is replayed from a CUDA graph captured
once: no per-kernel launch overhead, no recompilation per request length.
:func:`fast_generate` is ``anygpt.lm.decoding.loop.generate`` on top of it: per-row presets, seeds and grammars, with
the repetition penalty, filtering, sampling (counter-based random numbers: a row's draws depend on its seed and
step only) and the span grammar all as tensor operations, so the host waits on the GPU only every
``sync_every`` tokens to see whether every row has finished.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from anygpt.cuda_graphs import GraphCache, capture
from anygpt.lm.decoding import kernels
from anygpt.lm.decoding.quantize import is_quantized, storage_key

BUCKET = 256
WHOLE_LAYERS = True  # decode steps through one compiled function per layer (False: the per-op path, for comparison)


def _fused(*linears) -> Tensor | None:
    """One weight matrix whose row blocks *are* the given layers' weights (their ``.data`` becomes views of it).

    A single-token step then reads q, k and v (or gate and up) with one matrix-vector product, which runs near the
    memory bandwidth where three small ones do not (a 4096 x 4096 bf16 product reaches ~40 % of it on an H100).
    No memory is added: the layers keep working, on views. Moving or casting the model breaks the sharing; it is
    checked and redone on the next call. None where a layer has a bias or a quantized weight.
    """
    weights = [linear.weight for linear in linears]
    if any(linear.bias is not None or is_quantized(linear.weight) for linear in linears):
        return None
    cached = getattr(linears[0], "_anygpt_fused", None)
    if cached is not None and all(w.data_ptr() == cached[start:].data_ptr() for w, start in
                                  zip(weights, _starts(weights))):
        return cached
    with torch.inference_mode(False):  # a normal tensor: the model may be trained afterwards
        fused = torch.cat([w.data for w in weights])
        for w, start in zip(weights, _starts(weights)):
            w.data = fused[start:start + w.shape[0]]
    linears[0]._anygpt_fused = fused
    _FUSED.append([weakref.ref(linear) for linear in linears])
    return fused


_FUSED: list[list[weakref.ref]] = []


def _unfuse() -> None:
    """Give every fused layer its own weight storage again, as the model was loaded."""
    for group in _FUSED:
        linears = [ref() for ref in group]
        if any(linear is None for linear in linears):
            continue
        with torch.inference_mode(False):
            for linear in linears:
                linear.weight.data = linear.weight.data.clone()
        linears[0].__dict__.pop("_anygpt_fused", None)
    _FUSED.clear()


def _starts(weights) -> list[int]:
    starts, total = [], 0
    for w in weights:
        starts.append(total)
        total += w.shape[0]
    return starts


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
        use_graphs = graphs and self.device.type == "cuda"
        self.graphs = GraphCache(max_graphs=self.length // BUCKET + 1) if use_graphs else None
        self.kernels = kernels.kernels(self.device)
        self.silu = getattr(cfg, "hidden_act", "silu") == "silu"
        self.fused = [(_fused(block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj),
                       _fused(block.mlp.gate_proj, block.mlp.up_proj)) for block in model.model.layers]
        # Decode steps through _decode_layer at batch 1, where its matrix-vector reductions beat cuBLAS (cuBLAS
        # does well on more rows, and each batch size would compile anew); LLaMA layers without biases only.
        linears = [[block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj, block.self_attn.o_proj,
                    block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj] for block in model.model.layers]
        self.whole_layers = WHOLE_LAYERS and batch == 1 and self.silu and all(
            m.bias is None for layer in linears for m in layer)
        self.projections = [([qkv] if qkv is not None else [m.weight for m in layer[:3]],
                             [gate_up] if gate_up is not None else [m.weight for m in layer[4:6]])
                            for (qkv, gate_up), layer in zip(self.fused, linears)]
        # values as [B, H_kv, L, D]; stored [B, H_kv, D, L] (and viewed) for the decode layer, see _decode_layer
        stored = shape[:2] + shape[:1:-1] if self.whole_layers else shape
        self.values = [torch.zeros(stored, device=self.device, dtype=self.dtype) for _ in range(layers)]
        if self.whole_layers:
            self.values = [v.transpose(2, 3) for v in self.values]

    def forward(self, tokens: Tensor, positions: Tensor, slot: Tensor, valid: Tensor) -> Tensor:
        """Logits ``[B, V]`` (float32) of the last of ``T`` new tokens written at slots ``slot .. slot+T-1``.

        Args:
            tokens: ``[B, T]`` token ids.
            positions: ``[B, T]`` RoPE positions.
            slot: 0-dim long tensor: the cache slot of the first new token (the same for every row).
            valid: ``[B, K]`` bool: which of the first ``K`` cache slots hold real tokens once these are written
                (``K`` bounds what attention reads; it must cover ``slot + T``).
        """
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
        cos, sin = cos[:, :, None], sin[:, :, None]  # [B, T, 1, D]: broadcast over heads
        k = self.kernels
        layers = list(core.layers)
        norm = layers[0].input_layernorm
        x = k["rms"](hidden, norm.weight, norm.variance_epsilon)
        if steps == 1 and self.whole_layers:
            bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, float("-inf"))
            for i, layer in enumerate(layers):
                attn, (qkv, gate_up) = layer.self_attn, self.projections[i]
                norm = layers[i + 1].input_layernorm if i + 1 < len(layers) else core.norm
                keys, values = self.keys[i][:, :, :span], self.values[i][:, :, :span].transpose(2, 3)
                if self.kernels is kernels.COMPILED:  # one compiled layer serves every cache bucket
                    for tensor, dim in ((bias, 3), (keys, 2), (values, 2)):
                        torch._dynamo.maybe_mark_dynamic(tensor, dim)
                hidden, x = k["layer"](hidden, x, qkv, attn.o_proj.weight, gate_up, layer.mlp.down_proj.weight,
                                       layer.post_attention_layernorm.weight, norm.weight, cos, sin, keys, values,
                                       index, bias, self.heads, self.kv_heads, attn.scaling, norm.variance_epsilon)
            return k["head"](x[:, -1], self.model.lm_head.weight)
        for i, layer in enumerate(layers):
            attn = layer.self_attn
            qkv, gate_up = self.fused[i]
            if qkv is not None:
                projected = F.linear(x, qkv)
            else:
                projected = torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], -1)
            q, key, v = k["qkv_rope"](projected, cos, sin, self.heads, self.kv_heads)
            self.keys[i].index_copy_(2, index, key.to(self.dtype))
            self.values[i].index_copy_(2, index, v.to(self.dtype))
            values = self.values[i][:, :, :span]
            if self.whole_layers:  # a prompt on the transposed cache: SDPA is fastest on contiguous values
                values = values.contiguous()
            out = F.scaled_dot_product_attention(q, self.keys[i][:, :, :span], values,
                                                 attn_mask=mask, scale=attn.scaling,
                                                 enable_gqa=self.kv_heads != self.heads)
            norm = layer.post_attention_layernorm
            hidden, x = k["add_rms"](hidden, attn.o_proj(out.transpose(1, 2).reshape(batch, steps, -1)),
                                     norm.weight, norm.variance_epsilon)
            if gate_up is not None and self.silu:
                delta = layer.mlp.down_proj(k["silu_mul"](F.linear(x, gate_up)))
            else:
                delta = layer.mlp(x)
            norm = layers[i + 1].input_layernorm if i + 1 < len(layers) else core.norm
            hidden, x = k["add_rms"](hidden, delta, norm.weight, norm.variance_epsilon)
        last = x[:, -1]
        return self.model.lm_head(last).float()

    def prefill(self, tokens: Tensor, positions: Tensor, valid: Tensor) -> Tensor:
        """Write a left-padded prompt block at slot 0; logits of its last token."""
        zero = torch.zeros((), dtype=torch.long, device=tokens.device)
        return self.forward(tokens, positions, zero, valid[:, : tokens.shape[1]])

    def span(self, slot: int) -> int:
        """Cache slots a step at ``slot`` reads: the bucket that covers it."""
        return min(self.length, BUCKET * (slot // BUCKET + 1))

    def step(self, tokens: Tensor, positions: Tensor, slot: int, valid: Tensor) -> Tensor:
        """One new token per row at ``slot``, from a CUDA graph per bucket on CUDA (a single step, as in teacher
        forcing; ``fast_generate`` replays whole decode steps instead)."""
        slot_tensor = torch.tensor(slot, device=tokens.device)
        args = (tokens[:, None], positions[:, None], slot_tensor, valid[:, :self.span(slot)])
        if self.graphs is None:
            return self.forward(*args)
        return self.graphs(self.forward, *args)


class _Loop:
    """The state of batched generations as persistent tensors, and its step: feed the last tokens, then mask,
    filter and sample the next ones. On CUDA a step is replayed from a graph per cache bucket (the whole step, not
    only the network), so the host only queues one replay per token. ``load`` puts a new generation into the same
    tensors, so later calls of the same batch size replay the graphs already captured."""

    def __init__(self, static: StaticLlama, pad_id: int):
        device, batch, length = static.device, static.keys[0].shape[0], static.length
        self.static, self.pad_id = static, pad_id
        self.table, self.params, self.seeds, self.budgets, self.width = None, {}, None, None, None
        self.valid = torch.zeros((batch, length), dtype=torch.bool, device=device)
        self.position = torch.zeros(batch, dtype=torch.long, device=device)
        self.feed = torch.full((batch,), pad_id, dtype=torch.long, device=device)
        self.live = torch.zeros(batch, dtype=torch.bool, device=device)
        self.slot = torch.zeros((), dtype=torch.long, device=device)
        self.step = torch.zeros(batch, dtype=torch.long, device=device)
        self.count = torch.zeros(batch, dtype=torch.long, device=device)
        self.out = torch.full((batch, length + 1), pad_id, dtype=torch.long, device=device)
        self.seen = torch.zeros((batch, static.config.vocab_size), dtype=torch.uint8, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def load(self, table, params: dict, seeds: Tensor, budgets: Tensor, valid: Tensor, position: Tensor,
             slot: int, width: int | None = None) -> None:
        """Start a new generation in these tensors (copied in place where the shapes allow, keeping the graphs)."""
        new = {**{f"table.{k}": v for k, v in _tensors(table).items()}, **{f"params.{k}": v for k, v in params.items()},
               "seeds": seeds, "budgets": budgets}
        old = {**{f"table.{k}": v for k, v in _tensors(self.table).items()},
               **{f"params.{k}": v for k, v in self.params.items()}, "seeds": self.seeds, "budgets": self.budgets}
        same = old.keys() == new.keys() and all(old[k].shape == v.shape and old[k].dtype == v.dtype
                                                for k, v in new.items())
        if same and width == self.width:
            for key, value in new.items():
                old[key].copy_(value)
        else:  # other shapes (a grammar with more stop ids, say): new tensors, so the graphs are captured again
            self.table, self.params, self.seeds, self.budgets, self.width = table, params, seeds, budgets, width
            self.graphs.clear()
        self.valid.copy_(valid)
        self.position.copy_(position)
        self.feed.fill_(self.pad_id)
        self.live.zero_()
        self.slot.fill_(slot)
        self.step.zero_()
        self.count.zero_()
        self.out.fill_(self.pad_id)
        self.seen.zero_()

    def choose(self, logits: Tensor) -> None:
        """Sample the next token of every row from ``logits`` and advance the state (no host sync)."""
        self.static.kernels["choose"](self, logits)

    def decode(self, span: int) -> None:
        """Feed the last tokens at the current slot (reading ``span`` cache slots), then choose the next ones."""
        self.position += 1
        self.valid.index_copy_(1, self.slot.view(1), self.live[:, None])
        self.choose(self.static.forward(self.feed[:, None], self.position[:, None], self.slot, self.valid[:, :span]))
        self.slot += 1

    def run_step(self, slot: int) -> None:
        span = self.static.span(slot)
        if self.valid.device.type != "cuda" or self.static.graphs is None:
            return self.decode(span)
        if span not in self.graphs:
            self.graphs[span] = self._capture(span)
        self.graphs[span].replay()

    def _capture(self, span: int) -> torch.cuda.CUDAGraph:
        state = [self.feed, self.live, self.position, self.slot, self.step, self.count, self.out, self.seen,
                 self.valid, *_tensors(self.table).values()]
        return capture(lambda: self.decode(span), self.valid.device, state)[0]

    def running(self) -> bool:
        return bool((~self.table.finished() & (self.count < self.budgets)).any())


def _tensors(table) -> dict[str, Tensor]:
    return {} if table is None else {k: v for k, v in vars(table).items() if isinstance(v, Tensor)}


def left_padded(prompts: Sequence[Sequence[int]], length: int, pad_id: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Prompts as one left-padded block ``[B, W]``, the ``[B, length]`` mask of the cache slots they fill, and
    their RoPE positions ``[B, W]`` (each prompt counts from 0)."""
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(prompts), length), dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):] = torch.as_tensor(p, dtype=torch.long)
        valid[i, width - len(p):width] = True
    return tokens, valid, (valid[:, :width].long().cumsum(1) - 1).clamp(min=0)


_CACHED: dict[str, object] = {}


def release(unfuse: bool = True) -> None:
    """Free the KV cache and CUDA graphs that ``fast_generate`` keeps for its next call.

    Args:
        unfuse: Also give the q/k/v and gate/up weights their own storage back, as loaded (for code that
            expects separate tensors; the next fast call fuses them again).
    """
    _CACHED.clear()
    if unfuse:
        _unfuse()


def _loop_for(model, batch: int, need: int, graphs: bool, pad_id: int) -> _Loop:
    """The kept loop when it fits this call (same model and weights, batch size, room), else a new one."""
    key = (id(model), batch, pad_id, graphs, tuple(storage_key(p) for p in model.parameters()))
    loop = _CACHED.get("loop")
    if _CACHED.get("key") == key and loop.static.length >= need:
        return loop
    _CACHED.clear()  # one kept loop: its cache and graphs hold device memory
    loop = _Loop(StaticLlama(model, batch, 512 * math.ceil(need / 512), graphs=graphs), pad_id)
    _CACHED.update(key=key, loop=loop)
    return loop


def fast_generate(model, prompts: Sequence[Sequence[int]], presets, grammars, seeds: Sequence[int], pad_id: int = 0,
                  sync_every: int = 8, graphs: bool = True) -> list[list[int]] | None:
    """``generate`` through :class:`StaticLlama`; None when the grammars cannot run as tensors (use ``generate``).

    Arguments and result as ``anygpt.lm.decoding.loop.generate``. The KV cache and the CUDA graphs of the last batch
    size are kept for the next call (``release()`` frees them), so graphs are captured once per process and cache
    bucket, not per request.
    """
    steps = fast_generate_stream(model, prompts, presets, grammars, seeds, pad_id, sync_every, graphs, stream=False)
    return None if steps is None else next(steps)


def fast_generate_stream(model, prompts: Sequence[Sequence[int]], presets, grammars, seeds: Sequence[int],
                         pad_id: int = 0, sync_every: int = 8, graphs: bool = True,
                         stream: bool = True) -> Iterator[list[list[int]]] | None:
    """``fast_generate`` as it goes: per row, the ids generated since the last yield, at every ``sync_every``-th
    step (where the host looks at the state anyway); ``stream=False`` yields once, at the end. None when the
    grammars cannot run as tensors. Rows are all span grammars or all chat reply grammars (``ReplyGrammar``: each
    segment of a reply samples with its own preset, as in the plain loop)."""
    from anygpt.lm.decoding.gpu_grammar import GrammarTensors
    from anygpt.lm.decoding.gpu_reply import ReplyTensors
    from anygpt.lm.decoding.grammar import ReplyGrammar

    device, rows = next(model.parameters()).device, list(grammars)
    replies = bool(rows) and all(type(g) is ReplyGrammar for g in rows)
    table = (ReplyTensors if replies else GrammarTensors).from_grammars(rows, model.config.vocab_size, device)
    return None if table is None else _fast_steps(model, table, prompts, presets, seeds, pad_id, sync_every, graphs,
                                                  stream)


@torch.inference_mode()
def _fast_steps(model, table, prompts, presets, seeds, pad_id, sync_every, graphs, stream) -> Iterator[list[list[int]]]:
    from anygpt.lm.decoding.gpu_sampling import filter_width, sampling_tensors

    device = next(model.parameters()).device
    batch, width = len(prompts), max(len(p) for p in prompts)
    budgets = torch.tensor([p.max_new_tokens for p in presets], device=device)
    most = int(budgets.max())
    loop = _loop_for(model, batch, width + most, graphs, pad_id)
    static = loop.static
    tokens, valid, positions = (t.to(device) for t in left_padded(prompts, static.length, pad_id))
    seeds_t = torch.tensor([int(s) for s in seeds], dtype=torch.long, device=device)
    segments = getattr(table, "presets", [])
    params = table.segment_params(batch, device) if segments else sampling_tensors(presets, device)
    loop.load(table, params, seeds_t, budgets, valid, positions[:, -1], width,
              filter_width([*presets, *segments], model.config.vocab_size))
    loop.seen.scatter_reduce_(1, tokens, valid[:, :width].to(torch.uint8), reduce="amax")
    loop.choose(static.prefill(tokens, positions, loop.valid))
    sent = [0] * batch
    for step in range(1, most):
        if step % sync_every == 0:
            if not loop.running():
                break
            if stream:
                sent = yield from _new_ids(loop, sent)
        loop.run_step(width + step - 1)
    yield from _new_ids(loop, sent)


def _new_ids(loop: _Loop, sent: list[int]) -> Iterator[list[list[int]]]:
    """Yield each row's ids past ``sent``; returns the new counts."""
    counts = loop.count.tolist()
    low, high = min(sent), max(counts)
    rows = loop.out[:, low:high].tolist()
    yield [row[n - low:c - low] for row, n, c in zip(rows, sent, counts)]
    return counts
