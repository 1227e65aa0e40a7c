"""Training a small CLIP on captioned pictures with ``anygpt fit``: the teacher of an image codec trained from scratch.

SEED-2's codes are distilled toward a CLIP ViT's image embedding, which captions shaped; that is what lets a
language model read them. A world without a pretrained CLIP (the demo's scenes) trains one: transformers'
``CLIPModel`` at a small size, its image tower on the batch's pictures and its text tower on their captions
(``ImageFilesDataModule`` batches carry the manifest records; train with ``flip: false`` where captions name left
and right), with CLIP's symmetric contrastive loss. Caption words are hashed into ``vocab_size`` ids (no vocabulary
file: the same words get the same ids on every machine).

``export(folder)`` writes the image tower with its projection as a ``CLIPVisionModelWithProjection`` folder, which
``image_embedders.CLIPImageEmbedder(source=folder)`` reads as a teacher (it normalises pictures as training did).
"""

from __future__ import annotations

import copy
import zlib

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from anygpt import AnyGPTError
from anygpt.training.arguments import check_images, check_keys, warmup_schedule
from anygpt.training.image_embedders import CLIP_MEAN, CLIP_STD

PAD, BOS = 0, 1  # EOS is the highest id (vocab_size + 2): CLIP's text tower pools there


def word_ids(captions: list[str], vocab_size: int, length: int) -> Tensor:
    """``[B, length]`` ids: BOS, each word hashed into ``2 .. vocab_size + 1``, EOS (``vocab_size + 2``), then PAD
    (words beyond ``length - 2`` are cut)."""
    out = torch.full((len(captions), length), PAD, dtype=torch.long)
    for row, caption in enumerate(captions):
        words = [2 + zlib.crc32(w.encode("utf-8")) % vocab_size for w in caption.lower().split()][: length - 2]
        ids = [BOS, *words, vocab_size + 2]
        out[row, : len(ids)] = torch.tensor(ids)
    return out


class CLIPTeacherTrainer(LightningModule):
    """Trains a fresh small ``CLIPModel`` on captioned pictures (batches: ``image [B, 3, S, S]`` in [0, 1] and
    ``items`` with a ``text`` each).

    Logs ``train/loss`` and, in validation, ``val/loss`` and ``val/top1`` (the share of pictures whose own caption
    scores highest among the batch's).

    Args:
        vision: ``CLIPVisionConfig`` fields (``hidden_size``, ``num_hidden_layers``, ``image_size``, ``patch_size``...).
        text: ``CLIPTextConfig`` fields other than the vocabulary and position sizes, which ``vocab_size`` and
            ``max_words`` set.
        projection_dim: Width of the shared embedding (the teacher's width).
        vocab_size: Hash buckets of caption words.
        max_words: Words kept of a caption.
        lr: Peak learning rate of AdamW.
        weight_decay: AdamW's weight decay.
        warmup_steps: Linear warm-up steps.
        min_lr_ratio: Final learning rate as a share of ``lr`` (a cosine to ``trainer.max_steps``); 1: constant.
        export_dir: Where ``export`` writes the image tower when a fit ends (rank 0). None: not written.
    """

    def __init__(self, vision: dict | None = None, text: dict | None = None, projection_dim: int = 128,
                 vocab_size: int = 4096, max_words: int = 30, lr: float = 1e-3, weight_decay: float = 0.01,
                 warmup_steps: int = 0, min_lr_ratio: float = 1.0, export_dir: str | None = None):
        super().__init__()
        from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

        self.save_hyperparameters()
        if min(projection_dim, vocab_size, max_words) < 1 or lr <= 0 or not 0 <= min_lr_ratio <= 1:
            raise AnyGPTError(f"need projection_dim, vocab_size, max_words >= 1, lr > 0 and min_lr_ratio in [0, 1]; "
                              f"got {projection_dim}, {vocab_size}, {max_words}, {lr}, {min_lr_ratio}")
        text = check_keys("text", text, CLIPTextConfig.__init__)
        text.update(vocab_size=vocab_size + 3, max_position_embeddings=max_words + 2, pad_token_id=PAD,
                    bos_token_id=BOS, eos_token_id=vocab_size + 2)
        vision = check_keys("vision", vision, CLIPVisionConfig.__init__)
        self.clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim))
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.vocab_size, self.max_words = vocab_size, max_words
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.min_lr_ratio, self.export_dir = warmup_steps, min_lr_ratio, export_dir

    def logits(self, images: Tensor, captions: list[str]) -> Tensor:
        """``[B, B]`` scaled similarities of every picture (rows) to every caption (columns)."""
        check_images(images)
        if len(captions) != len(images):
            raise AnyGPTError(f"{len(images)} pictures but {len(captions)} captions")
        size = self.clip.config.vision_config.image_size
        if images.shape[-2:] != (size, size):
            raise AnyGPTError(f"the image tower reads {size} x {size} pictures, got {tuple(images.shape[-2:])}")
        ids = word_ids(captions, self.vocab_size, self.max_words + 2).to(images.device)
        out = self.clip(input_ids=ids, attention_mask=ids != PAD, pixel_values=(images.float() - self.mean) / self.std)
        return out.logits_per_image

    def _loss(self, batch: dict) -> tuple[Tensor, Tensor]:
        captions = [item.get("text") for item in batch["items"]]
        if any(not isinstance(c, str) or not c.strip() for c in captions):
            raise AnyGPTError("every picture needs a caption: the manifest records lack a non-empty 'text'")
        logits = self.logits(batch["image"], captions)
        target = torch.arange(len(logits), device=logits.device)
        loss = (torch.nn.functional.cross_entropy(logits, target) +
                torch.nn.functional.cross_entropy(logits.T, target)) / 2
        return loss, (logits.argmax(1) == target).float().mean()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, _ = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, top1 = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        self.log("val/top1", top1, batch_size=len(batch["image"]))

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.clip.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return {"optimizer": optimizer,
                "lr_scheduler": warmup_schedule(optimizer, self.trainer, self.warmup_steps, self.min_lr_ratio)}

    def export(self, folder: str) -> None:
        """The image tower and its projection as a ``CLIPVisionModelWithProjection`` folder."""
        from transformers import CLIPVisionModelWithProjection

        config = copy.deepcopy(self.clip.config.vision_config)  # the trained model's own config stays as it is
        config.projection_dim = self.clip.config.projection_dim
        tower = CLIPVisionModelWithProjection(config)
        tower.vision_model.load_state_dict(self.clip.vision_model.state_dict())
        tower.visual_projection.load_state_dict(self.clip.visual_projection.state_dict())
        tower.save_pretrained(folder)

    def on_train_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            self.export(self.export_dir)
