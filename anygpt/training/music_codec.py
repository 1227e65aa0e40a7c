"""Training the music codec: the Encodec network of ``EncodecMusicCodec`` (transformers' modules and weight layout).

transformers' ``EncodecModel`` is inference-only: its forward passes no gradient through the quantizer and has no
commitment loss. ``EncodecTrainer`` runs the same encoder and decoder around ``StraightThroughRVQ`` (EMA codebooks
in transformers' own buffers, k-means initialisation from scratch, dead-code restart), with audiocraft's losses:
waveform L1, multi-scale mel and commitment, and optionally an MS-STFT discriminator with feature matching.
Weights add up plainly (audiocraft's gradient balancer is not reproduced). Any number of codebooks and sample rate:
they come from the codec's Encodec config.

A trained model loads back into the inference class: ``EncodecMusicCodec(source=<folder>)`` after
``EncodecTrainer.export(folder)``, or ``EncodecMusicCodec(source=<fit .ckpt>)`` directly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from anygpt import AnyGPTError
from anygpt.tokenizers.harmonic import HarmonicDecoder
from anygpt.tokenizers.music import EncodecMusicCodec
from anygpt.training.arguments import check_keys
from anygpt.training.audio_losses import (LowBandSpectrumLoss, MultiScaleMelLoss, MultiScaleSTFTDiscriminator,
                                          discriminator_loss, feature_matching_loss, frames_valid, generator_loss,
                                          si_snr, time_l1)
from anygpt.training.codebooks import CodebookUsage
from anygpt.training.codec_mode import TrainsCodecNetwork
from anygpt.training.pitch import pitch_loss, yin_pitch
from anygpt.training.rvq import StraightThroughRVQ

WEIGHTS = {"time": 0.1, "mel": 1.0, "commit": 1.0, "adversarial": 4.0, "feature": 4.0, "low_band": 0.0, "pitch": 0.0,
           "first_pitch": 0.0}


class EncodecTrainer(TrainsCodecNetwork, LightningModule):
    """Trains the Encodec network of an ``EncodecMusicCodec``: from scratch (``codec: {source: null, config:
    {...}}``) or from released weights (``codec: {source: facebook/encodec_32khz}``).

    Args:
        codec: ``EncodecMusicCodec`` arguments; the codec's ``bandwidth`` sets how many codebooks train.
        weights: Loss weights over the defaults ``time 0.1, mel 1, commit 1, adversarial 4, feature 4, low_band 0,
            pitch 0, first_pitch 0``.
            ``low_band`` weighs ``LowBandSpectrumLoss``: a fine linear-frequency log spectrum, which tells notes a
            semitone apart where the mel bands cannot (beyond audiocraft). ``pitch`` weighs the pitch loss of a
            decoder with a harmonic branch (``harmonics`` in the codec's config) against the clips' YIN pitch.
            ``first_pitch`` weighs the same pitch loss of a training-only head that reads the first codebook's
            code vectors alone (straight through to the encoder), as SpeechTokenizer distils its teacher into
            RVQ-1: the note's pitch then lives in the first code of each frame, where an LM reading the codes finds
            it, rather than spread over the residual codebooks; it needs the harmonic branch's pitch range.
        mel_weights: Weights of the mel scales (``n_fft`` 1024 halved per scale, 64 mels, as audiocraft's msspec).
        kmeans_init: Initialise the codebooks by k-means on the first batch; None: when training from scratch.
        codebook_decay: EMA decay of the codebooks.
        dead_code_threshold: Codes whose EMA usage falls below it restart from batch vectors.
        adversarial: Train an MS-STFT discriminator (one discriminator then one generator update per step).
        optimizer: Optimizer factory of the codec (and of the discriminator); None: Adam(3e-4, betas 0.5, 0.9).
        lr_scheduler: Scheduler factory of the codec's optimizer, stepped every step (not with ``adversarial``);
            None keeps the rate constant.
        low_band: ``LowBandSpectrumLoss`` arguments other than the sample rate (``n_fft``, ``hop_length``,
            ``f_max``).
    """

    def __init__(self, codec: dict[str, Any], weights: dict[str, float] | None = None,
                 mel_weights: list[float] = [1.0, 1.0, 1.0, 1.0, 1.0], kmeans_init: bool | None = None,
                 codebook_decay: float = 0.99, dead_code_threshold: float = 2.0, adversarial: bool = False,
                 optimizer: OptimizerCallable | None = None, low_band: dict[str, Any] | None = None,
                 lr_scheduler: LRSchedulerCallable | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        if lr_scheduler is not None and adversarial:
            raise AnyGPTError("model.init_args.lr_scheduler: not with adversarial training (two optimizers stepped "
                              "by hand); leave one out")
        unknown = set(weights or {}) - set(WEIGHTS)
        if unknown:
            raise AnyGPTError(f"weights: unknown loss {sorted(unknown)[0]!r} (known: {', '.join(WEIGHTS)})")
        self.weights = {**WEIGHTS, **(weights or {})}
        self.codec = EncodecMusicCodec(**codec)
        self.codec.model.requires_grad_(True)
        model = self.codec.model
        self.levels = self.codec.num_codebooks
        self.rvq = StraightThroughRVQ([layer.codebook for layer in model.quantizer.layers[: self.levels]],
                                      decay=codebook_decay, dead_code_threshold=dead_code_threshold)
        if kmeans_init if kmeans_init is not None else codec.get("config") is not None:
            self.rvq.reset()
        self.mel = MultiScaleMelLoss(self.codec.sample_rate, weights=mel_weights, n_mels=64, n_fft=1024,
                                     hop_length=256, win_length=1024)
        low_band = check_keys("low_band", low_band, LowBandSpectrumLoss)
        if "sample_rate" in low_band:
            raise AnyGPTError("model.init_args.low_band: sample_rate is the codec's")
        self.low_band = LowBandSpectrumLoss(self.codec.sample_rate, **low_band) if self.weights["low_band"] else None
        self.first_pitch_head = None
        if self.weights["first_pitch"]:
            if not isinstance(model.decoder, HarmonicDecoder):
                raise AnyGPTError("model.init_args.weights.first_pitch: needs a codec with the harmonic decoder "
                                  "branch (harmonics in codec.config), whose pitch range it predicts in")
            self.first_pitch_head = nn.Conv1d(model.quantizer.layers[0].codebook.embed.shape[1], 1, kernel_size=1)
        self.discriminator = MultiScaleSTFTDiscriminator() if adversarial else None
        self.automatic_optimization = not adversarial
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.usage = CodebookUsage(self.levels, self.codec.codebook_size)
        self.train()  # Lightning keeps each submodule's mode: the frozen codec's Encodec must train (cuDNN's LSTM)


    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction ``[B, L]``, codes ``[levels, B, T]`` and commitment loss of clips ``[B, L]``."""
        return self._run(audio)[:3]

    def _run(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                 torch.Tensor | None]:
        """``forward``'s outputs, the harmonic branch's pitch per frame ``[B, T]`` (None without the branch) and the
        first-codebook head's (None without ``first_pitch``)."""
        model = self.codec.model
        embeddings = model.encoder(audio.unsqueeze(1))
        quantized, codes, commit = self.rvq(embeddings, self.levels)
        f0 = first_f0 = None
        if isinstance(model.decoder, HarmonicDecoder):
            wave, f0, _ = model.decoder(quantized, with_pitch=True)
        else:
            wave = model.decoder(quantized)
        if self.first_pitch_head is not None:
            book = model.quantizer.layers[0].codebook.embed.to(embeddings.dtype)
            first = F.embedding(codes[0], book).transpose(1, 2)  # [B, D, T]: the first code's vectors
            first = embeddings + (first - embeddings).detach()  # straight through to the encoder
            first_f0 = model.decoder.frequency(self.first_pitch_head(first)[:, 0].float())
        return wave[:, 0, : audio.shape[-1]], codes, commit, f0, first_f0

    def _losses(self, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        audio, mask = batch["audio"], batch["mask"]
        recon, codes, commit, f0, first_f0 = self._run(audio)
        recon = recon * mask
        parts = {"time": time_l1(recon, audio, mask), "mel": self.mel(recon, audio, mask), "commit": commit}
        if self.low_band is not None:
            parts["low_band"] = self.low_band(recon, audio, mask)
        if f0 is not None:
            decoder, hop = self.codec.model.decoder, self.codec.hop_length
            target, voiced = yin_pitch(audio * mask, self.codec.sample_rate, hop, decoder.f_min, decoder.f_max)
            stage, voiced = "train" if self.training else "val", voiced & frames_valid(mask, hop)
            parts["pitch"], accuracy = pitch_loss(f0, target, voiced)
            self.log(f"{stage}/pitch_semitone_acc", accuracy, batch_size=len(audio))
            if first_f0 is not None:
                parts["first_pitch"], accuracy = pitch_loss(first_f0, target, voiced)
                self.log(f"{stage}/first_pitch_semitone_acc", accuracy, batch_size=len(audio))
        return parts, recon, codes

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        parts, recon, _ = self._losses(batch)
        if self.discriminator is not None:
            d_opt, g_opt = self.optimizers()
            real_logits, _ = self.discriminator(batch["audio"])
            fake_logits, _ = self.discriminator(recon.detach())
            d_loss = discriminator_loss(real_logits, fake_logits)
            d_opt.zero_grad()
            self.manual_backward(d_loss)
            d_opt.step()
            self.log("train/discriminator", d_loss)
            real_logits, real_features = self.discriminator(batch["audio"])
            fake_logits, fake_features = self.discriminator(recon)
            parts["adversarial"] = generator_loss(fake_logits)
            parts["feature"] = feature_matching_loss(real_features, fake_features)
        loss = sum(self.weights[name] * value for name, value in parts.items())
        for name, value in parts.items():
            self.log(f"train/{name}", value)
        self.log("train/loss", loss, prog_bar=True)
        if self.discriminator is None:
            return loss
        g_opt.zero_grad()
        self.manual_backward(loss)
        g_opt.step()
        return None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        parts, recon, codes = self._losses(batch)
        frames = codes.shape[-1]
        hop = batch["audio"].shape[-1] / frames
        valid = batch["mask"][:, (torch.arange(frames, device=codes.device) * hop).long()]
        self.usage.update(codes, valid)
        loss = sum(self.weights[name] * value for name, value in parts.items())
        size = len(batch["audio"])
        self.log("val/loss", loss, batch_size=size, prog_bar=True)
        self.log("val/mel", self.mel.distances(recon, batch["audio"], batch["mask"])[0], batch_size=size)
        self.log("val/si_snr", si_snr(recon, batch["audio"], batch["mask"]).mean(), batch_size=size)

    def on_validation_epoch_end(self) -> None:
        usage = self.usage.compute()
        for level in range(self.levels):
            self.log(f"val/perplexity_l{level + 1}", usage["perplexity"][level])
            self.log(f"val/live_l{level + 1}", usage["live"][level])
        self.usage.reset()

    def configure_optimizers(self):
        def build(params):
            if self.optimizer_factory is not None:
                return self.optimizer_factory(params)
            return torch.optim.Adam(params, lr=3e-4, betas=(0.5, 0.9))

        heads = [] if self.first_pitch_head is None else list(self.first_pitch_head.parameters())
        generator = build([p for p in self.codec.model.parameters() if p.requires_grad] + heads)
        if self.discriminator is None:
            if self.scheduler_factory is None:
                return generator
            return {"optimizer": generator,
                    "lr_scheduler": {"scheduler": self.scheduler_factory(generator), "interval": "step"}}
        return [build(self.discriminator.parameters()), generator]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["encodec_config"] = self.codec.model.config.to_dict()  # what EncodecMusicCodec rebuilds

    def export(self, folder: str) -> None:
        """Write the trained Encodec as a transformers folder that ``EncodecMusicCodec(source=folder)`` loads."""
        self.codec.model.save_pretrained(folder)
