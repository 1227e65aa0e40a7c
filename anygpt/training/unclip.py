"""Training the unCLIP decoder (image embedding -> picture) with ``anygpt fit``: Stable unCLIP's objective.

``UnCLIPTrainer`` wraps the inference class ``UnCLIPDecoder`` itself: the UNet that trains is the decoder's, and
validation decodes through the decoder's own sampling loop. ``export(folder)`` writes a diffusers pipeline folder
that ``UnCLIPDecoder(source=folder)`` loads; ``UnCLIPDecoder(components=checkpoint_components("last.ckpt"))`` loads
a fit checkpoint directly.
``VAETrainer`` (``anygpt.training.unclip_vae``) trains the VAE.

One training step (Stable unCLIP's ``ImageEmbeddingConditionedLatentDiffusion``, in diffusers' terms):

1. z0 = a VAE posterior sample of the image (pixels in [-1, 1]) times ``vae.config.scaling_factor``; frozen VAE.
2. The image embedding e (from the frozen ``embedder``, or the records' ``embedding`` field) is noise-augmented as
   the pipeline's ``noise_image_embeddings`` does, with its ``image_normalizer`` and ``image_noising_scheduler``, at
   a level drawn per image from U{0..max_noise_level-1}; the whole class-label vector is zeroed with probability
   ``cond_dropout``, as inference's unconditional branch (``torch.zeros_like`` of the labels).
3. x_t = add_noise(z0, eps, t), t ~ U{0..T-1} on a DDPM scheduler with the betas of the pipeline's scheduler; the
   target follows that scheduler's ``prediction_type`` (``v_prediction`` for the released model): v, eps or z0.
4. loss = MSE(unet(x_t, t, text, class_labels=c), target), text = the frozen text encoder's output for the
   decoder's prompt (empty by default); optionally Min-SNR weighted (``snr_gamma``). A UNet with the embedding's
   grid among its inputs (``anygpt.decoders.unclip``) gets x_t with the clean embedding's grid, zeros where the
   condition is dropped.

Joint training with an image tokenizer (SEED): ``denoising_loss(images, embeddings)`` takes embeddings that carry
gradient and returns the loss; its gradient reaches them through the noise augmentation and the UNet's class
embedding. The caller adds it to its own losses and puts ``decoder.unet``'s parameters in its optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from anygpt import AnyGPTError
from anygpt.decoders.unclip import SOURCE, UnCLIPDecoder
from anygpt.messages import one_line
from anygpt.training.arguments import check_images, check_keys, from_cli, warmup_schedule
from anygpt.training.image_embedders import embeddings_of
from anygpt.training.unclip_parts import assemble
from anygpt.training.unclip_vae import VAETrainer

__all__ = ["Condition", "UnCLIPTrainer", "VAETrainer", "augment", "checkpoint_components", "draw_condition"]


@dataclass
class Condition:
    """The UNet's image condition for one batch.

    Attributes:
        labels: ``[B, 2D]`` class labels: the noised embedding and its level's sinusoidal embedding, or zeros.
        levels: ``[B]`` noise levels of the augmentation.
        dropped: ``[B]`` bool, True where the condition was dropped (labels all zero).
    """

    labels: Tensor
    levels: Tensor
    dropped: Tensor


def augment(pipe, embeddings: Tensor, levels: Tensor, noise: Tensor) -> Tensor:
    """``pipe.noise_image_embeddings`` with one noise level per image: ``[B, D]`` -> ``[B, 2D]``, differentiable in
    ``embeddings`` (the normaliser's statistics are constants here)."""
    from diffusers.models.embeddings import get_timestep_embedding

    normalizer = pipe.image_normalizer
    mean, std = normalizer.mean.detach().to(embeddings), normalizer.std.detach().to(embeddings)
    noised = pipe.image_noising_scheduler.add_noise((embeddings - mean) / std, noise=noise, timesteps=levels)
    level_embedding = get_timestep_embedding(levels, embeddings.shape[-1], flip_sin_to_cos=True,
                                             downscale_freq_shift=0)
    return torch.cat([noised * std + mean, level_embedding.to(embeddings.dtype)], dim=1)


def draw_condition(pipe, embeddings: Tensor, max_level: int, dropout: float,
                   generator: torch.Generator | None = None) -> Condition:
    """Noise-augment ``embeddings`` at levels ~ U{0..max_level-1} and drop each with probability ``dropout``.

    Draws on the CPU from ``generator`` (None: the global RNG): levels, then dropped flags, then the noise.
    """
    n, device = len(embeddings), embeddings.device
    levels = torch.randint(0, max_level, (n,), generator=generator)
    dropped = torch.rand(n, generator=generator) < dropout
    noise = torch.randn(embeddings.shape, generator=generator).to(embeddings)
    labels = augment(pipe, embeddings, levels.to(device), noise)
    labels = torch.where(dropped.to(device)[:, None], torch.zeros_like(labels), labels)
    return Condition(labels, levels.to(device), dropped.to(device))


def decode_beside(decoder: nn.Module, embeddings: Tensor, images: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """Decode ``embeddings`` through the inference pipeline (seeds ``seed``, ``seed + 1``, ...) and return the
    pictures ``[B, 3, H, W]`` in [0, 1] with ``images`` resized to their size, for PSNR / SSIM."""
    pictures = decoder.decode(embeddings.float(), seeds=[seed + i for i in range(len(images))])
    decoder.image_normalizer.requires_grad_(False)  # the pipeline re-creates its parameters when moving it
    decoded = torch.from_numpy(np.stack([np.asarray(p, dtype=np.float32) for p in pictures]) / 255)
    decoded = decoded.permute(0, 3, 1, 2).to(images.device)
    reference = images.float()
    if reference.shape[-2:] != decoded.shape[-2:]:
        reference = F.interpolate(reference, size=decoded.shape[-2:], mode="bilinear", antialias=True).clamp(0, 1)
    return decoded, reference


class UnCLIPTrainer(LightningModule):
    """Trains the UNet of an ``UnCLIPDecoder`` (``self.decoder``) on images and their embeddings.

    Batches are ``ImageFilesDataModule``'s: ``image [B, 3, S, S]`` in [0, 1] and ``items`` (records). Logs
    ``train/loss``; in validation ``val/loss`` (seeded draws), and for the first batch's first ``val_images``
    embeddings, decoded through the decoder, ``val/psnr`` and ``val/ssim`` against their images and, with an
    embedder, ``val/embedding_cosine`` between the decoded images' embeddings and the conditioning ones.

    Args:
        source: The pipeline whose components start the decoder: a diffusers Stable unCLIP folder, a repo id (the
            released SD-2.1-unCLIP to fine-tune it), or "tiny" (``tiny_components``).
        vae: Replaces the source's VAE: a ``VAETrainer`` export folder or fit checkpoint (or any diffusers VAE).
        unet: ``UNet2DConditionModel`` arguments of a fresh UNet that replaces the source's (its channels, text
            and class-label widths are set to fit; ``sample_size`` defaults to keep the source's image size).
        embedding_dim: Width of the image embeddings (None: the source's); another width needs ``unet``.
        decoder: ``UnCLIPDecoder`` sampling arguments (guidance_scale, num_inference_steps, noise_level, prompt,
            height, width, batch_size), used in validation and written by ``export``; the prompt is also trained.
        embedder: A frozen module mapping the batch's images to ``[B, D]`` embeddings (``image_embedders``). None:
            each record's ``embedding`` field (precomputed, of the uncropped image: use ``flip: false``). It stays
            outside the module tree (not in checkpoints); built in Python, pass it again to ``load_from_checkpoint``.
        cond_dropout: Probability that an image's condition is zeroed (classifier-free guidance; original 0.25).
        max_noise_level: Augmentation levels are drawn from U{0..max_noise_level-1} (at most 1000).
        snr_gamma: Min-SNR-gamma loss weighting (e.g. 5.0); None: plain MSE, as the original.
        lr: Peak learning rate of AdamW (the original: 1e-4).
        betas: AdamW's betas.
        weight_decay: AdamW's weight decay.
        warmup_steps: Linear warm-up steps.
        min_lr_ratio: Final learning rate as a share of ``lr`` (a cosine to ``trainer.max_steps``); 1: constant.
        gradient_checkpointing: Recompute the UNet's activations in the backward pass (saves memory).
        val_images: Validation embeddings decoded per validation (from the first batch).
        val_seed: Seed of the validation draws and decodes.
        seed: Seed of the tiny components and of a fresh UNet's weights.
        export_dir: Where ``export`` writes the pipeline folder when a fit ends (rank 0). None: not written.
    """

    def __init__(self, source: str | None = SOURCE, vae: str | None = None, unet: dict | None = None,
                 embedding_dim: int | None = None, decoder: dict | None = None, embedder: nn.Module | None = None,
                 cond_dropout: float = 0.1, max_noise_level: int = 1000, snr_gamma: float | None = None,
                 lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 1e-2,
                 warmup_steps: int = 0, min_lr_ratio: float = 1.0, gradient_checkpointing: bool = False,
                 val_images: int = 2, val_seed: int = 0, seed: int = 0, export_dir: str | None = None):
        super().__init__()
        from diffusers import DDPMScheduler

        self.save_hyperparameters(ignore=[] if from_cli() else ["embedder"])
        if not 0 <= cond_dropout <= 1 or not 1 <= max_noise_level <= 1000 or (snr_gamma or 1) <= 0:
            raise AnyGPTError(f"need cond_dropout in [0, 1], max_noise_level in [1, 1000] and snr_gamma > 0; got "
                              f"{cond_dropout}, {max_noise_level}, {snr_gamma}")
        if lr <= 0 or warmup_steps < 0 or not 0 <= min_lr_ratio <= 1 or val_images < 0:
            raise AnyGPTError(f"need lr > 0, warmup_steps >= 0, min_lr_ratio in [0, 1] and val_images >= 0; got "
                              f"{lr}, {warmup_steps}, {min_lr_ratio}, {val_images}")
        settings = check_keys("decoder", decoder, UnCLIPDecoder.__init__)
        for key in ("source", "components", "dtype"):
            if key in settings:
                raise AnyGPTError(f"model.init_args.decoder.{key}: set by the trainer (source is model.init_args."
                                  f"source; training runs in float32 weights)")
        components = assemble(source, vae, unet, embedding_dim, seed)
        try:
            self.decoder = UnCLIPDecoder(source=None, components=components, dtype="float32", **settings)
        except ValueError as err:
            raise AnyGPTError(f"model.init_args.decoder: {err}") from None
        self.decoder.vae.requires_grad_(False)
        self.decoder.text_encoder.requires_grad_(False)
        self.decoder.image_normalizer.requires_grad_(False)
        if gradient_checkpointing:
            self.decoder.unet.enable_gradient_checkpointing()
        config = self.decoder.pipe.scheduler.config  # the sampler's betas and prediction type
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start, beta_end=config.beta_end,
            beta_schedule=config.beta_schedule, trained_betas=config.get("trained_betas"),
            prediction_type=config.prediction_type)
        object.__setattr__(self, "embedder", embedder)  # frozen, outside the module tree: not in checkpoints
        if embedder is not None:
            embedder.eval().requires_grad_(False)
        self.cond_dropout, self.max_noise_level, self.snr_gamma = cond_dropout, max_noise_level, snr_gamma
        self.lr, self.betas, self.weight_decay = lr, tuple(betas), weight_decay
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        self.val_images, self.val_seed, self.export_dir = val_images, val_seed, export_dir
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)

    def train(self, mode: bool = True) -> UnCLIPTrainer:
        super().train(mode)
        for frozen in (self.decoder.vae, self.decoder.text_encoder, self.decoder.image_normalizer):
            frozen.eval()
        return self

    def embed(self, batch: dict) -> Tensor:
        """The ``[B, D]`` float32 embeddings of a batch's images: the embedder's, or the records' ``embedding``."""
        return embeddings_of(batch, self.embedder, self.decoder.embedding_dim)

    def denoising_loss(self, images: Tensor, embeddings: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The diffusion loss of the decoder's UNet on ``images`` conditioned on ``embeddings`` (module docstring).

        Args:
            images: ``[B, 3, H, W]`` in [0, 1]; H and W multiples of the VAE's downsampling.
            embeddings: ``[B, D]`` image embeddings; they may carry gradient (joint training).
            generator: Source of every random draw (on the CPU), for reproducible losses; None: the global RNG.

        Returns:
            The scalar loss (float32).
        """
        check_images(images)
        if embeddings.ndim != 2 or embeddings.shape != (len(images), self.decoder.embedding_dim):
            raise AnyGPTError(f"embeddings must be [{len(images)}, {self.decoder.embedding_dim}] for {len(images)} "
                              f"images, got {tuple(embeddings.shape)}")
        dec, n, device = self.decoder, len(images), images.device

        def randn(shape) -> Tensor:
            return torch.randn(shape, generator=generator).to(device)

        with torch.no_grad():
            posterior = dec.vae.encode((images * 2 - 1).to(dec.vae.dtype)).latent_dist
            latents = (posterior.mean + posterior.std * randn(posterior.mean.shape)) * dec.vae.config.scaling_factor
            text = dec.pipe.encode_prompt(dec.prompt, device, 1, False)[0]
        latents = latents.float()
        noise = randn(latents.shape)
        steps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (n,), generator=generator).to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, steps)
        kind = self.noise_scheduler.config.prediction_type
        target = {"epsilon": noise, "sample": latents}.get(kind)
        if target is None:
            target = self.noise_scheduler.get_velocity(latents, noise, steps)
        condition = draw_condition(dec.pipe, embeddings, self.max_noise_level, self.cond_dropout, generator)
        grid = dec.embedding_grid(embeddings, latents.shape[-2:])
        if grid is not None:  # the clean embedding's grid (zeros where the condition is dropped)
            noisy = torch.cat([noisy, grid.to(noisy) * ~condition.dropped[:, None, None, None]], dim=1)
        predicted = dec.unet(noisy, steps, encoder_hidden_states=text.expand(n, -1, -1),
                             class_labels=condition.labels, return_dict=False)[0]
        per_image = F.mse_loss(predicted.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if self.snr_gamma:
            alphas = self.noise_scheduler.alphas_cumprod.to(device)[steps]
            snr = alphas / (1 - alphas)
            clipped = snr.clamp(max=self.snr_gamma)
            per_image = per_image * {"epsilon": clipped / snr, "sample": clipped}.get(kind, clipped / (snr + 1))
        return per_image.mean()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.denoising_loss(batch["image"], self.embed(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images, embeddings = batch["image"], self.embed(batch)
        generator = torch.Generator().manual_seed(self.val_seed * 100003 + batch_idx)
        loss = self.denoising_loss(images, embeddings, generator)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(images))
        if batch_idx == 0 and self.val_images:
            self._decode_metrics(images[:self.val_images], embeddings[:self.val_images])

    def _decode_metrics(self, images: Tensor, embeddings: Tensor) -> None:
        decoded, reference = decode_beside(self.decoder, embeddings, images, self.val_seed)
        self.val_psnr(decoded, reference)
        self.val_ssim(decoded, reference)
        self.log_dict({"val/psnr": self.val_psnr, "val/ssim": self.val_ssim}, batch_size=len(images))
        if self.embedder is not None:
            again = self.embed({"image": decoded, "items": [{}] * len(decoded)})
            cosine = F.cosine_similarity(again, embeddings.float(), dim=-1).mean()
            self.log("val/embedding_cosine", cosine, batch_size=len(images))

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.decoder.unet.parameters(), lr=self.lr, betas=self.betas,
                                      weight_decay=self.weight_decay)
        return {"optimizer": optimizer,
                "lr_scheduler": warmup_schedule(optimizer, self.trainer, self.warmup_steps, self.min_lr_ratio)}

    def export(self, folder: str) -> None:
        """Write the decoder as a diffusers ``StableUnCLIPImg2ImgPipeline`` folder (no image encoder) that
        ``UnCLIPDecoder(source=folder)`` loads; the sampling settings are ``UnCLIPDecoder`` arguments, not saved."""
        from diffusers.utils import logging as diffusers_logging

        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # not a warning: the image encoder is left out on purpose
        try:
            self.decoder.pipe.save_pretrained(folder)
        finally:
            diffusers_logging.set_verbosity(level)

    @classmethod
    def export_checkpoint(cls, checkpoint: str, folder: str) -> None:
        """Write the decoder of a fit checkpoint as a pipeline folder."""
        cls.load_from_checkpoint(checkpoint, map_location="cpu", embedder=None).export(folder)

    def on_train_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            self.export(self.export_dir)


def checkpoint_components(checkpoint: str) -> dict:
    """The trained pipeline components of an ``UnCLIPTrainer`` fit checkpoint (``UnCLIPDecoder(components=...)``).

    Raises:
        AnyGPTError: The file is missing or not such a checkpoint.
    """
    from pathlib import Path

    if not Path(checkpoint).is_file():
        raise AnyGPTError(f"{checkpoint}: no such checkpoint file")
    try:
        trained = UnCLIPTrainer.load_from_checkpoint(checkpoint, map_location="cpu", embedder=None)
    except (KeyError, TypeError, RuntimeError) as err:
        raise AnyGPTError(f"{checkpoint}: not an UnCLIPTrainer fit checkpoint ("
                          f"{one_line(err, with_type=True)})") from None
    return {k: v for k, v in trained.decoder.pipe.components.items() if k not in ("image_encoder", "feature_extractor")}
