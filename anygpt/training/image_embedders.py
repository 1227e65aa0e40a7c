"""Frozen image embedders for unCLIP decoder training: pictures ``[B, 3, H, W]`` in [0, 1] -> embeddings ``[B, D]``.

``UnCLIPTrainer(embedder=...)`` conditions its UNet on what one of these gives for each training image. The released
SD-2.1-unCLIP was trained on CLIP ViT-H/14 image embeddings (``CLIPImageEmbedder``); SEED-2's 1024-d output is a
stand-in for those. ``MeanColourEmbedder`` and ``RandomConvEmbedder`` are cheap fixed maps for tests and tiny runs;
``LatentEmbedder`` is a trained VAE's latent grid, the teacher of codecs trained from scratch;
``ConcatEmbedder`` puts several side by side.
All are frozen: no parameters train, and their weights are drawn from a seed (or loaded), never from the global RNG.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anygpt import AnyGPTError
from anygpt.training.arguments import check_images

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# what a CLIP image encoder needs from a full Stable unCLIP repo: not the UNet, VAE or text encoder
SKIPPED_FILES = ["unet/*", "vae/*", "text_encoder/*", "tokenizer/*", "*.fp16.*", "*.ckpt"]


class _Frozen(nn.Module):
    def train(self, mode: bool = True) -> _Frozen:
        return super().train(False)  # always in eval mode, whatever the parent does


class MeanColourEmbedder(_Frozen):
    """Each image's mean and standard deviation per colour channel (6 numbers), through a fixed random projection.

    Args:
        dim: Width of the embeddings.
        seed: Seed of the projection.
    """

    def __init__(self, dim: int = 32, seed: int = 0):
        super().__init__()
        if dim < 1:
            raise AnyGPTError(f"MeanColourEmbedder: dim must be >= 1, got {dim}")
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(6, dim, generator=generator) * 2.0)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        check_images(images)
        pixels = images.float().flatten(2)
        stats = torch.cat([pixels.mean(-1) * 2 - 1, pixels.std(-1, correction=0) * 2], dim=-1)
        return stats @ self.projection.float()


class RandomConvEmbedder(_Frozen):
    """A small fixed random conv net (two strided 3x3 convolutions, GELU, global average pool, linear map).

    Args:
        dim: Width of the embeddings.
        width: Channels of the convolutions.
        seed: Seed of the weights.
    """

    def __init__(self, dim: int = 32, width: int = 16, seed: int = 0):
        super().__init__()
        if dim < 1 or width < 1:
            raise AnyGPTError(f"RandomConvEmbedder: dim and width must be >= 1, got {dim} and {width}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(
                nn.Conv2d(3, width, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, dim))
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        check_images(images)
        return self.net(images.to(self.net[0].weight.dtype) * 2 - 1).float()


class LatentEmbedder(_Frozen):
    """A trained VAE's latent of each image, average-pooled and flattened: ``[B, C * (H / f / pool) ** 2]``.

    A teacher that keeps every picture's layout and colours, for codecs trained from scratch where no CLIP is at
    hand: without a teacher, SEED's query reconstruction is met by constant queries and the embeddings collapse.
    Latents are the posterior means times the VAE's ``scaling_factor`` (pixels mapped to [-1, 1] first), as the
    unCLIP UNet sees them.

    Args:
        vae: A VAE as ``unclip_vae.load_vae`` reads it: a ``VAETrainer`` checkpoint, its export, a pipeline
            folder or repo id.
        pool: Average-pooling window over the latent grid (1: the whole grid).
    """

    def __init__(self, vae: str, pool: int = 1):
        super().__init__()
        from anygpt.training.unclip_vae import load_vae

        if pool < 1:
            raise AnyGPTError(f"LatentEmbedder: pool must be >= 1, got {pool}")
        self.vae = load_vae(vae).eval().requires_grad_(False)  # a decoder-only VAE cannot encode: one line
        self.pool = pool

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        check_images(images)
        posterior = self.vae.encode((images * 2 - 1).to(self.vae.dtype)).latent_dist
        latents = posterior.mean.float() * self.vae.config.scaling_factor
        if self.pool > 1:
            latents = F.avg_pool2d(latents, self.pool)
        return latents.flatten(1)


class CLIPImageEmbedder(_Frozen):
    """A CLIP image encoder with projection (``CLIPVisionModelWithProjection``), as Stable unCLIP's pipeline runs it.

    Images are resized (shorter side to the encoder's input size, bicubic with antialiasing), centre-cropped and
    normalised with CLIP's mean and std in torch; the pipeline's ``CLIPImageProcessor`` does the same on PIL
    images, so embeddings differ from it by resampling rounding only.

    Args:
        source: A folder, or a Hugging Face repo id (looked up in ``$ANYGPT_WEIGHTS`` first), holding the encoder
            itself or a Stable unCLIP pipeline whose ``subfolder`` holds it. The default is the encoder that the
            released SD-2.1-unCLIP was trained with (OpenCLIP ViT-H/14, 1024-d).
        subfolder: The encoder's folder inside ``source``, used when present.
    """

    def __init__(self, source: str = "stabilityai/stable-diffusion-2-1-unclip", subfolder: str = "image_encoder"):
        super().__init__()
        from transformers import CLIPVisionModelWithProjection

        from anygpt.hub import resolve

        folder = resolve(source, ignore=SKIPPED_FILES)
        if (folder / subfolder / "config.json").exists():
            folder = folder / subfolder
        if not (folder / "config.json").exists():
            raise AnyGPTError(f"{source}: no CLIP image encoder there (no config.json, nor {subfolder}/config.json)")
        self.model = CLIPVisionModelWithProjection.from_pretrained(folder).eval().requires_grad_(False)
        self.size = self.model.config.image_size
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def dim(self) -> int:
        """Width of the embeddings (the encoder's projection size)."""
        return self.model.config.projection_dim

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        check_images(images)
        height, width = images.shape[-2:]
        scale = self.size / min(height, width)
        resized = (max(self.size, round(height * scale)), max(self.size, round(width * scale)))
        pixels = F.interpolate(images.float(), size=resized, mode="bicubic", antialias=True, align_corners=False)
        top, left = (resized[0] - self.size) // 2, (resized[1] - self.size) // 2
        pixels = pixels[..., top:top + self.size, left:left + self.size].clamp(0, 1)
        pixels = ((pixels - self.mean) / self.std).to(self.model.dtype)
        return self.model(pixel_values=pixels).image_embeds.float()


class ConcatEmbedder(_Frozen):
    """Several embedders' embeddings side by side, in their order: ``[B, sum of their widths]``.

    A codec's teacher may have to say two things: the layout that the demo's unCLIP UNet reads as a spatial grid
    (``LatentEmbedder``, first, so that its values fill the grid's first channels) and the meaning that a language
    model reads off the codes (``CLIPImageEmbedder`` of a caption-aligned CLIP, ``clip_teacher``).

    Args:
        embedders: The embedders, in order.
        weights: A factor per embedder on its embedding (to balance their scales); None: 1 each.
    """

    def __init__(self, embedders: list[nn.Module], weights: list[float] | None = None):
        super().__init__()
        weights = [1.0] * len(embedders) if weights is None else [float(w) for w in weights]
        if not embedders or len(weights) != len(embedders):
            raise AnyGPTError(f"ConcatEmbedder: needs one or more embedders and a weight for each, got "
                              f"{len(embedders)} embedders and {len(weights)} weights")
        self.embedders = nn.ModuleList(embedders)
        self.weights = weights

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        check_images(images)
        return torch.cat([w * e(images).float() for e, w in zip(self.embedders, self.weights)], dim=-1)


def embeddings_of(batch: dict, embedder: nn.Module | None, dim: int) -> Tensor:
    """``[B, dim]`` float32 embeddings of a batch's ``image``: ``embedder``'s (moved to the images' device), or
    with no embedder each record's ``embedding`` field (in ``batch["items"]``).

    Raises:
        AnyGPTError: A record lacks the field, the fields are ragged, or the width is not ``dim``, or not finite.
    """
    images = batch["image"]
    if embedder is not None:
        state = next(itertools.chain(embedder.parameters(), embedder.buffers()), None)
        if state is not None and state.device != images.device:
            embedder.to(images.device)
        with torch.no_grad():
            found = embedder(images).float()
    else:
        rows = []
        for item in batch["items"]:
            if "embedding" not in item:
                raise AnyGPTError(f"{item.get('path', 'a record')}: no 'embedding' field in its record, and "
                                  f"model.init_args.embedder is not set")
            rows.append(item["embedding"])
        try:
            found = torch.tensor(rows, dtype=torch.float32, device=images.device)
        except (TypeError, ValueError):
            raise AnyGPTError("the records' 'embedding' fields must be lists of numbers of one length") from None
    if found.shape != (len(images), dim):
        raise AnyGPTError(f"got embeddings of shape {tuple(found.shape)} for {len(images)} images; the decoder takes "
                          f"{dim}-d embeddings")
    if not torch.isfinite(found).all():
        raise AnyGPTError("the image embeddings hold NaN or inf")
    return found
