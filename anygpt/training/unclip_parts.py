"""What the unCLIP trainers share: pipeline assembly (the VAE loads through ``unclip_vae.load_vae``).

``assemble`` builds the component dict that ``UnCLIPDecoder(components=...)`` takes: the components of a diffusers
Stable unCLIP folder (or the tiny random ones), optionally with the VAE replaced by one trained with ``VAETrainer``
and the UNet replaced by a fresh one of a given configuration, sized to fit the other components.
"""

from __future__ import annotations

from anygpt import AnyGPTError
from anygpt.training.arguments import check_keys
from anygpt.training.unclip_vae import load_vae

# UNet settings that follow from the other components: latent channels, text width, embedding width
# (in_channels may also add the channels of the embedding's grid: anygpt.decoders.unclip.grid_shape)
FORCED_UNET_KEYS = ("in_channels", "out_channels", "cross_attention_dim", "class_embed_type",
                    "projection_class_embeddings_input_dim")


def vae_scale(vae) -> int:
    """Pixels per latent along a side (2 ** downsamplings), as the pipeline computes ``vae_scale_factor``."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def fresh_unet(spec: dict, vae, text_width: int, embedding_dim: int, sample_size: int):
    """A new ``UNet2DConditionModel`` of configuration ``spec``, with the keys in ``FORCED_UNET_KEYS`` set to fit the
    VAE's latent channels, the text encoder's width and the image embedding (and ``sample_size`` as a default).

    Raises:
        AnyGPTError: An unknown key, or a forced key given another value than the one that fits.
    """
    from diffusers import UNet2DConditionModel

    from anygpt.decoders.unclip import grid_shape

    spec = check_keys("unet", spec, UNet2DConditionModel.__init__)
    channels = vae.config.latent_channels
    inputs = spec.get("in_channels", channels)
    try:
        grid_shape(inputs, channels, embedding_dim)
    except ValueError as err:
        raise AnyGPTError(f"model.init_args.unet.in_channels: {err}") from None
    forced = dict(in_channels=inputs, out_channels=channels, cross_attention_dim=text_width,
                  class_embed_type="projection", projection_class_embeddings_input_dim=2 * embedding_dim)
    for key, value in forced.items():
        if key in spec and spec[key] != value:
            raise AnyGPTError(f"model.init_args.unet.{key} is {spec[key]!r} but must be {value!r} to fit the other "
                              f"components; leave it out")
    return UNet2DConditionModel(**{"sample_size": sample_size, **spec, **forced})


def assemble(source: str | None, vae: str | None = None, unet: dict | None = None,
             embedding_dim: int | None = None, seed: int = 0) -> dict:
    """Pipeline components for ``UnCLIPDecoder(components=...)`` (see the module docstring).

    Args:
        source: A diffusers Stable unCLIP folder or repo id, or "tiny" (``tiny_components``).
        vae: Replaces the source's VAE (what ``load_vae`` takes). None keeps it.
        unet: Configuration of a fresh UNet that replaces the source's; its ``sample_size`` defaults to keep the
            source's image size. None keeps the source's UNet.
        embedding_dim: Width of the image embeddings; another width than the source's needs a fresh ``unet`` and
            gets a fresh image normaliser (mean 0, std 1). None: the source's.
        seed: Seed of the tiny components and of the fresh UNet's weights.
    """
    import torch
    from diffusers.pipelines.stable_diffusion import StableUnCLIPImageNormalizer

    from anygpt.decoders.unclip import UnCLIPDecoder, tiny_components

    if source == "tiny":
        components = tiny_components(embedding_dim or 32, seed)
    elif source:
        loaded = UnCLIPDecoder(source=source, dtype="float32").pipe.components
        components = {k: v for k, v in loaded.items() if k not in ("image_encoder", "feature_extractor")}
    else:
        raise AnyGPTError("model.init_args.source is required (a Stable unCLIP folder, a repo id or 'tiny'): it "
                          "gives the text encoder, tokenizer and schedulers")
    old_vae = components["vae"]
    if vae is not None:
        components["vae"] = load_vae(vae)
    if embedding_dim and embedding_dim != components["image_normalizer"].config.embedding_dim:
        components["image_normalizer"] = StableUnCLIPImageNormalizer(embedding_dim=embedding_dim)
    dim = components["image_normalizer"].config.embedding_dim
    if unet is not None:
        old = components["unet"].config.sample_size
        size = old * vae_scale(old_vae) // vae_scale(components["vae"]) if isinstance(old, int) else 32
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            components["unet"] = fresh_unet(unet, components["vae"], components["text_encoder"].config.hidden_size,
                                            dim, size)
    config = components["unet"].config
    if config.projection_class_embeddings_input_dim != 2 * dim:
        raise AnyGPTError(f"the UNet takes {config.projection_class_embeddings_input_dim}-d class labels, not 2 x "
                          f"{dim}: give model.init_args.unet (a fresh UNet) for another embedding_dim")
    if config.out_channels != components["vae"].config.latent_channels:
        raise AnyGPTError(f"the VAE gives {components['vae'].config.latent_channels} latent channels, the UNet makes "
                          f"{config.out_channels}: give model.init_args.unet (a fresh UNet) to go with this VAE")
    return components
