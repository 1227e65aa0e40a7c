"""A pipeline's VAE kept for decoding only: latents to pictures need the decoder, never the encoder.

``strip_encoder`` rewrites a diffusers ``AutoencoderKL`` folder without the encoder and ``quant_conv`` weights (40 % of
the demo's VAE); ``load_decoder_only`` loads such a folder as an ``AutoencoderKL`` whose ``encoder`` and
``quant_conv`` are None, strictly (every decoder weight present), drawing no random numbers. Encoding with it fails.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS = "diffusion_pytorch_model.safetensors"
ENCODER_PREFIXES = ("encoder.", "quant_conv.")


def strip_encoder(folder: str | Path) -> int:
    """Drop the encoder's weights from a VAE folder; returns the bytes saved."""
    from safetensors.torch import load_file, save_file

    path = Path(folder) / WEIGHTS
    before = path.stat().st_size
    state = load_file(str(path))
    save_file({k: v for k, v in state.items() if not k.startswith(ENCODER_PREFIXES)}, str(path),
              metadata={"format": "pt"})
    return before - path.stat().st_size


def load_decoder_only(folder: str | Path):
    """The folder's ``AutoencoderKL`` without its encoder, or None when the folder's weights hold an encoder
    (diffusers loads those as usual)."""
    import torch
    from diffusers import AutoencoderKL
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        if any(key.startswith(ENCODER_PREFIXES) for key in f.keys()):
            return None
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder)))
    vae.encoder, vae.quant_conv = None, None
    vae.load_state_dict(load_file(str(path)), strict=True, assign=True)
    return vae.float().eval()
