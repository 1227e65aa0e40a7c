"""unCLIP image decoder: 1024-d image embeddings -> pictures (AnyGPT's image back end).

AnyGPT turns SEED-2 image codes into a 1024-d embedding (a stand-in for a CLIP ViT-H image embedding) and hands it
to ``StableUnCLIPImg2ImgPipeline`` (``stabilityai/stable-diffusion-2-1-unclip``, fp16) with ``image_embeds=``,
guidance 10, 20 steps, noise level 0 and the empty prompt; the output is 768x768. ``UnCLIPDecoder`` runs the same
computation with the pipeline's components, batched, with one random generator per image: the original drew one
fixed, unseeded latents tensor per process and decoded one image at a time.

A UNet whose input has more channels than the VAE's latents (``C`` more) also reads the embedding as a spatial grid:
reshaped to ``[C, s, s]`` (``s * s * C`` = its width) and resized to the latent grid, it is concatenated to the
latents at every step, as Stable Diffusion's upscaler and inpainting UNets take their conditioning picture. The
released UNet has none (its CLIP embedding is no grid); the demo world's decoder does, because its embedding is a
pooled latent grid and a class label alone (a per-channel bias in every block) cannot say where a shape lies.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from anygpt.hub import resolve
from anygpt.quiet import no_loading_bars

if TYPE_CHECKING:
    from PIL import Image

SOURCE = "stabilityai/stable-diffusion-2-1-unclip"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# never fetched: the unused image encoder, fp16 duplicates and single-file checkpoints of the same weights
SKIPPED_FILES = ["image_encoder/*", "feature_extractor/*", "*.fp16.*", "*.ckpt"]
MODULES = ("unet", "vae", "text_encoder", "image_encoder", "image_normalizer")


class UnCLIPDecoder(nn.Module):
    """Stable unCLIP (SD 2.1) decoding of image embeddings, as AnyGPT calls it, with per-image seeds and batching.

    ``decode(embeds, seeds)`` gives the same images as the stock ``StableUnCLIPImg2ImgPipeline`` called with
    ``image_embeds=embeds``, ``prompt=[prompt] * B`` and ``generator=[torch.Generator(device).manual_seed(s) for s
    in seeds]``: each image depends only on its own embedding and seed, not on its batch neighbours (up to float
    rounding, which differs a little between batch sizes). The pipeline's CLIP image encoder is never loaded: it
    is unused when embeddings are given.

    Args:
        source: Hugging Face repo id or local folder of a diffusers ``StableUnCLIPImg2ImgPipeline``; a repo id is
            looked up in ``$ANYGPT_WEIGHTS/<repo id>`` first (see ``anygpt.hub.resolve``). Ignored when
            ``components`` is given; ``tiny`` builds small random components (see ``tiny``).
        guidance_scale: Classifier-free guidance weight; the unconditional branch has a zero image embedding.
            1 or less turns guidance off.
        num_inference_steps: Denoising steps of the pipeline's scheduler (PNDM for the released model).
        noise_level: Noise added to the image embedding before it conditions the UNet (0 to 999).
        prompt: Text prompt of both guidance branches (AnyGPT leaves it empty).
        height: Output height in pixels (a multiple of the VAE's scale factor); None: the UNet's native size.
        width: Output width in pixels; None: the UNet's native size (768 for the released model).
        dtype: Compute precision. "auto" is float16 on CUDA and float32 elsewhere, applied when ``decode`` runs
            on a device; an explicit dtype is applied at once, and again by ``decode`` if the weights were cast.
        batch_size: Images decoded together (one UNet batch of twice this size with guidance).
        components: Ready pipeline components (``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``,
            ``image_normalizer``, ``image_noising_scheduler``), e.g. from ``tiny``; replaces ``source``.
    """

    def __init__(self, source: str | None = SOURCE, guidance_scale: float = 10.0, num_inference_steps: int = 20,
                 noise_level: int = 0, prompt: str = "", height: int | None = None, width: int | None = None,
                 dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto", batch_size: int = 4,
                 components: dict | None = None):
        super().__init__()
        from diffusers import StableUnCLIPImg2ImgPipeline

        if dtype != "auto" and dtype not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
        if batch_size < 1 or num_inference_steps < 1:
            raise ValueError(f"batch_size and num_inference_steps must be >= 1, got {batch_size} and "
                             f"{num_inference_steps}")
        if source == "tiny" and components is None:
            components = tiny_components()
        if components is not None:
            pipe = StableUnCLIPImg2ImgPipeline(**{"image_encoder": None, "feature_extractor": None, **components})
        elif source is not None:
            from anygpt.decoders.decoder_only_vae import load_decoder_only

            # the image encoder (CLIP ViT-H, 0.6 B params) only turns pictures into embeddings: never load it
            folder = resolve(source, ignore=SKIPPED_FILES)
            vae = load_decoder_only(folder / "vae")  # a folder shipped without the VAE's encoder
            with no_loading_bars():
                pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(folder, image_encoder=None, feature_extractor=None,
                                                                   **({"vae": vae} if vae is not None else {}))
        else:
            raise ValueError("UnCLIPDecoder needs a source (repo id or folder) or ready components")
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe  # not a module: kept for its scheduler, tokenizer and helpers
        for name in MODULES:
            if getattr(pipe, name, None) is not None:
                self.add_module(name, getattr(pipe, name))
        if dtype in DTYPES:
            self.to(DTYPES[dtype])
        self.guidance_scale = guidance_scale
        self.num_inference_steps = num_inference_steps
        self.noise_level = noise_level
        self.prompt = prompt
        self.compute_dtype = dtype
        self.batch_size = batch_size
        native = self.unet.config.sample_size * pipe.vae_scale_factor
        self.height, self.width = height or native, width or native
        if self.height % pipe.vae_scale_factor or self.width % pipe.vae_scale_factor:
            raise ValueError(f"height and width must be multiples of {pipe.vae_scale_factor}, "
                             f"got {self.height}x{self.width}")
        if self.unet.config.projection_class_embeddings_input_dim != 2 * self.embedding_dim:
            raise ValueError(f"the UNet takes {self.unet.config.projection_class_embeddings_input_dim}-d class "
                             f"labels, expected 2 x the {self.embedding_dim}-d image embedding")
        grid_shape(self.unet.config.in_channels, self.vae.config.latent_channels, self.embedding_dim)

    @classmethod
    def tiny(cls, embedding_dim: int = 32, seed: int = 0, **kwargs) -> UnCLIPDecoder:
        """A small random decoder for tests: 32x32 images, 4 steps by default, the released model's schedulers.

        The weights are drawn from ``seed`` without touching the global RNG; ``kwargs`` go to ``__init__``
        (``UnCLIPDecoder(source="tiny")`` is the same with the defaults, for YAML).
        """
        kwargs.setdefault("num_inference_steps", 4)
        return cls(source=None, components=tiny_components(embedding_dim, seed), **kwargs)

    @property
    def embedding_dim(self) -> int:
        """Width of the image embeddings ``decode`` takes (1024 for the released model)."""
        return self.image_normalizer.config.embedding_dim

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the decoded images (768x768 for the released model)."""
        return self.height, self.width

    def _prepare(self) -> tuple[torch.device, torch.dtype]:
        """Execution device (the UNet's) and compute dtype; casts the weights to that dtype if needed."""
        device = self.unet.device
        dtype = DTYPES.get(self.compute_dtype, torch.float16 if device.type == "cuda" else torch.float32)
        # a half-precision folder loads mixed: diffusers' parts upcast, transformers' text encoder keeps float16
        if any(p.dtype != dtype for p in self.parameters() if p.is_floating_point()):
            with torch.inference_mode(False), torch.no_grad():  # cast weights stay ordinary (loadable) tensors
                self.to(dtype)
        return device, dtype

    def _check(self, image_embeds: torch.Tensor, seeds: list[int | None] | None) -> None:
        if not isinstance(image_embeds, torch.Tensor) or image_embeds.ndim != 2:
            shape = tuple(image_embeds.shape) if isinstance(image_embeds, torch.Tensor) else type(image_embeds)
            raise ValueError(f"image_embeds must be a [batch, {self.embedding_dim}] tensor, got {shape}")
        if image_embeds.shape[1] != self.embedding_dim:
            raise ValueError(f"image_embeds must be {self.embedding_dim}-d, got {image_embeds.shape[1]}-d")
        if not image_embeds.is_floating_point() or not torch.isfinite(image_embeds).all():
            raise ValueError("image_embeds must be finite floats (got NaN/inf or an integer tensor)")
        if seeds is not None and len(seeds) != len(image_embeds):
            raise ValueError(f"got {len(seeds)} seeds for {len(image_embeds)} image embeddings")

    @torch.inference_mode()
    def decode(self, image_embeds: torch.Tensor, seeds: list[int | None] | None = None) -> list[Image.Image]:
        """Decode image embeddings into RGB pictures of ``image_size``.

        Args:
            image_embeds: [B, embedding_dim] float tensor, on any device and dtype (cast to the decoder's).
            seeds: One seed per image, or None for all. Image i is drawn from its own ``torch.Generator`` on the
                execution device, seeded with ``seeds[i]``: first its image-embedding noise, then its latents
                ``[1, 4, H/8, W/8]``. A None seed is drawn from torch's global RNG (so it differs from call to
                call, yet a ``seed_everything`` run is reproducible).

        Returns:
            B PIL images, in input order.

        Raises:
            ValueError: ``image_embeds`` is not [B, embedding_dim], holds NaN/inf, or ``seeds`` has another length.
        """
        self._check(image_embeds, seeds)
        seeds = list(seeds) if seeds is not None else [None] * len(image_embeds)
        seeds = [int(torch.randint(0, 2**63 - 1, ())) if s is None else int(s) for s in seeds]
        if len(image_embeds) == 0:
            return []
        device, dtype = self._prepare()
        image_embeds = image_embeds.to(device=device, dtype=dtype)
        prompt_embeds, negative_embeds = self.pipe.encode_prompt(self.prompt, device, 1, self.guidance_scale > 1)
        images = []
        for start in range(0, len(image_embeds), self.batch_size):
            chunk = image_embeds[start:start + self.batch_size]
            generators = [torch.Generator(device).manual_seed(seed) for seed in seeds[start:start + len(chunk)]]
            images += self._sample(chunk, generators, prompt_embeds, negative_embeds)
        return images

    def _sample(self, image_embeds, generators, prompt_embeds, negative_embeds) -> list[Image.Image]:
        """One batch of the pipeline's ``__call__`` (steps 4-9), with the image-embedding path of ``image_embeds=``."""
        pipe, n, guided = self.pipe, len(image_embeds), self.guidance_scale > 1
        device, dtype = image_embeds.device, image_embeds.dtype
        text = prompt_embeds.expand(n, -1, -1)
        labels = pipe.noise_image_embeddings(image_embeds, self.noise_level, generator=generators)
        if guided:
            text = torch.cat([negative_embeds.expand(n, -1, -1), text])
            labels = torch.cat([torch.zeros_like(labels), labels])
        factor = pipe.vae_scale_factor
        shape = (1, self.vae.config.latent_channels, self.height // factor, self.width // factor)
        latents = torch.cat([torch.randn(shape, generator=g, device=device, dtype=dtype) for g in generators])
        scheduler = pipe.scheduler
        scheduler.set_timesteps(self.num_inference_steps, device=device)
        latents = latents * scheduler.init_noise_sigma
        step_kwargs = pipe.prepare_extra_step_kwargs(generators, 0.0)
        grid = self.embedding_grid(image_embeds, latents.shape[-2:])
        if grid is not None and guided:
            grid = torch.cat([torch.zeros_like(grid), grid])
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
            if grid is not None:
                model_input = torch.cat([model_input, grid], dim=1)
            noise = self.unet(model_input, t, encoder_hidden_states=text, class_labels=labels, return_dict=False)[0]
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + self.guidance_scale * (cond - uncond)
            latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
        pixels = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(pixels, output_type="pil")

    def embedding_grid(self, embeds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor | None:
        """The embeddings ``[B, D]`` as the UNet's extra input channels ``[B, C, *size]`` (each latent cell takes
        the grid cell it lies in), or None for a UNet that takes the latents alone (module docstring)."""
        shape = grid_shape(self.unet.config.in_channels, self.vae.config.latent_channels, embeds.shape[-1])
        if shape is None:
            return None
        return F.interpolate(embeds.reshape(len(embeds), *shape), size=tuple(size), mode="nearest")


def grid_shape(in_channels: int, latent_channels: int, embedding_dim: int) -> tuple[int, int, int] | None:
    """``(C, s, s)``, the grid a UNet with ``in_channels`` inputs reads the embedding as (module docstring); None
    when it takes the latents alone.

    Raises:
        ValueError: The extra channels do not split the embedding into a square grid.
    """
    extra = in_channels - latent_channels
    if extra == 0:
        return None
    side = math.isqrt(embedding_dim // extra) if extra > 0 else 0
    if extra < 0 or extra * side * side != embedding_dim:
        raise ValueError(f"the UNet takes {in_channels} input channels: the VAE's {latent_channels} latent channels, "
                         f"plus none or C channels of the {embedding_dim}-d embedding as a C x s x s grid")
    return extra, side, side


def tiny_components(embedding_dim: int = 32, seed: int = 0) -> dict:
    """Random tiny pipeline components (32x32 images) with the released model's schedulers, drawn from ``seed``."""
    from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion import StableUnCLIPImageNormalizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
            cross_attention_dim=32, use_linear_projection=True, class_embed_type="projection",
            projection_class_embeddings_input_dim=2 * embedding_dim)
        vae = AutoencoderKL(
            block_out_channels=(32, 64), latent_channels=4, layers_per_block=1, sample_size=32,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=16, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, hidden_act="gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1))
    # only special tokens: enough for the empty prompt, built in memory (no download)
    tokenizer = CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1}, merges=[], model_max_length=77)
    components = dict(
        unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=embedding_dim),
        image_noising_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
        scheduler=PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                prediction_type="v_prediction", skip_prk_steps=True, steps_offset=1,
                                set_alpha_to_one=False))
    return components
