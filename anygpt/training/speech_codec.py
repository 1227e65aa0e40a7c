"""Training SpeechTokenizer with ``anygpt fit``: ``SpeechTokenizerTrainer`` wraps the inference class itself.

Generator loss (codec_training §1.1): ``time_weight * L1 + multi-scale mel + commit_weight * commitment +
distill_weight * distillation + cycle_weight * round trip`` and, with ``adversarial``, LSGAN + feature matching against an MS-STFT
discriminator (one D update, then one G update per step). Distillation pulls RVQ level 1 towards meaning:
towards a frame-feature teacher (HuBERT, D-axis cosine through the model's ``transform``) and/or, for data with
phoneme timings, towards the frame's phoneme through a linear classifier on the straight-through RVQ-1 output.
The round trip (``anygpt.training.round_trip``) encodes the decoded audio again and asks for the same level-1 codes;
with ``frozen_encoder`` only the decoder trains, so the codes that tokenized data and SoundStorm hold stay valid.

Logged: ``train/loss`` (the total) and its parts (``train/time``, ``train/mel``, ``train/commit``, ``train/distill``,
...); ``val/loss``, ``val/mel`` (L1 of the first mel scale), ``val/si_snr``, ``val/phoneme_acc``, ``val/cycle_agreement``
(level-1 codes kept by decode + encode) and per RVQ level
``val/perplexity_l{k}`` and ``val/live_codes_l{k}``, all through the inference path (``encode`` then ``decode``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from anygpt import AnyGPTError
from anygpt.tokenizers.harmonic import HarmonicDecoder
from anygpt.training import audio_losses as losses
from anygpt.training.arguments import check_keys
from anygpt.training.codebooks import CodebookUsage, configure_ema, ema_codebooks, reset_for_kmeans, restart_dead_codes
from anygpt.training.codec_mode import TrainsCodecNetwork
from anygpt.training.pitch import pitch_loss, yin_pitch
from anygpt.training.round_trip import level_one_cycle
from anygpt.training.teachers import UNKNOWN, HubertTeacher, d_axis_loss, frame_labels, standardize_over_time

__all__ = ["HubertTeacher", "SpeechTokenizerTrainer"]


class SpeechTokenizerTrainer(TrainsCodecNetwork, LightningModule):
    """Trains a SpeechTokenizer (encoder, 8-level EMA RVQ, decoder) inside ``SpeechTokenizerCodec``.

    The fit checkpoint loads back into the inference class: ``SpeechTokenizerCodec(config=<the same config>,
    checkpoint=<the .ckpt>)`` takes its ``codec.model.*`` weights; ``export(folder)`` writes the native files.
    Codebooks: k-means init and EMA updates are the package's own; dead codes are re-seeded here (the package's
    expiry is a no-op, see ``anygpt.training.codebooks``). k-means on the first batch holds frames x codes x
    dimension floats at once (10 GB for 16 x 3 s clips at the real size).

    Args:
        codec: Arguments of ``SpeechTokenizerCodec`` (``config``: a dict of fields or a ``config.json`` reference;
            ``checkpoint``: released or earlier weights to fine-tune, or None to start from random weights; ``seed``).
            Its SoundStorm decoder is never built. None: the released layout from scratch.
        teacher: A frozen frame-feature module ``audio [B, L] -> [B, T, semantic_dimension]`` at the codec's frame
            rate (``anygpt.training.teachers.HubertTeacher``); its D-axis loss trains RVQ level 1.
        phoneme_labels: Phoneme vocabulary of the manifest's ``phonemes: [[label, start_s, end_s], ...]`` records;
            a linear classifier on RVQ level 1 learns each frame's label (others map to ``<unk>``; unlabelled frames
            are ignored). None: no phoneme loss.
        time_weight: Weight of the waveform L1.
        mel_weights: Weight of each mel scale; their number sets the scales.
        mel: Other ``MultiScaleMelLoss`` arguments (``n_mels``, ``n_fft``, ``hop_length``, ``win_length``, ...).
        commit_weight: Weight of the RVQ commitment loss (mean over levels).
        distill_weight: Weight of the distillation loss (teacher D-axis + phoneme cross-entropy).
        adversarial: Train against an MS-STFT discriminator (manual optimization, two optimizers; Lightning counts
            both updates of a batch in ``global_step``, so ``max_steps`` and checkpoint steps go 2 per batch).
        adv_weight: Weight of the generator's LSGAN loss.
        feat_weight: Weight of the feature-matching loss (the original doubles it inside: 2).
        discriminator: ``MultiScaleSTFTDiscriminator`` arguments (``n_ffts``, ``filters``).
        kmeans_init: Re-run k-means on the first training batch; None: only when training from scratch.
        kmeans_iters: k-means iterations of that init; None keeps the model's (50).
        dead_code_threshold: Codes whose EMA use per step falls below it are re-seeded from the batch; 0: never.
        ema_decay: Codebook EMA decay; None keeps the model's (0.99).
        optimizer: Generator optimizer factory; None is Adam(lr=1e-4, betas=(0.9, 0.99)).
        head_lr: Learning rate of the phoneme classifier (a fresh linear head); None: the optimizer's.
        discriminator_optimizer: Discriminator optimizer factory; None is the generator's kind.
        lr_scheduler: Scheduler factory (one per optimizer, stepped every step); None keeps the rate constant.
        grad_clip: Gradient norm clip in adversarial mode (else use ``trainer.gradient_clip_val``); None: off.
        cycle_weight: Weight of the round-trip loss (decoded audio re-encoded to its level-1 codes); 0: off.
        frozen_encoder: Train the decoder alone: the encoder and codebooks (no k-means, EMA or restarts) stay those
            of ``codec.checkpoint``, and so do the codes they give.
        fresh_decoder: With ``frozen_encoder``, start the decoder from random weights instead of the checkpoint's
            (for a decoder of another width: ``decoder_filters`` in ``codec.config``).
        pitch_weight: Weight of the pitch loss of a decoder with a harmonic branch (``harmonics`` in
            ``codec.config``): its per-frame fundamental against YIN's on the clip, in octaves, voiced frames only.
        low_band_weight: Weight of ``LowBandSpectrumLoss`` (fine linear-frequency log spectrum below ``f_max``, which
            tells a frame-rate buzz from the speaker's harmonics); 0: off.
        low_band: ``LowBandSpectrumLoss`` arguments other than the sample rate (``n_fft``, ``hop_length``, ``f_max``).
    """

    def __init__(self, codec: dict[str, Any] | None = None, teacher: nn.Module | None = None,
                 phoneme_labels: list[str] | None = None, time_weight: float = 500.0,
                 mel_weights: list[float] = [45.0, 1.0, 1.0, 1.0], mel: dict[str, Any] | None = None,
                 commit_weight: float = 10.0, distill_weight: float = 120.0, adversarial: bool = False,
                 adv_weight: float = 1.0, feat_weight: float = 2.0, discriminator: dict[str, Any] | None = None,
                 kmeans_init: bool | None = None, kmeans_iters: int | None = None, dead_code_threshold: float = 0.1,
                 ema_decay: float | None = None,
                 optimizer: OptimizerCallable | None = None, head_lr: float | None = None,
                 discriminator_optimizer: OptimizerCallable | None = None,
                 lr_scheduler: LRSchedulerCallable | None = None, grad_clip: float | None = None,
                 cycle_weight: float = 0.0, frozen_encoder: bool = False, fresh_decoder: bool = False,
                 pitch_weight: float = 0.0, low_band_weight: float = 0.0, low_band: dict[str, Any] | None = None):
        super().__init__()
        from anygpt.tokenizers.speech import REAL_CONFIG, SpeechTokenizerCodec

        self.save_hyperparameters(ignore=["teacher", "optimizer", "discriminator_optimizer", "lr_scheduler"])
        codec = {"config": dict(REAL_CONFIG), "checkpoint": None, **check_keys("codec", codec, SpeechTokenizerCodec)}
        if codec.get("decoder") is not None:
            raise AnyGPTError("model.init_args.codec.decoder: the trainer trains the SpeechTokenizer alone; "
                              "leave decoder out")
        labels = list(phoneme_labels or [])
        if len(set(labels)) != len(labels) or UNKNOWN in labels:
            raise AnyGPTError(f"phoneme_labels must be distinct and leave out {UNKNOWN} (added for unknown labels)")
        if dead_code_threshold < 0 or min(time_weight, commit_weight, distill_weight, adv_weight, feat_weight,
                                          cycle_weight, pitch_weight, low_band_weight) < 0:
            raise AnyGPTError("loss weights and dead_code_threshold must be >= 0")
        if frozen_encoder and codec["checkpoint"] is None:
            raise AnyGPTError("model.init_args.frozen_encoder needs codec.checkpoint: the encoder it keeps")
        if fresh_decoder and not frozen_encoder:
            raise AnyGPTError("model.init_args.fresh_decoder trains a new decoder for a kept encoder: set "
                              "frozen_encoder too")
        if fresh_decoder:
            from anygpt.hub import resolve_file
            from anygpt.tokenizers.speech import load_speechtokenizer_state

            self.codec = SpeechTokenizerCodec(**{**codec, "checkpoint": None, "decoder": None})
            load_speechtokenizer_state(self.codec.model, resolve_file(codec["checkpoint"]), skip="decoder.")
        else:
            self.codec = SpeechTokenizerCodec(**{**codec, "decoder": None})
        self.model_config = _model_config(codec["config"])
        self.frozen_encoder = frozen_encoder
        self.codec.model.requires_grad_(True)
        if frozen_encoder:
            for part in (self.codec.model.encoder, self.codec.model.quantizer, self.codec.model.transform):
                part.requires_grad_(False)
        self.books = ema_codebooks(self.codec.model)
        configure_ema(self.books, decay=ema_decay, kmeans_iters=kmeans_iters)
        from_scratch = codec["checkpoint"] is None
        if (from_scratch if kmeans_init is None else kmeans_init) and not frozen_encoder:
            reset_for_kmeans(self.books)
        self.sample_rate, self.hop = self.codec.sample_rate, self.codec.hop_length
        mel = check_keys("mel", mel, losses.MultiScaleMelLoss)
        if {"sample_rate", "weights"} & set(mel):
            raise AnyGPTError("model.init_args.mel: sample_rate is the codec's and weights are mel_weights")
        self.mel_loss = losses.MultiScaleMelLoss(self.sample_rate, mel_weights, **mel)
        low_band = check_keys("low_band", low_band, losses.LowBandSpectrumLoss)
        if "sample_rate" in low_band:
            raise AnyGPTError("model.init_args.low_band: sample_rate is the codec's")
        self.low_band_loss = losses.LowBandSpectrumLoss(self.sample_rate, **low_band) if low_band_weight else None
        self.teacher = [teacher.eval().requires_grad_(False)] if teacher is not None else []  # kept out of checkpoints
        self.labels = {label: i for i, label in enumerate([*labels, UNKNOWN])}
        self.classifier = nn.Linear(self.model_config["dimension"], len(self.labels)) if labels else None
        discriminator = check_keys("discriminator", discriminator, losses.MultiScaleSTFTDiscriminator)
        self.discriminator = losses.MultiScaleSTFTDiscriminator(**discriminator) if adversarial else None
        self.automatic_optimization = not adversarial
        self.weights = {"time": time_weight, "mel": 1.0, "commit": commit_weight, "distill": distill_weight,
                        "cycle": cycle_weight, "pitch": pitch_weight, "low_band": low_band_weight}
        self.adv_weight, self.feat_weight, self.dead_code_threshold = adv_weight, feat_weight, dead_code_threshold
        self.optimizer_factory, self.d_optimizer_factory = optimizer, discriminator_optimizer
        self.scheduler_factory, self.grad_clip, self.head_lr = lr_scheduler, grad_clip, head_lr
        self.usage = CodebookUsage(self.codec.num_layers, self.codec.vocab_size)
        self.train()  # Lightning keeps each submodule's mode: the frozen codec's SpeechTokenizer must train


    def _run(self, audio: torch.Tensor, training: bool, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Encode, quantize and decode ``audio [B, L]`` as ``SpeechTokenizer.forward``; when training, dead codes are
        first re-seeded from this batch's real frames (``valid [B, T]``) and the quantizer updates its EMA."""
        model = self.codec.model
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_encoder):
            embedding = model.encoder(audio.unsqueeze(1))
        if training and valid is not None and not self.frozen_encoder:
            self._restart_dead_codes(embedding.detach(), valid[:, : embedding.shape[-1]])
        if training and not self.frozen_encoder:
            quantized, codes, commit, firsts = model.quantizer(embedding, layers=[0])
            first = firsts[0]
        else:
            codes = model.quantizer.encode(embedding)
            quantized, first = model.quantizer.decode(codes), model.quantizer.decode(codes[:1])
            commit = embedding.new_zeros(())
        out = {"embedding": embedding, "codes": codes, "commit": commit, "first": first}
        if isinstance(model.decoder, HarmonicDecoder):
            wave, out["f0"], _ = model.decoder(quantized, with_pitch=True)
        else:
            wave = model.decoder(quantized)
        out["wave"] = wave[..., : audio.shape[-1]].squeeze(1)
        return out

    @torch.no_grad()
    def _restart_dead_codes(self, embedding: torch.Tensor, valid: torch.Tensor) -> None:
        if not all(bool(book.inited) for book in self.books):  # k-means init comes first
            return
        restarted, residual = 0, embedding
        for layer, book in zip(self.codec.model.quantizer.vq.layers, self.books):
            restarted += restart_dead_codes(book, residual.transpose(1, 2)[valid], self.dead_code_threshold)
            residual = residual - layer.decode(layer.encode(residual))
        self.log("train/restarted_codes", float(restarted), batch_size=len(valid))

    def _distill(self, batch: dict, out: dict, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        parts: dict[str, torch.Tensor] = {}
        first = out["first"].transpose(1, 2)  # [B, T, D]
        if self.teacher:
            teacher = self.teacher[0].to(self.device)
            with torch.no_grad():
                target = teacher(losses.masked(batch["audio"], batch["mask"]))
            student = self.codec.model.transform(first)
            parts["distill_teacher"] = d_axis_loss(student, target, valid)
        if self.classifier is not None:
            speeds = batch["speed"].tolist() if "speed" in batch else None
            labels = frame_labels(batch["items"], batch["offset"].tolist(), first.shape[1], self.hop / self.sample_rate,
                                  self.labels, speeds).to(self.device).masked_fill(~valid, -100)
            logits = self.classifier(standardize_over_time(first, valid))
            known = labels >= 0
            parts["distill_ce"] = (F.cross_entropy(logits[known], labels[known]) if known.any()
                                   else logits.sum() * 0)
            if known.any():
                parts["phoneme_acc"] = (logits[known].argmax(-1) == labels[known]).float().mean()
        if parts:
            parts["distill"] = sum(v for k, v in parts.items() if k.startswith("distill_"))
        return parts

    def _generator_losses(self, batch: dict, out: dict) -> dict[str, torch.Tensor]:
        audio, mask = batch["audio"], batch["mask"]
        valid = losses.frames_valid(mask, self.hop)
        parts = {"time": losses.time_l1(out["wave"], audio, mask), "mel": self.mel_loss(out["wave"], audio, mask),
                 "commit": out["commit"], **self._distill(batch, out, valid)}
        if self.low_band_loss is not None:
            parts["low_band"] = self.low_band_loss(out["wave"], audio, mask)
        if "f0" in out:
            target, voiced = yin_pitch(losses.masked(audio, mask), self.sample_rate, self.hop)
            parts["pitch"], parts["pitch_semitone_acc"] = pitch_loss(out["f0"], target, voiced & valid)
        if self.weights["cycle"] or not self.training:
            parts["cycle"], parts["cycle_agreement"] = level_one_cycle(
                self.codec.model, losses.masked(out["wave"], mask), out["codes"][0].detach(), valid)
        parts["loss"] = sum(w * parts[k] for k, w in self.weights.items() if k in parts)
        return parts

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        out = self._run(batch["audio"], training=True, valid=losses.frames_valid(batch["mask"], self.hop))
        if self.discriminator is None:
            parts = self._generator_losses(batch, out)
            self._log_parts("train", parts, len(batch["audio"]))
            return parts["loss"]
        opt_g, opt_d = self.optimizers()
        real = losses.masked(batch["audio"], batch["mask"])
        fake = losses.masked(out["wave"], batch["mask"])
        d_real, _ = self.discriminator(real)
        d_fake, _ = self.discriminator(fake.detach())
        d_loss = losses.discriminator_loss(d_real, d_fake)
        self._step(opt_d, d_loss)
        parts = self._generator_losses(batch, out)
        with torch.no_grad():
            _, f_real = self.discriminator(real)
        g_fake, f_fake = self.discriminator(fake)
        parts["adv"], parts["feat"] = losses.generator_loss(g_fake), losses.feature_matching_loss(f_real, f_fake)
        parts["loss"] = parts["loss"] + self.adv_weight * parts["adv"] + self.feat_weight * parts["feat"]
        self._step(opt_g, parts["loss"])
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            scheduler.step()
        self._log_parts("train", {**parts, "disc": d_loss}, len(batch["audio"]))
        return None

    def _step(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self._run(batch["audio"], training=False)
        parts = self._generator_losses(batch, out)
        parts.pop("commit")
        parts["mel"] = self.mel_loss.distances(out["wave"], batch["audio"], batch["mask"])[0]
        parts["si_snr"] = losses.si_snr(out["wave"], batch["audio"], batch["mask"]).mean()
        self.usage.update(out["codes"], losses.frames_valid(batch["mask"], self.hop))
        self._log_parts("val", parts, len(batch["audio"]))

    def on_validation_epoch_end(self) -> None:
        stats = self.usage.compute()
        for level in range(self.codec.num_layers):
            self.log(f"val/perplexity_l{level + 1}", stats["perplexity"][level])
            self.log(f"val/live_codes_l{level + 1}", stats["live"][level])
        self.usage.reset()

    def _log_parts(self, stage: str, parts: dict[str, torch.Tensor], batch_size: int) -> None:
        for name, value in parts.items():
            self.log(f"{stage}/{name}", value.detach().float(), prog_bar=name == "loss", batch_size=batch_size,
                     sync_dist=stage == "val")

    def configure_optimizers(self) -> Any:
        def default(params):
            return torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.99))

        codec = [p for p in self.codec.model.parameters() if p.requires_grad]
        head = [] if self.classifier is None else list(self.classifier.parameters())
        groups = [{"params": codec}]
        if head:
            groups.append({"params": head, **({"lr": self.head_lr} if self.head_lr else {})})
        optimizers = [(self.optimizer_factory or default)(groups)]
        if self.discriminator is not None:
            make = self.d_optimizer_factory or self.optimizer_factory or default
            optimizers.append(make(self.discriminator.parameters()))
        if self.scheduler_factory is None:
            return optimizers
        return [{"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}
                for opt in optimizers]

    def export(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``ckpt.dev`` (the SpeechTokenizer's plain state dict) that
        ``SpeechTokenizerCodec.from_pretrained(folder / "config.json", folder / "ckpt.dev")`` loads."""
        import json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.model_config, indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().cpu().clone() for k, v in self.codec.model.state_dict().items()}
        torch.save(state, folder / "ckpt.dev")
        return folder


def _model_config(config: str | dict) -> dict:
    """The SpeechTokenizer fields that ``SpeechTokenizerCodec`` built the model from."""
    import json

    from anygpt.hub import resolve_file
    from anygpt.tokenizers.speech import REAL_CONFIG

    if isinstance(config, dict):
        return {**REAL_CONFIG, **config}
    return json.loads(resolve_file(config).read_text(encoding="utf-8"))
