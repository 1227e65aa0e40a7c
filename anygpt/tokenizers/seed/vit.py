"""EVA ViT-g/14 as BLIP-2 cuts it (39 blocks, no final norm): the image encoder of the SEED-2 tokenizer.

Tensor names are those of LAVIS ``eva_vit_g.pth`` (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.{i}.{norm1,attn.{qkv,q_bias,v_bias,proj},norm2,mlp.{fc1,fc2}}``), so the file loads as it is.
The operation order follows the reference where it changes rounding: queries are scaled before ``q @ k``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Mlp(nn.Module):
    """Two-layer perceptron with exact GELU (``fc1`` -> GELU -> ``fc2``), shared by the EVA and decoder blocks.

    Args:
        width: Input and output features.
        hidden: Hidden features.
    """

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EvaAttention(nn.Module):
    """EVA self-attention: one fused ``qkv`` projection whose bias is ``cat(q_bias, 0, v_bias)`` (no key bias).

    Args:
        width: Token width.
        heads: Attention heads (``width`` must be a multiple).
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if q.dtype in (torch.float16, torch.bfloat16):  # fused kernels; float32 keeps the reference's rounding
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            q = q * self.scale  # before the product, as the reference (the rounding differs from scaling after)
            out = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class EvaBlock(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6, no layer scale).

    Args:
        width: Token width.
        heads: Attention heads.
        mlp_hidden: Hidden width of the MLP (``int(width * mlp_ratio)``).
    """

    def __init__(self, width: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = EvaAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, mlp_hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: a strided convolution, ``[B, 3, S, S]`` to ``[B, (S/p)^2, width]``."""

    def __init__(self, patch_size: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)


class EvaViT(nn.Module):
    """The EVA ViT-g trunk: patch embedding, CLS token, absolute position embedding, ``depth`` blocks.

    The output is the raw output of the last block (BLIP-2 keeps 39 of EVA-CLIP-g's 40 blocks and drops the
    final norm); ``ln_vision`` of the tokenizer normalises it.

    Args:
        image_size: Input side in pixels (224).
        patch_size: Patch side in pixels (14).
        width: Token width (1408).
        depth: Number of blocks (39).
        heads: Attention heads (16).
        mlp_ratio: MLP hidden width over ``width``, truncated to an int (4.3637 gives 6144).
    """

    def __init__(self, image_size: int = 224, patch_size: int = 14, width: int = 1408, depth: int = 39,
                 heads: int = 16, mlp_ratio: float = 4.3637):
        super().__init__()
        self.image_size = image_size
        tokens = (image_size // patch_size) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, width))
        self.patch_embed = PatchEmbed(patch_size, width)
        self.blocks = nn.ModuleList(EvaBlock(width, heads, int(width * mlp_ratio)) for _ in range(depth))

    def forward(self, pixels: Tensor) -> Tensor:
        """``[B, 3, S, S]`` normalised pixels to ``[B, 1 + (S/p)^2, width]`` tokens (CLS first)."""
        x = self.patch_embed(pixels)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x
