"""Training SoundStorm (SpeechTokenizer RVQ-1 -> RVQ 2-8) with ``anygpt fit``: the original's masked objective.

``SoundStormTrainer`` wraps the inference class ``SoundStormDecoder`` itself (its parameters are the trainer's
``decoder.*``), so a fit checkpoint loads back with ``SoundStormDecoder.from_pretrained``. A frozen
``SpeechTokenizerCodec`` turns each audio batch into all 8 RVQ levels on the fly; it sits outside the module tree, so
checkpoints hold the decoder alone.

One training step (``soundstorm_speechtokenizer/soundstorm.py:SoundStorm.forward``): a prompt delimiter t ~ U[0,
min_len - 2] and a level q ~ U{0..Q-1} per batch, a mask ratio cos(pi u / 2) per item. Frames < t keep every level;
frames >= t keep the levels below q, lose level q on a random ratio-share of them and every level above q (MASK).
Cross-entropy is taken on the masked slots of level q only. The original masks ``ceil(ratio * eligible)`` frames
with no floor, so a batch could have no masked slot and a NaN loss; here every item masks at least ``min_mask``
frames (default 1, as lucidrains' SoundStorm), and t <= min_len - 2 leaves each item at least 2 eligible frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from anygpt import AnyGPTError
from anygpt.training.arguments import check_keys
from anygpt.decoders.soundstorm import SoundStormDecoder, _config_from_shapes
from anygpt.lm.schedules import WarmupCosine
from anygpt.tokenizers.speech import SpeechTokenizerCodec

CONFIG_KEY = "soundstorm_config"  # the decoder's constructor arguments, saved in every fit checkpoint


@dataclass
class MaskDraw:
    """The random draws of one batch.

    Attributes:
        prompt: Prompt delimiter t: frames ``< t`` keep every level.
        level: The masked and scored level q, 0-based among the acoustic levels (RVQ q + 2).
        ratios: ``[B]`` share of each item's eligible frames (real, ``>= t``) whose level q is masked.
        scores: ``[B, N]`` random scores: the eligible frames with the highest ones are masked.
    """

    prompt: int
    level: int
    ratios: Tensor
    scores: Tensor


def draw_mask(frame_mask: Tensor, levels: int, generator: torch.Generator | None = None) -> MaskDraw:
    """Draw t, q, the per-item ratios and the frame scores on the CPU (``generator`` or the global RNG)."""
    b, n = frame_mask.shape
    min_len = int(frame_mask.sum(dim=-1).min())
    prompt = int(torch.randint(0, max(min_len - 1, 1), (1,), generator=generator))
    ratios = torch.cos(torch.rand(b, generator=generator) * math.pi / 2).clamp(0.0, 1.0)
    level = int(torch.randint(0, levels, (1,), generator=generator))
    return MaskDraw(prompt, level, ratios, torch.rand(b, n, generator=generator))


def apply_mask(acoustic: Tensor, frame_mask: Tensor, draw: MaskDraw, mask_id: int,
               min_mask: int = 1) -> tuple[Tensor, Tensor]:
    """The network input for a draw, and the frames whose level q is masked (the only scored slots).

    Args:
        acoustic: ``[B, N, Q]`` true acoustic ids.
        frame_mask: ``[B, N]`` bool, False on padding frames (all their levels become MASK, none is scored).
        draw: The batch's draws.
        mask_id: The MASK id (the codebook size).
        min_mask: Least number of masked frames per item (capped by its eligible frames); 0 is the original.

    Returns:
        ``(inputs [B, N, Q], selected [B, N] bool)``.
    """
    _, n, q_levels = acoustic.shape
    device = acoustic.device
    frames = torch.arange(n, device=device)
    eligible = frame_mask & (frames >= draw.prompt)
    available = eligible.sum(dim=-1)
    count = (draw.ratios.to(device) * available).ceil().long().clamp(min=min_mask)
    count = torch.minimum(count, available)
    scores = draw.scores.to(device).masked_fill(~eligible, -1.0)
    rank = scores.argsort(dim=-1, descending=True).argsort(dim=-1)
    selected = eligible & (rank < count[:, None])
    above = (frames >= draw.prompt)[None, :, None] & (torch.arange(q_levels, device=device) > draw.level)
    inputs = acoustic.masked_fill(above, mask_id)
    inputs[..., draw.level] = inputs[..., draw.level].masked_fill(selected, mask_id)
    return inputs.masked_fill(~frame_mask[..., None], mask_id), selected


def init_from_codebooks(decoder: SoundStormDecoder, codec_model: nn.Module) -> None:
    """Copy SpeechTokenizer's codebooks into the embeddings: codebook 1 -> semantic, 2-8 -> levels, MASK rows 0.

    Raises:
        AnyGPTError: The codebooks' width or count differs from the decoder's.
    """
    books = [layer._codebook.embed for layer in codec_model.quantizer.vq.layers]
    q, c, dim = decoder.num_quantizers, decoder.codebook_size, decoder.semantic_token_emb.embedding_dim
    if len(books) != q + 1 or books[0].shape != (c, dim):
        raise AnyGPTError(f"init_from_codec: the codec has {len(books)} codebooks of shape "
                          f"{tuple(books[0].shape)}, the decoder needs {q + 1} of ({c}, {dim}); set "
                          f"model.init_args.init_from_codec false or decoder.dim {books[0].shape[1]}")
    with torch.no_grad():
        decoder.semantic_token_emb.weight.copy_(books[0])
        table = decoder.net.code_embeds.weight.view(q, c + 1, dim)
        table[:, :c] = torch.stack(books[1:])
        table[:, c] = 0.0


class _WarmupFromCosine(WarmupCosine):
    """WarmupCosine whose linear warm-up starts at ``start_ratio`` of the peak (the original: 3e-5 / 6e-4)."""

    def __init__(self, optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float, start_ratio: float):
        self.start_ratio = start_ratio
        super().__init__(optimizer, total_steps, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_ratio + (1 - self.start_ratio) * step / self.warmup_steps
        return super().factor(step)


class SoundStormTrainer(LightningModule):
    """Trains a ``SoundStormDecoder`` on audio with the original's masked objective; fit checkpoints load back
    into ``SoundStormDecoder.from_pretrained``.

    Batches are ``AudioClipsDataModule``'s (``audio [B, L]`` at the codec's rate, ``mask [B, L]``: frames whose
    first sample is padding are padding), or carry codes already: ``codes [B, N, 8]`` with an optional
    ``frame_mask [B, N]``.

    Args:
        decoder: ``SoundStormDecoder`` arguments for a fresh model (empty: AnyGPT's full size), or ``checkpoint``
            (a released file or a fit ``.ckpt``) plus optional arguments, to fine-tune.
        codec: ``SpeechTokenizerCodec`` arguments of the frozen codec (empty: the released one); its own SoundStorm
            is never built.
        init_from_codec: Start the code embeddings from the codec's codebooks (2-8, zero MASK rows) and the
            semantic embedding from codebook 1, as the original's README advises. None: only for a fresh decoder
            whose width equals the codebooks'; True insists (a clear error when widths differ).
        lr: Peak learning rate of Adam.
        betas: Adam's betas.
        warmup_steps: Linear warm-up steps, from ``warmup_start_lr`` to ``lr``; then a cosine to ``min_lr``.
        warmup_start_lr: Learning rate of the first step.
        min_lr: Learning rate at the end of the run.
        total_steps: Steps of the schedule; None takes the trainer's (``max_steps``).
        min_mask: Least number of masked frames per item (0 is the original, which can give an empty mask).
    """

    def __init__(self, decoder: dict | None = None, codec: dict | None = None, init_from_codec: bool | None = None,
                 lr: float = 6e-4, betas: tuple[float, float] = (0.9, 0.99), warmup_steps: int = 4000,
                 warmup_start_lr: float = 3e-5, min_lr: float = 0.0, total_steps: int | None = None,
                 min_mask: int = 1):
        super().__init__()
        self.save_hyperparameters()
        if not 0 < lr or warmup_steps < 0 or not 0 <= min_lr <= lr or min_mask < 0:
            raise AnyGPTError(f"need lr > 0, warmup_steps >= 0, 0 <= min_lr <= lr and min_mask >= 0; got {lr}, "
                              f"{warmup_steps}, {min_lr}, {min_mask}")
        spec = check_keys("decoder", decoder or {}, SoundStormDecoder.__init__, SoundStormDecoder.from_pretrained)
        checkpoint = spec.pop("checkpoint", None)
        self.decoder = (SoundStormDecoder.from_pretrained(checkpoint, **spec) if checkpoint
                        else SoundStormDecoder(**spec))
        codec_spec = check_keys("codec", codec or {}, SpeechTokenizerCodec.__init__)
        built = SpeechTokenizerCodec(**{**codec_spec, "decoder": None})
        object.__setattr__(self, "codec", built)  # frozen, outside the module tree: not in checkpoints
        d = self.decoder
        if built.num_layers != d.num_quantizers + 1 or not built.vocab_size == d.codebook_size == d.num_semantic_tokens:
            raise AnyGPTError(f"the codec gives {built.num_layers} levels of {built.vocab_size} codes; the decoder "
                              f"takes {d.num_semantic_tokens} semantic ids and predicts {d.num_quantizers} levels of "
                              f"{d.codebook_size}")
        width = built.model.quantizer.vq.layers[0]._codebook.embed.shape[-1]
        if init_from_codec or (init_from_codec is None and not checkpoint
                               and width == self.decoder.semantic_token_emb.embedding_dim):
            init_from_codebooks(self.decoder, built.model)
        self.val_accuracy = MulticlassAccuracy(self.decoder.codebook_size, average="micro")
        self.level_accuracy = nn.ModuleList(MulticlassAccuracy(self.decoder.codebook_size, average="micro")
                                            for _ in range(self.decoder.num_quantizers))

    def decoder_config(self) -> dict:
        """The decoder's constructor arguments (what ``from_pretrained`` cannot read from the shapes included)."""
        attn = self.decoder.net.conformer.layers[0].attn.fn
        given = {"heads": attn.heads, "dim_head": attn.dim_head}
        return {**_config_from_shapes(self.decoder.state_dict(), given), **given}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.decoder_config()

    def codes(self, batch: dict) -> tuple[Tensor, Tensor]:
        """All RVQ levels ``[B, N, 8]`` and the frame mask ``[B, N]`` of a batch (encoded in float32, no grad)."""
        if "codes" in batch:
            codes = batch["codes"].long()
            frame_mask = batch.get("frame_mask")
            if frame_mask is None:
                frame_mask = torch.ones(codes.shape[:2], dtype=torch.bool, device=codes.device)
            return codes, frame_mask.bool()
        audio = batch["audio"].float()
        if self.codec.device != audio.device:
            self.codec.to(audio.device)
        with torch.no_grad(), torch.autocast(audio.device.type, enabled=False):
            codes = self.codec.model.encode(audio.unsqueeze(1), n_q=self.codec.num_layers).permute(1, 2, 0)
        mask = batch.get("mask")
        if mask is None:
            return codes, torch.ones(codes.shape[:2], dtype=torch.bool, device=codes.device)
        return codes, mask[:, :: self.codec.hop_length][:, : codes.shape[1]].bool()

    def masked_step(self, batch: dict, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, int]:
        """One objective evaluation: ``(loss, logits [M, C], targets [M], q)`` over the M masked slots of level q.

        An empty mask (possible only with ``min_mask`` 0) gives a zero loss that keeps the graph.
        """
        codes, frame_mask = self.codes(batch)
        if not frame_mask.any():
            raise AnyGPTError("a batch without any real frame reached SoundStormTrainer")
        semantic, acoustic = codes[..., 0].masked_fill(~frame_mask, 0), codes[..., 1:]
        draw = draw_mask(frame_mask.cpu(), self.decoder.num_quantizers, generator)
        inputs, selected = apply_mask(acoustic, frame_mask, draw, self.decoder.mask_id, self.hparams.min_mask)
        logits = self.decoder.logits(semantic, inputs, frame_mask)[:, :, draw.level][selected].float()
        targets = acoustic[..., draw.level][selected]
        loss = F.cross_entropy(logits, targets) if targets.numel() else logits.sum() * 0.0
        return loss, logits, targets, draw.level

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, *_ = self.masked_step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch.get("audio", batch.get("codes"))))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(batch_idx)  # the same masks at every validation
        loss, logits, targets, level = self.masked_step(batch, generator)
        size = len(batch.get("audio", batch.get("codes")))
        self.log("val/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        if targets.numel():
            preds = logits.argmax(dim=-1)
            self.val_accuracy(preds, targets)
            self.level_accuracy[level](preds, targets)
            self.log("val/accuracy", self.val_accuracy, batch_size=size)
            self.log(f"val/accuracy_rvq{level + 2}", self.level_accuracy[level], batch_size=size)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        optimizer = torch.optim.Adam(self.decoder.parameters(), lr=hp.lr, betas=tuple(hp.betas))
        total = hp.total_steps or self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise AnyGPTError("the learning-rate schedule needs the run's length: set trainer.max_steps or "
                              "model.init_args.total_steps")
        scheduler = _WarmupFromCosine(optimizer, int(total), hp.warmup_steps, hp.min_lr / hp.lr,
                                      hp.warmup_start_lr / hp.lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
