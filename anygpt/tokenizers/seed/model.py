"""The SEED-2 tokenizer network (``Blip2QformerQuantizer`` at inference): image -> 32 codes -> 1024-d embedding.

Top-level tensor names are the reference's: ``visual_encoder.*`` (from ``eva_vit_g.pth``), and ``ln_vision``,
``query_tokens``, ``Qformer.*``, ``encode_task_layer``, ``quantize.embedding``, ``decode_task_layer``,
``pos_embed`` + ``blocks`` (built and saved, unused at inference), ``pos_embed_image`` + ``blocks_image``,
``image_down`` and ``distill_image_proj`` (from ``seed_quantizer.pt``).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anygpt import AnyGPTError
from anygpt.tokenizers.seed.qformer import CausalQFormer
from anygpt.tokenizers.seed.vit import EvaViT, Mlp

#: Keys of ``seed_quantizer.pt`` that the model does not use and that loading skips: these patterns only. The
#: real file holds ~146 text-side tensors of the training Q-Former (text FFN, word/position embeddings, LM head,
#: contrastive heads; names deduced, unverified). ``intermediate_query`` / ``output_query`` /
#: ``attention.output`` do not match. Any other unknown key is an error.
IGNORED_QUANTIZER_KEYS = (
    r"^Qformer\.cls\.",
    r"^Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\.",
    r"^Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.",
    r"^(vision_proj|text_proj|itm_head)\.",
    r"^temp$",
)
_IGNORED = re.compile("|".join(IGNORED_QUANTIZER_KEYS))
#: The query-reconstruction head (``pos_embed`` + ``blocks``): trained, never used to encode or decode. A
#: ``seed_quantizer.pt`` may leave it out (the demo's shipped codec does); it is then drawn at random.
RECON_HEAD = re.compile(r"^(pos_embed$|blocks\.)")
#: Prefix of the ViT's tensors in the model; ``eva_vit_g.pth`` has them without it.
VISUAL_PREFIX = "visual_encoder."
#: Heads of the decoder blocks: hard-coded in the reference whatever the Q-Former width.
DECODER_HEADS = 12
#: Widths of ``image_down``: hard-coded in the reference (the last one is not ``codebook_dim``).
IMAGE_DOWN_WIDTHS = (256, 128, 32)


class FloatLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input dtype (BLIP-2's ``ln_vision``, eps 1e-5)."""

    def forward(self, x: Tensor) -> Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class DecoderAttention(nn.Module):
    """timm-style attention: ``qkv`` with bias; the product ``q @ k`` is scaled (not q), as the reference."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class DecoderBlock(nn.Module):
    """Pre-norm bidirectional ViT block of the code decoder (LayerNorm eps 1e-6, MLP ratio 4, exact GELU).

    Args:
        width: Token width (the Q-Former width, 768).
        heads: Attention heads (always 12 in the reference).
    """

    def __init__(self, width: int, heads: int = DECODER_HEADS):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = DecoderAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, 4 * width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VectorQuantizer(nn.Module):
    """Nearest-code lookup in ``embedding`` [K, D] by squared Euclidean distance (no normalisation)."""

    def __init__(self, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, codebook_dim)

    def forward(self, z: Tensor) -> Tensor:
        """``[..., D]`` -> ids ``[...]``: argmin of ``|z|^2 + |e|^2 - 2 z.e``, computed in the reference's order."""
        flat = z.reshape(-1, z.shape[-1])
        book = self.embedding.weight
        dist = (torch.sum(flat ** 2, dim=1, keepdim=True) + torch.sum(book ** 2, dim=1)
                - 2 * torch.einsum("bd,dn->bn", flat, book.t()))
        return torch.argmin(dist, dim=1).view(z.shape[:-1])


def _mlp(widths: list[int], act: type[nn.Module], bias: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        if i:
            layers.append(act())
        layers.append(nn.Linear(n_in, n_out, bias=bias))
    return nn.Sequential(*layers)


class SeedQuantizer(nn.Module):
    """SEED-2's ``Blip2QformerQuantizer``: EVA ViT-g, causal Q-Former, VQ codebook and the code decoder.

    Encode: pixels -> ``visual_encoder`` -> ``ln_vision`` -> ``Qformer`` (32 causal queries) ->
    ``encode_task_layer`` (z) -> nearest code. Decode: codes -> ``quantize.embedding`` -> ``decode_task_layer``
    -> ``+ pos_embed_image`` -> ``blocks_image`` -> ``image_down`` -> flatten -> ``distill_image_proj``, a
    stand-in for the CLIP ViT-H image embedding that SD-2.1-unCLIP takes.

    Args are the keys of ``REAL_CONFIG`` in ``anygpt.tokenizers.image`` (sizes of the released model there).
    """

    def __init__(self, image_size: int = 224, patch_size: int = 14, vit_width: int = 1408, vit_depth: int = 39,
                 vit_heads: int = 16, vit_mlp_ratio: float = 4.3637, qformer_hidden: int = 768,
                 qformer_layers: int = 12, qformer_heads: int = 12, qformer_intermediate: int = 3072,
                 cross_attention_freq: int = 2, num_query_tokens: int = 32, codebook_size: int = 8192,
                 codebook_dim: int = 32, decode_depth: int = 4, image_features_dim: int = 1024):
        super().__init__()
        hidden = qformer_hidden
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, hidden))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_query_tokens, hidden))
        self.pos_embed_image = nn.Parameter(torch.zeros(1, num_query_tokens, hidden))
        self.visual_encoder = EvaViT(image_size, patch_size, vit_width, vit_depth, vit_heads, vit_mlp_ratio)
        self.ln_vision = FloatLayerNorm(vit_width)
        self.Qformer = CausalQFormer(hidden=hidden, layers=qformer_layers, heads=qformer_heads,
                                     intermediate=qformer_intermediate, vision_width=vit_width,
                                     cross_attention_freq=cross_attention_freq)
        self.quantize = VectorQuantizer(codebook_size, codebook_dim)
        self.encode_task_layer = _mlp([hidden, hidden, codebook_dim], nn.Tanh)
        self.decode_task_layer = _mlp([codebook_dim, codebook_dim, hidden], nn.Tanh)
        self.blocks = nn.ModuleList(DecoderBlock(hidden) for _ in range(decode_depth))
        self.blocks_image = nn.ModuleList(DecoderBlock(hidden) for _ in range(decode_depth))
        self.image_down = _mlp([hidden, *IMAGE_DOWN_WIDTHS], nn.ReLU, bias=False)
        self.distill_image_proj = nn.Linear(num_query_tokens * IMAGE_DOWN_WIDTHS[-1], image_features_dim)

    def image_embeds(self, pixels: Tensor, autocast_dtype: torch.dtype | None = None) -> Tensor:
        """``ln_vision(visual_encoder(pixels))``: ``[B, 3, S, S]`` -> ``[B, 1 + (S/14)^2, vit_width]``.

        With ``autocast_dtype`` (float16 on CUDA, as the reference), the ViT runs under autocast.
        """
        if autocast_dtype is None:
            return self.ln_vision(self.visual_encoder(pixels))
        with torch.autocast(pixels.device.type, dtype=autocast_dtype):
            return self.ln_vision(self.visual_encoder(pixels))

    def query_output(self, image_embeds: Tensor) -> Tensor:
        """The causal Q-Former's last hidden state ``[B, Q, qformer_hidden]`` for ``[B, N, vit_width]`` tokens."""
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        return self.Qformer.bert(queries, image_embeds)

    def prequant(self, pixels: Tensor, autocast_dtype: torch.dtype | None = None) -> Tensor:
        """The z fed to the quantizer: ``encode_task_layer(Q-Former(...))``, ``[B, Q, codebook_dim]``."""
        return self.encode_task_layer(self.query_output(self.image_embeds(pixels, autocast_dtype)))

    def codebook_entry(self, ids: Tensor) -> Tensor:
        """Ids ``[B, Q]`` -> image features ``[B, image_features_dim]`` (``get_codebook_entry``); ids unchecked."""
        return self.image_features(self.decode_task_layer(self.quantize.embedding(ids)))

    def image_features(self, decoded: Tensor) -> Tensor:
        """The image head on ``decode_task_layer`` outputs ``[B, Q, hidden]`` (training feeds it straight-through
        quantised vectors): ``[B, image_features_dim]``."""
        x = decoded + self.pos_embed_image.repeat(decoded.shape[0], 1, 1)
        for block in self.blocks_image:
            x = block(x)
        x = self.image_down(x)
        return self.distill_image_proj(x.reshape(x.shape[0], -1))


# --- weights ---


def split_keys(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The model's state dict as (ViT part without its prefix, the rest): the layouts of the two files."""
    visual, rest = {}, {}
    for key, value in model.state_dict().items():
        if key.startswith(VISUAL_PREFIX):
            visual[key[len(VISUAL_PREFIX):]] = value
        else:
            rest[key] = value
    return visual, rest


def check_part(state: object, expected: dict[str, Tensor], name: str, ignore: re.Pattern | None = None,
               optional: re.Pattern | None = None) -> dict[str, Tensor]:
    """The tensors of ``state`` that ``expected`` names, after a strict check of keys and shapes.

    Args:
        state: A state dict (or ``{"model": state_dict}``) read from ``name``.
        expected: Key -> tensor of the right shape (meta tensors do).
        name: The file (or "the ... state dict"), for messages.
        ignore: Unknown keys matching it are skipped silently.
        optional: Expected keys matching it may be missing (all of them or none: half a part is an error).

    Raises:
        AnyGPTError: Not a state dict, missing or unexpected keys, or a shape that differs (one line).
    """
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise AnyGPTError(f"{name} holds a {type(state).__name__}, not a state dict of tensors")
    missing = [k for k in expected if k not in state]
    if optional is not None:
        left_out = [k for k in missing if optional.match(k)]
        if left_out and len(left_out) == sum(1 for k in expected if optional.match(k)):
            missing = [k for k in missing if k not in left_out]
            expected = {k: v for k, v in expected.items() if k not in left_out}
    unexpected = [k for k in state if k not in expected and not (ignore is not None and ignore.match(k))]
    if missing or unexpected:
        problems = [f"{what} {_few(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected))
                    if keys]
        raise AnyGPTError(f"{name} does not fit the SEED tokenizer: {'; '.join(problems)}")
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise AnyGPTError(f"{name} does not fit the SEED tokenizer config: {key} has shape "
                              f"{list(state[key].shape)}, the model needs {list(ref.shape)}")
    return {k: state[k] for k in expected}


def load_parts(model: nn.Module, quantizer: tuple[object, str] | None, visual: tuple[object, str] | None,
               seed: int = 0) -> None:
    """Give a model built on the meta device its weights, by assignment (no copy, no random init first).

    Args:
        model: A ``SeedQuantizer`` on the meta device.
        quantizer: ``(state dict, name)`` of the non-ViT part (``seed_quantizer.pt``), or None for random
            weights; the keys of ``IGNORED_QUANTIZER_KEYS`` are skipped, ``visual_encoder.*`` is unexpected, and
            a file without the whole ``RECON_HEAD`` gets it at random.
        visual: ``(state dict, name)`` of the ViT (``eva_vit_g.pth`` layout, no prefix), or None for random.
        seed: Seed of the random parts, drawn on the default device with a generator of their own (the
            global RNG is untouched; another device gives other numbers).

    Floating tensors are assigned as float32 (as the reference copies fp16 files into fp32 modules).

    Raises:
        AnyGPTError: A part does not fit (see ``check_part``).
    """
    visual_keys, rest_keys = split_keys(model)
    state: dict[str, Tensor] = {}
    if visual is not None:
        part = check_part(visual[0], visual_keys, visual[1])
        state.update({VISUAL_PREFIX + k: v for k, v in part.items()})
    if quantizer is not None:
        state.update(check_part(quantizer[0], rest_keys, quantizer[1], _IGNORED, RECON_HEAD))
    device = torch.get_default_device()
    if device.type == "meta":
        device = torch.device("cpu")
    random_keys = [k for k in model.state_dict() if k not in state]
    state.update(random_state(model, random_keys, seed, device))
    state = {k: v.to("meta" if v.is_meta else device, torch.float32 if v.is_floating_point() else v.dtype)
             for k, v in state.items()}  # meta tensors stay meta: layout checks load without data
    model.load_state_dict(state, strict=True, assign=True)
    if quantizer is None:
        fit_codebook(model, seed, device)


def random_state(model: nn.Module, keys: list[str], seed: int, device: torch.device) -> dict[str, Tensor]:
    """Random tensors for ``keys`` of ``model``'s state dict.

    LayerNorm gains are ``1 + 0.05 N``, Linear / Conv weights ``N / sqrt(fan_in)``, everything else floating
    ``0.05 N``; ``position_ids`` is ``arange``.
    """
    gains, matrices = set(), set()
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            gains.add(f"{name}.weight")
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            matrices.add(f"{name}.weight")
    wanted = set(keys)
    generator = torch.Generator(device).manual_seed(seed)
    out = {}
    for key, ref in model.state_dict().items():
        if key not in wanted:
            continue
        if not ref.is_floating_point():
            out[key] = torch.arange(ref.shape[-1], device=device).expand(ref.shape).clone()
            continue
        noise = torch.randn(ref.shape, generator=generator, device=device)
        if key in gains:
            out[key] = 1 + 0.05 * noise
        elif key in matrices:
            out[key] = noise / math.sqrt(math.prod(ref.shape[1:]))
        else:
            out[key] = 0.05 * noise
    return out


def fit_codebook(model: SeedQuantizer, seed: int, device: torch.device) -> None:
    """Draw a random model's codebook from a Gaussian fitted to its z, so that codes vary.

    z comes from the Q-Former and ``encode_task_layer`` on unit-Gaussian image tokens (what ``ln_vision``
    outputs look like); the ViT is skipped, so this stays cheap at full size.
    """
    generator = torch.Generator(device).manual_seed(seed + 1)
    tokens, width = model.visual_encoder.pos_embed.shape[1:]
    with torch.no_grad():
        probe = torch.randn(2, tokens, width, generator=generator, device=device)
        z = model.encode_task_layer(model.query_output(probe)).reshape(-1, model.quantize.embedding.embedding_dim)
        book = model.quantize.embedding.weight
        book.copy_(z.mean(0) + z.std(0) * torch.randn(book.shape, generator=generator, device=device))


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")
