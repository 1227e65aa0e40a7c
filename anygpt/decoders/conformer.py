"""The network inside SoundStorm: a Conformer over frames, with the parameter names of AnyGPT's checkpoint.

The module tree reproduces the state-dict keys of the SoundStorm that AnyGPT vendors (lucidrains' Conformer with the
convolution module split into ``net1`` / ``ds_conv`` / ``net2``); ``Identity`` slots keep the original's
``Sequential`` indices where it had ``Rearrange`` or dropout layers. Pointwise convolutions run as matmuls on
channels-last tensors, and attention uses ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding in float32 (cos/sin ``[N, dim_head]``), cast back to ``x``'s dtype."""
    xf = x.float()
    return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)


class _Rotary(nn.Module):
    """cos/sin tables of the rotary embedding over the whole head dimension, positions 0..N-1."""

    def __init__(self, dim_head: int, theta: float = 10000.0):
        super().__init__()
        self.dim_head, self.theta = dim_head, theta
        self.register_buffer("inv_freq", self.make_inv_freq(), persistent=False)

    def make_inv_freq(self, device=None) -> Tensor:
        exponents = torch.arange(0, self.dim_head, 2, device=device).float() / self.dim_head
        return 1.0 / (self.theta ** exponents)

    def forward(self, length: int) -> tuple[Tensor, Tensor]:
        inv_freq = self.inv_freq
        if inv_freq.dtype != torch.float32:  # model.to(bfloat16) casts buffers too; rotary stays float32
            inv_freq = self.make_inv_freq(inv_freq.device)
        freqs = torch.outer(torch.arange(length, device=inv_freq.device, dtype=torch.float32), inv_freq)
        freqs = torch.cat((freqs, freqs), dim=-1)
        return freqs.cos(), freqs.sin()


class _Scaled(nn.Module):
    def __init__(self, scale: float, fn: nn.Module):
        super().__init__()
        self.fn, self.scale = fn, scale

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x) * self.scale


class _PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, *args) -> Tensor:
        return self.fn(self.norm(x), *args)


class ChanLayerNorm(nn.Module):
    """Normalise over channels with a gain only; the variance is clamped, not offset, by eps."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:  # x [B, N, channels] (channels last here)
        eps = 1e-6 if x.dtype == torch.float32 else 1e-4
        xf = x.float()
        var, mean = torch.var_mean(xf, dim=-1, unbiased=False, keepdim=True)
        return ((xf - mean) * var.clamp(min=eps).rsqrt() * self.gamma.view(-1).float()).to(x.dtype)


class FeedForward(nn.Module):
    """Linear -> Swish -> Linear (indices 0 and 3 as in the original, whose dropouts are 0)."""

    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult), nn.SiLU(), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Multi-head self-attention with rotary q/k and an optional key-padding mask."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim)

    def forward(self, x: Tensor, mask: Tensor | None, rotary: tuple[Tensor, Tensor]) -> Tensor:
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, self.heads, self.dim_head).transpose(1, 2)
        k, v = self.to_kv(x).view(b, n, 2, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        q, k = _apply_rotary(q, *rotary), _apply_rotary(k, *rotary)
        key_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # scale dim_head ** -0.5
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _DepthwiseConv(nn.Module):
    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.padding = (kernel_size // 2, kernel_size // 2 - (kernel_size + 1) % 2)
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:  # x [B, N, C] -> [B, N, C]
        x = x.transpose(1, 2)
        if mask is not None:
            x = x.masked_fill(~mask[:, None, :], 0.0)
        out = self.conv(F.pad(x, self.padding))
        if mask is not None:
            out = out.masked_fill(~mask[:, None, :], 0.0)
        return out.transpose(1, 2)


class ConvModule(nn.Module):
    """LN -> pointwise conv -> GLU -> depthwise conv -> Swish -> ChanLayerNorm -> pointwise conv.

    Runs channels-last (pointwise convs as matmuls); the Identity slots keep the original's Sequential indices,
    where ``Rearrange`` layers stood.
    """

    def __init__(self, dim: int, expansion_factor: int, kernel_size: int):
        super().__init__()
        inner = dim * expansion_factor
        self.net1 = nn.Sequential(nn.LayerNorm(dim), nn.Identity(), nn.Conv1d(dim, inner * 2, 1))
        self.ds_conv = _DepthwiseConv(inner, kernel_size)
        self.net2 = nn.Sequential(nn.SiLU(), ChanLayerNorm(inner), nn.Conv1d(inner, dim, 1))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        norm, _, expand = self.net1
        swish, chan_norm, project = self.net2
        x = F.linear(norm(x), expand.weight.squeeze(-1), expand.bias)
        x = self.ds_conv(F.glu(x, dim=-1), mask)
        return F.linear(chan_norm(swish(x)), project.weight.squeeze(-1), project.bias)


class ConformerBlock(nn.Module):
    def __init__(self, dim, heads, dim_head, ff_mult, conv_expansion_factor, conv_kernel_size):
        super().__init__()
        self.ff1 = _Scaled(0.5, _PreNorm(dim, FeedForward(dim, ff_mult)))
        self.attn = _PreNorm(dim, Attention(dim, heads, dim_head))
        self.conv = ConvModule(dim, conv_expansion_factor, conv_kernel_size)
        self.ff2 = _Scaled(0.5, _PreNorm(dim, FeedForward(dim, ff_mult)))
        self.post_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor | None, rotary: tuple[Tensor, Tensor]) -> Tensor:
        x = x + self.ff1(x)
        x = x + self.attn(x, mask, rotary)
        x = x + self.conv(x, mask)
        x = x + self.ff2(x)
        return self.post_norm(x)


class _Conformer(nn.Module):
    def __init__(self, depth: int, dim_head: int, **block):
        super().__init__()
        self.layers = nn.ModuleList(ConformerBlock(dim_head=dim_head, **block) for _ in range(depth))
        self.rotary_emb = _Rotary(dim_head)

    def forward(self, x: Tensor, mask: Tensor | None, rotary: tuple[Tensor, Tensor] | None = None) -> Tensor:
        rotary = self.rotary_emb(x.shape[1]) if rotary is None else rotary
        for layer in self.layers:
            x = layer(x, mask, rotary)
        return x


class _LevelProjection(nn.Module):
    """One ``[dim, C]`` projection per acoustic level (the original's EinMix)."""

    def __init__(self, levels: int, dim: int, codes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(levels, dim, codes).uniform_(-dim**-0.5, dim**-0.5))
        self.bias = nn.Parameter(torch.zeros(1, 1, levels, codes))

    def forward(self, x: Tensor) -> Tensor:  # [B, N, levels, dim] -> [B, N, levels, codes]
        return torch.einsum("bnqd,qdc->bnqc", x, self.weight) + self.bias


class SoundStormNetwork(nn.Module):
    """The original's ConformerWrapper: acoustic ids ``[B, N*Q]`` + semantic condition -> logits ``[B, N, Q, C]``."""

    def __init__(self, dim, depth, heads, dim_head, ff_mult, conv_kernel_size, conv_expansion_factor,
                 codebook_size, num_quantizers):
        super().__init__()
        self.codebook_size, self.num_quantizers = codebook_size, num_quantizers
        self.conformer = _Conformer(depth, dim_head, dim=dim, heads=heads, ff_mult=ff_mult,
                                    conv_expansion_factor=conv_expansion_factor, conv_kernel_size=conv_kernel_size)
        self.code_embeds = nn.Embedding((codebook_size + 1) * num_quantizers, dim)
        self.register_buffer("quantizer_offsets", self.make_offsets(), persistent=False)
        self.heads = nn.Sequential(nn.Linear(dim, dim * num_quantizers))
        self.to_logits = nn.Sequential(nn.LayerNorm(dim), nn.Identity(),
                                       _LevelProjection(num_quantizers, dim, codebook_size))

    def make_offsets(self, device=None) -> Tensor:
        return torch.arange(self.num_quantizers, device=device) * (self.codebook_size + 1)

    def forward(self, ids: Tensor, cond: Tensor, mask: Tensor | None = None,
                rotary: tuple[Tensor, Tensor] | None = None) -> Tensor:
        b, n, q = cond.shape[0], cond.shape[1], self.num_quantizers
        x = self.code_embeds(ids.view(b, n, q) + self.quantizer_offsets).sum(dim=2) + cond
        x = self.conformer(x, mask, rotary)
        levels = self.heads(x).view(b, n, q, -1)  # frame features split level-major
        norm, _, project = self.to_logits
        return project(norm(levels))
