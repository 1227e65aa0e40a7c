"""Training the SEED-2 image tokenizer with ``anygpt fit``: stage 2 of SEED (the VQ and the code decoder).

``SeedTrainer`` wraps the inference class ``SeedImageCodec`` itself. The frozen EVA ViT and causal Q-Former give 32
query embeddings q per image; what trains is ``encode_task_layer`` (q -> z), the codebook, ``decode_task_layer`` and
the two heads on the straight-through quantised z: the reconstruction head (``pos_embed`` + ``blocks``, back to q)
and the image head (``pos_embed_image`` + ``blocks_image`` + ``image_down`` + ``distill_image_proj``), whose output
is the embedding the unCLIP decoder is conditioned on. The objective (codec_training.md section 4.2)::

    loss = 5 L_vq + 2 L_recon + 0.5 L_image
    L_vq    = |z - sg(e)|^2 + beta |e - sg(z)|^2       (VectorQuantizer2, legacy=True; beta 0.25)
    L_recon = mean(1 - cos(recon head, sg(q)))
    L_image = MSE(image head, teacher embedding)        (CLIP ViT-H for the released model; records' ``embedding``)

Joint mode (``decoder``: ``UnCLIPTrainer`` arguments) adds that trainer's denoising loss on the image embedding, so
the codec and the UNet train together (with or without a teacher).

A trained model loads back into the inference class: ``export(folder)`` writes ``seed_quantizer.pt``,
``eva_vit_g.pth`` and ``seed_config.json``; ``load_codec(folder or fit .ckpt)`` builds the ``SeedImageCodec``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from anygpt import AnyGPTError
from anygpt.messages import one_line
from anygpt.tokenizers.image import CLIP_MEAN, CLIP_STD, SeedImageCodec
from anygpt.tokenizers.seed.model import split_keys
from anygpt.training.arguments import check_keys
from anygpt.training.codebooks import CodebookUsage
from anygpt.training.image_embedders import embeddings_of
from anygpt.training.seed_parts import (CODE_PREFIXES, FROZEN_PREFIXES, quantize_st, recon_from_decoded,
                                        redraw_stage2, restart_codes)
from anygpt.training.arguments import from_cli, warmup_schedule

WEIGHTS = {"vq": 5.0, "recon": 2.0, "image": 0.5, "denoise": 1.0}
FILES = {"quantizer": "seed_quantizer.pt", "visual": "eva_vit_g.pth", "config": "seed_config.json"}


class SeedTrainer(LightningModule):
    """Trains the VQ and code decoder of a ``SeedImageCodec`` (``self.codec``) on images.

    Batches are ``ImageFilesDataModule``'s (``image [B, 3, S, S]`` in [0, 1], ``items``); images are resized to the
    codec's input size and CLIP-normalised. Logs ``train/loss`` and its parts; in validation ``val/loss``,
    ``val/embedding_cosine`` (image embedding vs its target), ``val/recon_cosine``, ``val/perplexity`` and
    ``val/live_codes`` of the codes, and in joint mode ``val/psnr`` / ``val/ssim`` of decoded pictures.

    Args:
        codec: ``SeedImageCodec`` arguments (``quantizer``, ``visual``, ``config``, ``seed``): released weights to
            fine-tune, or ``quantizer: null`` (and ``visual: null``) for random ones.
        embedder: Frozen teacher mapping images to ``[B, image_features_dim]`` (``image_embedders``); None: the
            records' ``embedding`` fields, or in joint mode no image loss when the records have none.
        decoder: ``UnCLIPTrainer`` arguments: joint training with that decoder's denoising loss (its UNet trains).
        weights: Loss weights over the defaults ``vq 5, recon 2, image 0.5, denoise 1``.
        beta: Weight of the codebook term inside L_vq (the reference's legacy VQ: commitment 1, codebook beta).
        train_encoder: Also train the ViT, ``ln_vision``, the Q-Former and its queries (frozen in the reference).
        train_codes: Train what decides the codes (``encode_task_layer`` and the codebook); False keeps every
            image's codes as they are, so an LM trained on them stays valid while the code decoder and the unCLIP
            UNet train on (no dead-code restarts then). Needs ``train_encoder`` False.
        fresh_heads: Redraw the stage-2 parts (codebook fitted to z, as random codecs) from ``codec.seed``: stage 2
            from scratch on the released stage-1 ViT and Q-Former.
        restart_threshold: Codes used less than this (EMA count per step) restart from the batch's z; 0: off, as
            the reference (helps tiny runs against collapse).
        lr: Peak AdamW learning rate (reference 1e-4).
        betas: AdamW's betas.
        weight_decay: AdamW's weight decay (reference 0.05).
        warmup_steps: Linear warm-up steps.
        min_lr_ratio: Final learning rate as a share of ``lr`` (cosine to ``trainer.max_steps``); 1: constant.
        val_images: Pictures decoded per validation in joint mode.
        val_seed: Seed of the validation decodes and denoising draws.
        export_dir: Where ``export`` writes when a fit ends (rank 0); None: not written.
    """

    def __init__(self, codec: dict | None = None, embedder: nn.Module | None = None, decoder: dict | None = None,
                 weights: dict | None = None, beta: float = 0.25, train_encoder: bool = False,
                 train_codes: bool = True, fresh_heads: bool = False, restart_threshold: float = 0.0, lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.05, warmup_steps: int = 0,
                 min_lr_ratio: float = 1.0, val_images: int = 2, val_seed: int = 0, export_dir: str | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=[] if from_cli() else ["embedder"])
        unknown = sorted(set(weights or {}) - set(WEIGHTS))
        if unknown:
            raise AnyGPTError(f"model.init_args.weights: unknown loss {unknown[0]!r} (known: {', '.join(WEIGHTS)})")
        if beta < 0 or restart_threshold < 0 or lr <= 0 or warmup_steps < 0 or not 0 <= min_lr_ratio <= 1:
            raise AnyGPTError(f"need beta >= 0, restart_threshold >= 0, lr > 0, warmup_steps >= 0 and min_lr_ratio in "
                              f"[0, 1]; got {beta}, {restart_threshold}, {lr}, {warmup_steps}, {min_lr_ratio}")
        if train_encoder and not train_codes:
            raise AnyGPTError("model.init_args.train_codes false keeps the codes: it needs train_encoder false")
        settings = check_keys("codec", codec, SeedImageCodec.__init__)
        for key in ("decoder", "dtype"):
            if key in settings:
                raise AnyGPTError(f"model.init_args.codec.{key}: set by the trainer (the decoder is model.init_args."
                                  f"decoder; training keeps float32 weights)")
        self.codec = SeedImageCodec(**{**settings, "decoder": None, "dtype": "float32"})
        self.weights = {**WEIGHTS, **(weights or {})}
        self.beta, self.train_encoder, self.train_codes = beta, train_encoder, train_codes
        self.restart_threshold = restart_threshold if train_codes else 0.0
        self.lr, self.betas, self.weight_decay = lr, tuple(betas), weight_decay
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        self.val_images, self.val_seed, self.export_dir = val_images, val_seed, export_dir
        if fresh_heads:
            redraw_stage2(self.codec.model, settings.get("seed", 0))
        frozen = FROZEN_PREFIXES + (() if train_codes else CODE_PREFIXES)
        for name, param in self.codec.model.named_parameters():
            param.requires_grad_(train_encoder or not name.startswith(frozen))
        object.__setattr__(self, "embedder", embedder)  # frozen, outside the module tree: not in checkpoints
        if embedder is not None:
            embedder.eval().requires_grad_(False)
        self.unclip = None
        if decoder is not None:
            from anygpt.training.unclip import UnCLIPTrainer

            spec = check_keys("decoder", decoder, UnCLIPTrainer.__init__)
            if "embedder" in spec:
                raise AnyGPTError("model.init_args.decoder.embedder: the decoder is conditioned on the codec's "
                                  "embedding; the teacher is model.init_args.embedder")
            self.unclip = UnCLIPTrainer(**spec)
            if self.unclip.decoder.embedding_dim != self.codec.config["image_features_dim"]:
                raise AnyGPTError(f"model.init_args.decoder takes {self.unclip.decoder.embedding_dim}-d embeddings, "
                                  f"the codec makes {self.codec.config['image_features_dim']}-d ones")
            self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
            self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        size = self.codec.vocab_size
        self.register_buffer("code_ema", torch.full((size,), float(restart_threshold) + 1.0), persistent=False)
        self.usage = CodebookUsage(1, size)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    # --- forward ---

    def pixels(self, images: Tensor) -> Tensor:
        """Codec input ``[B, 3, S, S]``: ``images`` in [0, 1] resized (bicubic) to the codec's size, normalised."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise AnyGPTError(f"images must be a float [batch, 3, height, width] tensor, got {tuple(images.shape)}")
        size = self.codec.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images.float(), size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)
        return (images.float() - self.mean) / self.std

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``{"query", "z", "codes", "vq", "recon", "embedding"}`` of images ``[B, 3, H, W]`` in [0, 1]."""
        model = self.codec.model
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_encoder):
            query = model.query_output(model.image_embeds(self.pixels(images)))
        z = model.encode_task_layer(query)
        quantized, codes, vq = quantize_st(model.quantize, z, self.beta)
        decoded = model.decode_task_layer(quantized)
        return {"query": query, "z": z, "codes": codes, "vq": vq, "recon": recon_from_decoded(model, decoded),
                "embedding": model.image_features(decoded)}

    def targets(self, batch: dict) -> Tensor | None:
        """Teacher embeddings of the batch: the embedder's, the records', or None in joint mode without either."""
        if self.embedder is None and self.unclip is not None and not all("embedding" in r for r in batch["items"]):
            return None
        return embeddings_of(batch, self.embedder, self.codec.config["image_features_dim"])

    def _losses(self, batch: dict, generator: torch.Generator | None = None
                ) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor | None]:
        out = self(batch["image"])
        target = self.targets(batch)
        parts = {"vq": out["vq"],
                 "recon": (1 - F.cosine_similarity(out["recon"].float(), out["query"].detach().float(), dim=-1)).mean()}
        if target is not None:
            parts["image"] = F.mse_loss(out["embedding"].float(), target)
        if self.unclip is not None:
            parts["denoise"] = self.unclip.denoising_loss(batch["image"], out["embedding"].float(), generator)
        return parts, out, target

    def _total(self, parts: dict[str, Tensor]) -> Tensor:
        return sum(self.weights[name] * value for name, value in parts.items())

    # --- steps ---

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        parts, out, _ = self._losses(batch)
        loss = self._total(parts)
        size = len(batch["image"])
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        if self.restart_threshold > 0:
            restarted = restart_codes(self.codec.model.quantize.embedding.weight, self.code_ema, out["codes"],
                                      out["z"], self.restart_threshold)
            self.log("train/restarted_codes", float(restarted), batch_size=size)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(self.val_seed * 100003 + batch_idx)
        parts, out, target = self._losses(batch, generator)
        size = len(batch["image"])
        self.usage.update(out["codes"].reshape(1, size, -1))
        self.log("val/loss", self._total(parts), prog_bar=True, batch_size=size)
        cosine = F.cosine_similarity(out["recon"].float(), out["query"].float(), dim=-1).mean()
        self.log("val/recon_cosine", cosine, batch_size=size)
        if target is not None:
            cosine = F.cosine_similarity(out["embedding"].float(), target, dim=-1).mean()
            self.log("val/embedding_cosine", cosine, batch_size=size)
        if self.unclip is not None and batch_idx == 0 and self.val_images:
            self._decode_metrics(batch["image"][:self.val_images], out["embedding"][:self.val_images])

    def _decode_metrics(self, images: Tensor, embeddings: Tensor) -> None:
        from anygpt.training.unclip import decode_beside

        decoded, reference = decode_beside(self.unclip.decoder, embeddings, images, self.val_seed)
        self.val_psnr(decoded, reference)
        self.val_ssim(decoded, reference)
        self.log_dict({"val/psnr": self.val_psnr, "val/ssim": self.val_ssim}, batch_size=len(images))

    def on_validation_epoch_end(self) -> None:
        usage = self.usage.compute()
        self.log("val/perplexity", usage["perplexity"].reshape(-1)[0])  # torchmetrics squeezes one level
        self.log("val/live_codes", usage["live"].reshape(-1)[0])
        self.usage.reset()

    def configure_optimizers(self):
        params = [p for p in self.codec.model.parameters() if p.requires_grad]
        if self.unclip is not None:
            params += list(self.unclip.decoder.unet.parameters())
        optimizer = torch.optim.AdamW(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        return {"optimizer": optimizer,
                "lr_scheduler": warmup_schedule(optimizer, self.trainer, self.warmup_steps, self.min_lr_ratio)}

    # --- checkpoints and export ---

    def _frozen_keys(self) -> list[str]:
        if self.train_encoder:
            return []
        return [f"codec.model.{k}" for k in self.codec.model.state_dict() if k.startswith(FROZEN_PREFIXES)]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Leave the frozen ViT and Q-Former out (they come from ``codec``'s sources: ~4 GB at full size)."""
        dropped = self._frozen_keys()
        for key in dropped:
            checkpoint["state_dict"].pop(key, None)
        checkpoint["seed_frozen_keys"] = dropped
        checkpoint["seed_config"] = dict(self.codec.config)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        own = self.state_dict()
        for key in checkpoint.get("seed_frozen_keys", []):
            checkpoint["state_dict"].setdefault(key, own[key])

    def export(self, folder: str) -> None:
        """Write ``seed_quantizer.pt``, ``eva_vit_g.pth`` and ``seed_config.json`` (what ``load_codec`` reads), and
        in joint mode the unCLIP decoder as a pipeline folder ``decoder/`` (``UnCLIPDecoder(source=...)``)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        visual, rest = split_keys(self.codec.model)
        torch.save({k: v.detach().cpu().clone() for k, v in rest.items()}, out / FILES["quantizer"])
        torch.save({k: v.detach().cpu().clone() for k, v in visual.items()}, out / FILES["visual"])
        (out / FILES["config"]).write_text(json.dumps(self.codec.config, indent=1) + "\n")
        if self.unclip is not None:
            self.unclip.export(str(out / "decoder"))

    def on_train_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            self.export(self.export_dir)


def load_codec(source: str, **kw) -> SeedImageCodec:
    """A ``SeedImageCodec`` from an ``export`` folder or a ``SeedTrainer`` fit checkpoint (``.ckpt``).

    Args:
        source: The folder or checkpoint file.
        **kw: Further ``SeedImageCodec`` arguments (``decoder``, ``dtype``, ...); default decoder None.

    Raises:
        AnyGPTError: Nothing of that kind there (one line naming ``source``).
    """
    path = Path(source).expanduser()
    kw.setdefault("decoder", None)
    if path.is_dir():
        files = {name: path / file for name, file in FILES.items()}
        missing = [str(f.name) for f in files.values() if not f.is_file()]
        if missing:
            raise AnyGPTError(f"{source}: not a SeedTrainer export (missing {', '.join(missing)})")
        config = json.loads(files["config"].read_text())
        return SeedImageCodec(quantizer=str(files["quantizer"]), visual=str(files["visual"]), config=config, **kw)
    if not path.is_file():
        raise AnyGPTError(f"{source}: no such SeedTrainer checkpoint or export folder")
    try:
        trained = SeedTrainer.load_from_checkpoint(path, map_location="cpu", embedder=None)
    except (KeyError, TypeError, RuntimeError, EOFError, AttributeError) as err:
        raise AnyGPTError(f"{source}: not a SeedTrainer fit checkpoint ("
                          f"{one_line(err, with_type=True)})") from None
    visual, rest = split_keys(trained.codec.model)
    return SeedImageCodec(quantizer=rest, visual=visual, config=trained.codec.config, **kw)


__all__ = ["SeedTrainer", "WEIGHTS", "load_codec"]
