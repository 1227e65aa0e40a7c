"""Training the unCLIP decoder's VAE (a diffusers ``AutoencoderKL``) with ``anygpt fit``.

The objective is the reconstruction and KL part of Latent Diffusion's ``LPIPSWithDiscriminator`` (the loss of the
Stable Diffusion autoencoders): pixel L1 (optionally plus MSE) on [-1, 1] images reconstructed from a posterior
sample, plus ``kl_weight`` times the KL divergence of the posterior from N(0, I). LDM sums both over the image and
weights the KL by 1e-6; here both are divided by the image's pixel values (3 H W), which keeps that balance while
the reconstruction terms read as means. The perceptual (LPIPS) and adversarial terms are not implemented.

``export(folder)`` writes a diffusers ``AutoencoderKL`` folder whose ``scaling_factor`` makes scaled latents unit
variance (Latent Diffusion's ``scale_by_std``): ``UnCLIPTrainer(vae=folder)`` and pipelines load it; so does
``UnCLIPTrainer(vae="runs/unclip_vae/last.ckpt")``.

``frozen`` keeps parts of the VAE as they are: ``source`` a decoder-only folder (a shipped decoder, see
``anygpt.decoders.decoder_only_vae``) with ``frozen: [decoder, post_quant_conv]`` trains a fresh encoder into the
latent space that decoder reads, so a shipped unCLIP decoder can be trained on again without its original encoder.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio

from anygpt import AnyGPTError
from anygpt.training.arguments import check_images, check_keys, warmup_schedule


# what a VAE needs from a full Stable unCLIP repo
VAE_SKIPPED_FILES = ["unet/*", "text_encoder/*", "image_encoder/*", "feature_extractor/*", "*.fp16.*", "*.ckpt"]


class VAETrainer(LightningModule):
    """Trains a diffusers ``AutoencoderKL`` on images (``ImageFilesDataModule`` batches: ``image [B, 3, S, S]``).

    Logs ``train/loss`` and its parts ``train/l1``, ``train/mse``, ``train/kl``; in validation ``val/loss`` and
    ``val/psnr`` of the reconstructions from the posterior mean.

    Args:
        vae: ``AutoencoderKL`` arguments of a fresh VAE (``block_out_channels``, ``latent_channels``, ...; empty:
            diffusers' defaults).
        source: Instead of ``vae``, a VAE to fine-tune: a folder or repo id with ``config.json`` or
            ``vae/config.json``, or a ``VAETrainer`` checkpoint. A folder without encoder weights gets a fresh
            encoder (seeded by ``seed_everything``).
        frozen: Top-level parts of the VAE kept as they are (``encoder``, ``quant_conv``, ``decoder``,
            ``post_quant_conv``); None: all train.
        l1_weight: Weight of the mean absolute pixel error.
        mse_weight: Weight of the mean squared pixel error.
        kl_weight: Weight of the KL divergence per pixel value (Latent Diffusion: 1e-6).
        scaling_factor: Latent scale written by ``export``. None: for a fresh VAE, 1 / the standard deviation of
            its latents over training (a running estimate); for ``source``, the source's value (0.18215 for
            Stable Diffusion's).
        lr: Peak learning rate of AdamW.
        betas: AdamW's betas (Latent Diffusion's autoencoders: 0.5, 0.9).
        weight_decay: AdamW's weight decay.
        warmup_steps: Linear warm-up steps.
        min_lr_ratio: Final learning rate as a share of ``lr`` (a cosine to ``trainer.max_steps``); 1: constant.
        export_dir: Where ``export`` writes the diffusers folder when a fit ends (rank 0). None: not written.
    """

    def __init__(self, vae: dict | None = None, source: str | None = None, frozen: list[str] | None = None,
                 l1_weight: float = 1.0,
                 mse_weight: float = 0.0, kl_weight: float = 1e-6, scaling_factor: float | None = None,
                 lr: float = 1e-4, betas: tuple[float, float] = (0.5, 0.9), weight_decay: float = 0.0,
                 warmup_steps: int = 0, min_lr_ratio: float = 1.0, export_dir: str | None = None):
        super().__init__()
        from diffusers import AutoencoderKL

        self.save_hyperparameters()
        if min(l1_weight, mse_weight, kl_weight) < 0 or l1_weight + mse_weight <= 0:
            raise AnyGPTError(f"need l1_weight, mse_weight, kl_weight >= 0 and l1_weight + mse_weight > 0, got "
                              f"{l1_weight}, {mse_weight}, {kl_weight}")
        if lr <= 0 or warmup_steps < 0 or not 0 <= min_lr_ratio <= 1 or (scaling_factor or 1) <= 0:
            raise AnyGPTError(f"need lr > 0, warmup_steps >= 0, min_lr_ratio in [0, 1] and scaling_factor > 0; got "
                              f"{lr}, {warmup_steps}, {min_lr_ratio}, {scaling_factor}")
        if vae and source:
            raise AnyGPTError("model.init_args: give vae (a fresh VAE's arguments) or source (a VAE to fine-tune), "
                              "not both")
        self.vae = (load_vae(source, fresh_encoder=True) if source
                    else AutoencoderKL(**check_keys("vae", vae, AutoencoderKL.__init__)))
        parts = dict(self.vae.named_children())
        unknown = sorted(set(frozen or ()) - set(parts))
        if unknown:
            raise AnyGPTError(f"model.init_args.frozen: no VAE part {unknown[0]!r} (parts: {', '.join(parts)})")
        if set(parts) <= set(frozen or ()):
            raise AnyGPTError("model.init_args.frozen: every part of the VAE is frozen; nothing would train")
        for name in frozen or ():
            parts[name].requires_grad_(False)
        self.weights = {"l1": l1_weight, "mse": mse_weight, "kl": kl_weight}
        self.scaling_factor = scaling_factor or (self.vae.config.scaling_factor if source else None)
        self.lr, self.betas, self.weight_decay = lr, tuple(betas), weight_decay
        self.warmup_steps, self.min_lr_ratio, self.export_dir = warmup_steps, min_lr_ratio, export_dir
        self.register_buffer("latent_var", torch.zeros(()))  # running variance of the latents
        self.register_buffer("latent_seen", torch.zeros(()))  # batches it has seen
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)

    def losses(self, images: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> dict:
        """Loss parts and total (``l1``, ``mse``, ``kl``, ``loss``), the latents and the reconstruction in [0, 1].

        Args:
            images: ``[B, 3, H, W]`` in [0, 1], H and W multiples of the VAE's downsampling.
            sample: Decode a posterior sample (training) or the posterior mean (validation).
            generator: Source of the posterior sample's noise (on the CPU); None: the global RNG.
        """
        check_images(images)
        pixels = images * 2 - 1
        posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.mean
        if sample:
            noise = torch.randn(latents.shape, generator=generator).to(latents) if generator is not None else None
            latents = latents + posterior.std * (torch.randn_like(latents) if noise is None else noise)
        decoded = self.vae.decode(latents).sample.float()
        if decoded.shape != pixels.shape:
            raise AnyGPTError(f"the VAE turns {tuple(pixels.shape[-2:])} images into {tuple(decoded.shape[-2:])}: "
                              f"image sides must be multiples of its downsampling")
        per_value = pixels[0].numel()
        parts = {"l1": (decoded - pixels.float()).abs().mean(), "mse": F.mse_loss(decoded, pixels.float()),
                 "kl": posterior.kl().float().mean() / per_value}
        parts["loss"] = sum(self.weights[name] * parts[name] for name in ("l1", "mse", "kl"))
        return {**parts, "latents": latents.detach(), "reconstruction": (decoded.detach() + 1) / 2}

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out = self.losses(batch["image"])
        with torch.no_grad():  # running mean of the batch variances, an EMA (0.99) after 100 batches
            weight = max(0.01, 1.0 / float(self.latent_seen + 1))
            self.latent_var.mul_(1 - weight).add_(weight * out["latents"].float().var())
            self.latent_seen.add_(1)
        for name in ("loss", "l1", "mse", "kl"):
            self.log(f"train/{name}", out[name], prog_bar=name == "loss", batch_size=len(batch["image"]))
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.losses(batch["image"], sample=False)
        self.val_psnr(out["reconstruction"].clamp(0, 1), batch["image"].float())
        self.log("val/loss", out["loss"], prog_bar=True, batch_size=len(batch["image"]))
        self.log("val/psnr", self.val_psnr, batch_size=len(batch["image"]))

    def configure_optimizers(self):
        trained = [p for p in self.vae.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=self.lr, betas=self.betas,
                                      weight_decay=self.weight_decay)
        return {"optimizer": optimizer,
                "lr_scheduler": warmup_schedule(optimizer, self.trainer, self.warmup_steps, self.min_lr_ratio)}

    def estimated_scaling_factor(self) -> float | None:
        """The scaling factor ``export`` writes (see ``scaling_factor``); None before any training step."""
        if self.scaling_factor:
            return float(self.scaling_factor)
        return float(self.latent_var.rsqrt()) if self.latent_seen > 0 else None

    def exportable_vae(self):
        """The VAE with ``config.scaling_factor`` set to ``estimated_scaling_factor`` (left as it is if None)."""
        factor = self.estimated_scaling_factor()
        if factor is not None:
            self.vae.register_to_config(scaling_factor=factor)
        return self.vae

    def export(self, folder: str) -> None:
        """Write the VAE as a diffusers ``AutoencoderKL`` folder (config.json + safetensors)."""
        self.exportable_vae().save_pretrained(folder)

    @classmethod
    def export_checkpoint(cls, checkpoint: str, folder: str) -> None:
        """Write the VAE of a fit checkpoint as a diffusers folder."""
        cls.load_from_checkpoint(checkpoint, map_location="cpu").export(folder)

    def on_train_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            self.export(self.export_dir)


def load_vae(ref: str, fresh_encoder: bool = False):
    """A diffusers ``AutoencoderKL`` from a ``VAETrainer`` fit checkpoint (``.ckpt``, with its scaling factor), a
    folder holding ``config.json`` (a ``VAETrainer.export``) or ``vae/config.json`` (a pipeline), or a repo id.

    Args:
        ref: Where the VAE is.
        fresh_encoder: Give a folder whose weights lack the encoder (a decoder-only VAE, shipped for decoding) a
            freshly initialised encoder; False: such a folder is an error, since it cannot encode pictures.

    Raises:
        AnyGPTError: Nothing loadable there, or a decoder-only VAE without ``fresh_encoder`` (one line naming
            ``ref``).
    """
    from diffusers import AutoencoderKL

    from anygpt.decoders.decoder_only_vae import load_decoder_only

    from anygpt.hub import resolve

    path = Path(str(ref)).expanduser()
    if path.suffix == ".ckpt" and path.is_file():
        return VAETrainer.load_from_checkpoint(path, map_location="cpu").exportable_vae()
    folder = resolve(str(ref), ignore=VAE_SKIPPED_FILES)
    if (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        raise AnyGPTError(f"{ref}: not a VAE (no config.json, nor vae/config.json, and not a VAETrainer .ckpt)")
    lean = load_decoder_only(folder)
    if lean is None:
        return AutoencoderKL.from_pretrained(folder)
    if not fresh_encoder:
        raise AnyGPTError(f"{ref}: a VAE without its encoder (kept for decoding only) cannot encode pictures; train "
                          f"an encoder for it (VAETrainer with source={ref} and frozen: [decoder, post_quant_conv])")
    vae = AutoencoderKL.from_config(lean.config)
    vae.load_state_dict(lean.state_dict(), strict=False)
    return vae
