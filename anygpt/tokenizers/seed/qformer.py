"""SEED's causal Q-Former: the query path of BLIP-2's BERT Q-Former, with a causal mask over 32 queries.

Only what the tokenizer runs is built: the query embedding LayerNorm, per layer the query self-attention,
cross-attention to the image tokens on every ``cross_attention_freq``-th layer (0, 2, 4, ...), and the query
feed-forward (``intermediate_query`` / ``output_query``). The text side (word and position embeddings, the text
feed-forward, the LM head) is absent, as in the reference, where it is set to None. Tensor names are the
original ones under ``Qformer.bert``. BERT post-LN, LayerNorm eps 1e-12, exact GELU; attention scores are
divided by sqrt(head_dim) and then get the additive mask, as the reference computes them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

#: The reference makes the self-attention causal only when exactly this many queries come in.
CAUSAL_QUERIES = 32
#: BERT's maximum position count: the length of the (unused) ``position_ids`` buffer kept in the checkpoint.
MAX_POSITIONS = 512


def causal_mask(length: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """The additive self-attention mask ``[length, length]``: 0 where query i may see j <= i, -10000 elsewhere.

    Built as the reference builds it, ``(1 - lower_triangular) * -10000``, so allowed entries are ``-0.0``.
    """
    ones = torch.ones(length, length, dtype=dtype, device=device)
    return (1.0 - torch.tril(ones)) * -10000.0


class BertSelfAttention(nn.Module):
    """Multi-head attention of the queries over ``context`` (themselves, or the image tokens).

    Args:
        hidden: Query width.
        heads: Attention heads.
        context_width: Width of the keys' and values' source (``hidden``, or the ViT width for cross-attention).
    """

    def __init__(self, hidden: int, heads: int, context_width: int):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(context_width, hidden)
        self.value = nn.Linear(context_width, hidden)

    def _split(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(context)), self._split(self.value(context))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores + mask
        out = torch.matmul(scores.softmax(dim=-1), v).permute(0, 2, 1, 3).contiguous()
        return out.view(out.shape[0], out.shape[1], -1)


class BertResidualOutput(nn.Module):
    """``LayerNorm(dense(x) + residual)``: the post-LN output of an attention or feed-forward sub-layer."""

    def __init__(self, inner: int, hidden: int):
        super().__init__()
        self.dense = nn.Linear(inner, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    """Attention sub-layer: ``self`` (the attention proper) then ``output`` (dense + residual + LayerNorm)."""

    def __init__(self, hidden: int, heads: int, context_width: int):
        super().__init__()
        self.self = BertSelfAttention(hidden, heads, context_width)
        self.output = BertResidualOutput(hidden, hidden)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.output(self.self(x, context, mask), x)


class BertIntermediate(nn.Module):
    """First half of the feed-forward: ``GELU(dense(x))``."""

    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.dense = nn.Linear(hidden, inner)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.dense(x))


class QFormerLayer(nn.Module):
    """One Q-Former layer on the query path: self-attention, optional cross-attention, query feed-forward.

    Args:
        hidden: Query width (768).
        heads: Attention heads (12).
        intermediate: Feed-forward width (3072).
        vision_width: Width of the image tokens (1408).
        cross_attention: Whether this layer attends to the image tokens.
    """

    def __init__(self, hidden: int, heads: int, intermediate: int, vision_width: int, cross_attention: bool):
        super().__init__()
        self.attention = BertAttention(hidden, heads, hidden)
        self.crossattention = BertAttention(hidden, heads, vision_width) if cross_attention else None
        self.intermediate_query = BertIntermediate(hidden, intermediate)
        self.output_query = BertResidualOutput(intermediate, hidden)

    def forward(self, x: Tensor, image: Tensor, mask: Tensor | None) -> Tensor:
        x = self.attention(x, x, mask)
        if self.crossattention is not None:
            x = self.crossattention(x, image)  # unmasked: every query sees every image token
        return self.output_query(self.intermediate_query(x), x)


class QFormerEmbeddings(nn.Module):
    """Query embeddings: only a LayerNorm (word and position embeddings are deleted in the reference).

    ``position_ids`` is unused; it is a persistent buffer because the released checkpoint holds it.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.register_buffer("position_ids", torch.arange(MAX_POSITIONS).unsqueeze(0))
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, query_embeds: Tensor) -> Tensor:
        return self.LayerNorm(query_embeds)


class QFormerEncoder(nn.Module):
    """The stack of layers, named ``layer`` as in BERT."""

    def __init__(self, layers: list[QFormerLayer]):
        super().__init__()
        self.layer = nn.ModuleList(layers)


class QFormerBert(nn.Module):
    """``Qformer.bert``: embeddings and encoder; ``forward`` returns the last hidden state of the queries.

    Args:
        hidden: Query width (768).
        layers: Number of layers (12).
        heads: Attention heads (12).
        intermediate: Feed-forward width (3072).
        vision_width: Width of the image tokens (1408).
        cross_attention_freq: Cross-attention sits in layers whose index is a multiple of this (2).
    """

    def __init__(self, hidden: int = 768, layers: int = 12, heads: int = 12, intermediate: int = 3072,
                 vision_width: int = 1408, cross_attention_freq: int = 2):
        super().__init__()
        self.embeddings = QFormerEmbeddings(hidden)
        self.encoder = QFormerEncoder([
            QFormerLayer(hidden, heads, intermediate, vision_width, i % cross_attention_freq == 0)
            for i in range(layers)
        ])

    def forward(self, query_embeds: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        """``[B, Q, hidden]`` queries attending to ``[B, N, vision_width]`` image tokens -> ``[B, Q, hidden]``.

        The self-attention is causal (query i sees queries j <= i) when Q is 32, bidirectional otherwise.
        """
        x = self.embeddings(query_embeds)
        n = x.shape[1]
        mask = causal_mask(n, x.dtype, x.device) if n == CAUSAL_QUERIES else None
        for layer in self.encoder.layer:
            x = layer(x, encoder_hidden_states, mask)
        return x


class CausalQFormer(nn.Module):
    """``Qformer``: a holder for ``bert`` (the reference's ``BertLMHeadModel`` without its ``cls`` head)."""

    def __init__(self, **kwargs):
        super().__init__()
        self.bert = QFormerBert(**kwargs)
