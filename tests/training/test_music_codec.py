"""The Encodec music codec trained with `anygpt fit` (tiny twin, CPU), and its way back into EncodecMusicCodec."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from anygpt import AnyGPTError

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "tests/configs/codecs/encodec_tiny.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny twin after 20 steps, with its CSV log and last checkpoint."""
    import os

    from anygpt.cli import AnyModelCLI

    folder = tmp_path_factory.mktemp("encodec")
    here = os.getcwd()
    os.chdir(ROOT)
    try:
        cli = AnyModelCLI(args=["fit", "--config", CONFIG, "--trainer.max_steps", "20",
                                "--trainer.val_check_interval", "20", "--trainer.enable_checkpointing", "true",
                                "--trainer.default_root_dir", str(folder),
                                "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
                                "--trainer.logger.save_dir", str(folder)])
    finally:
        os.chdir(here)
    return cli, folder


def test_tiny_twin_lowers_its_loss(trained):
    _, folder = trained
    [metrics] = folder.rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 20
    assert sum(losses[-3:]) / 3 < 0.75 * sum(losses[:3]) / 3
    validated = [r for r in rows if r.get("val/loss")]
    assert validated and all(float(validated[-1][f"val/live_l{k}"]) > 1 for k in range(1, 5))  # no level collapsed
    assert float(validated[-1]["val/si_snr"]) < 100 and float(validated[-1]["val/mel"]) > 0


def tone(seconds: float = 0.5, rate: int = 32000) -> tuple[torch.Tensor, int]:
    t = torch.arange(int(seconds * rate)) / rate
    return (0.4 * torch.sin(2 * torch.pi * (200 + 300 * t) * t)).unsqueeze(0), rate


def test_checkpoint_and_export_load_into_the_inference_codec_with_identical_codes(trained, tmp_path):
    from anygpt.tokenizers.music import EncodecMusicCodec

    cli, folder = trained
    trained_codec = cli.model.codec.eval()
    expected = trained_codec.encode([tone()])[0]
    [ckpt] = folder.rglob("*.ckpt")
    from_ckpt = EncodecMusicCodec(source=str(ckpt), segment_seconds=None)
    assert torch.equal(from_ckpt.encode([tone()])[0], expected)
    cli.model.export(str(tmp_path / "hf"))
    from_folder = EncodecMusicCodec(source=str(tmp_path / "hf"), segment_seconds=None)
    assert torch.equal(from_folder.encode([tone()])[0], expected)
    # and they decode as the trained network does
    assert torch.allclose(from_ckpt.decode([expected])[0], trained_codec.decode([expected])[0], atol=1e-5)


def test_adversarial_training_steps_both_networks(monkeypatch):
    from anygpt.cli import AnyModelCLI

    monkeypatch.chdir(ROOT)
    cli = AnyModelCLI(args=["--config", CONFIG, "--model.init_args.adversarial", "true",
                            "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"], run=False)
    before = {k: v.clone() for k, v in cli.model.discriminator.state_dict().items()}
    encoder = cli.model.codec.model.encoder.layers[0].conv.weight.detach().clone() \
        if hasattr(cli.model.codec.model.encoder.layers[0], "conv") else None
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    after = cli.model.discriminator.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert cli.trainer.global_step >= 2
    if encoder is not None:
        assert not torch.equal(encoder, cli.model.codec.model.encoder.layers[0].conv.weight)


@pytest.mark.parametrize("trainer_path", ["anygpt.training.music_codec.EncodecTrainer",
                                          "anygpt.training.speech_codec.SpeechTokenizerTrainer"])
def test_the_wrapped_network_trains_while_its_trainer_does(trainer_path):
    """cuDNN's LSTM has no backward in eval mode: the frozen inference codec must not keep its network in eval."""
    import importlib

    module_name, name = trainer_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), name)
    config = ({"source": None, "config": {"num_filters": 4, "hidden_size": 16, "codebook_dim": 16}}
              if name == "EncodecTrainer" else
              {"config": {"n_filters": 4, "dimension": 32, "semantic_dimension": 16}, "checkpoint": None,
               "decoder": None})
    trainer = cls(codec=config)
    lstm = next(m for m in trainer.codec.model.modules() if isinstance(m, torch.nn.LSTM))
    assert lstm.training
    trainer.eval()
    assert not lstm.training
    trainer.train()
    assert lstm.training


def test_a_scheduler_steps_the_codec_rate_every_step(tmp_path, monkeypatch):
    from anygpt.cli import AnyModelCLI
    from anygpt.training.music_codec import EncodecTrainer

    monkeypatch.chdir(ROOT)
    schedule = '{"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 2, "gamma": 0.5}}'
    adam = '{"class_path": "torch.optim.Adam", "init_args": {"lr": 0.008}}'
    cli = AnyModelCLI(args=["fit", "--config", CONFIG, "--trainer.max_steps", "6", "--trainer.logger", "false",
                            "--trainer.enable_checkpointing", "false", "--trainer.default_root_dir", str(tmp_path),
                            "--model.init_args.optimizer", adam,
                            "--model.init_args.lr_scheduler", schedule])
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.008 * 0.5 ** 3)  # 6 steps, halved per 2
    with pytest.raises(AnyGPTError, match="not with adversarial"):
        EncodecTrainer(codec={"source": None, "config": {"num_filters": 4, "hidden_size": 16, "codebook_dim": 16}},
                       adversarial=True, lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1))


def test_unknown_loss_weight_is_one_line():
    from anygpt.training.music_codec import EncodecTrainer

    with pytest.raises(AnyGPTError, match="weights: unknown loss 'cycle'"):
        EncodecTrainer(codec={"source": None, "config": {"num_filters": 4, "hidden_size": 16, "codebook_dim": 16}},
                       weights={"cycle": 1.0})


def test_a_file_that_is_no_fit_checkpoint_is_one_line(tmp_path):
    from anygpt.tokenizers.music import EncodecMusicCodec

    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(AnyGPTError, match="is not a checkpoint of EncodecTrainer"):
        EncodecMusicCodec(source=str(tmp_path / "other.ckpt"))


def test_low_band_loss_joins_the_objective_with_its_weight():
    """The fine low-band spectrum (notes a semitone apart) is one more weighted part of the loss."""
    from anygpt.training.audio_losses import LowBandSpectrumLoss
    from anygpt.training.music_codec import EncodecTrainer

    codec = {"source": None, "config": {"num_filters": 4, "hidden_size": 16, "codebook_dim": 16}}
    trainer = EncodecTrainer(codec=codec, weights={"low_band": 2.0}, low_band={"f_max": 2000.0})
    audio = tone(0.25)[0].repeat(2, 1)
    batch = {"audio": audio, "mask": torch.ones_like(audio)}
    torch.manual_seed(0)
    parts, recon, _ = trainer._losses(batch)
    reference = LowBandSpectrumLoss(32000, f_max=2000.0)(recon, audio, batch["mask"])
    assert torch.allclose(parts["low_band"], reference)
    assert "low_band" not in EncodecTrainer(codec=codec)._losses(batch)[0]
    with pytest.raises(AnyGPTError, match="low_band: unknown"):
        EncodecTrainer(codec=codec, weights={"low_band": 1.0}, low_band={"bins": 3})


HARMONIC = {"num_filters": 4, "hidden_size": 16, "codebook_dim": 16, "sampling_rate": 16000, "harmonics": 8,
            "harmonic_range": [80.0, 1600.0]}


def test_harmonic_branch_saves_and_loads_with_the_same_sound(tmp_path):
    """A codec with the harmonic decoder branch comes back from a saved folder and from a fit checkpoint."""
    from anygpt.tokenizers.harmonic import HarmonicDecoder
    from anygpt.tokenizers.music import EncodecMusicCodec
    from anygpt.training.music_codec import EncodecTrainer

    trainer = EncodecTrainer(codec={"source": None, "config": HARMONIC, "segment_seconds": None})
    codec = trainer.codec.eval()
    assert isinstance(codec.model.decoder, HarmonicDecoder) and codec.model.decoder.f_max == 1600.0
    with torch.no_grad():
        codec.model.decoder.head.weight.normal_(0, 0.3)  # a voiced, pitched branch, not the silent start
    codes = codec.encode([tone(0.5, 16000)])[0]
    expected = codec.decode([codes])[0]
    codec.model.save_pretrained(tmp_path / "saved")
    torch.save({"state_dict": trainer.state_dict(), "encodec_config": codec.model.config.to_dict()},
               tmp_path / "fit.ckpt")
    for source in (tmp_path / "saved", tmp_path / "fit.ckpt"):
        loaded = EncodecMusicCodec(source=str(source), segment_seconds=None)
        assert isinstance(loaded.model.decoder, HarmonicDecoder)
        assert torch.equal(loaded.encode([tone(0.5, 16000)])[0], codes)
        assert torch.allclose(loaded.decode([codes])[0], expected, atol=1e-5)


def test_pitch_loss_reaches_the_pitch_head():
    """With a harmonic branch the objective gains a pitch part (against the clips' YIN pitch) whose gradient
    reaches the pitch head."""
    from anygpt.training.music_codec import EncodecTrainer

    trainer = EncodecTrainer(codec={"source": None, "config": HARMONIC, "segment_seconds": None},
                             weights={"pitch": 1.0})
    t = torch.arange(8000) / 16000
    audio = (0.5 * torch.sin(2 * torch.pi * 330 * t)).repeat(2, 1)
    parts, _, _ = trainer._losses({"audio": audio, "mask": torch.ones_like(audio)})
    assert torch.isfinite(parts["pitch"]) and parts["pitch"] > 0
    parts["pitch"].backward()
    head = trainer.codec.model.decoder.head
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_first_codebook_pitch_teaches_the_encoder_through_the_first_code():
    """``first_pitch``: a head on the first codebook's code vectors alone predicts the clips' YIN pitch; its loss
    is the pitch loss of those predictions, its gradient reaches the head and (straight through) the encoder, and
    it needs the harmonic branch's pitch range."""
    from anygpt.training.music_codec import EncodecTrainer
    from anygpt.training.pitch import pitch_loss, yin_pitch

    torch.manual_seed(0)
    trainer = EncodecTrainer(codec={"source": None, "config": HARMONIC, "segment_seconds": None},
                             weights={"first_pitch": 1.0})
    t = torch.arange(8000) / 16000
    audio = torch.stack([0.5 * torch.sin(2 * torch.pi * 330 * t), 0.5 * torch.sin(2 * torch.pi * 523 * t)])
    batch = {"audio": audio, "mask": torch.ones_like(audio)}
    parts, _, codes = trainer._losses(batch)
    assert torch.isfinite(parts["first_pitch"]) and parts["first_pitch"] > 0
    # the head reads the first code's vectors: the same loss from the head applied to them by hand
    model, decoder = trainer.codec.model, trainer.codec.model.decoder
    vectors = torch.nn.functional.embedding(codes[0], model.quantizer.layers[0].codebook.embed).transpose(1, 2)
    f0 = decoder.f_min * (decoder.f_max / decoder.f_min) ** torch.sigmoid(trainer.first_pitch_head(vectors)[:, 0])
    target, voiced = yin_pitch(audio, 16000, trainer.codec.hop_length, decoder.f_min, decoder.f_max)
    torch.testing.assert_close(parts["first_pitch"], pitch_loss(f0, target, voiced)[0], atol=1e-5, rtol=1e-4)
    parts["first_pitch"].backward()
    assert trainer.first_pitch_head.weight.grad.abs().sum() > 0
    encoder = [p for p in model.encoder.parameters() if p.grad is not None]
    assert encoder and sum(float(p.grad.abs().sum()) for p in encoder) > 0
    head = trainer.first_pitch_head.weight
    assert any(head is p for group in trainer.configure_optimizers().param_groups for p in group["params"])
    assert "first_pitch" not in EncodecTrainer(codec={"source": None, "config": HARMONIC})._losses(batch)[0]
    with pytest.raises(AnyGPTError, match="harmonic decoder"):
        EncodecTrainer(codec={"source": None, "config": {k: v for k, v in HARMONIC.items() if "harmonic" not in k}},
                       weights={"first_pitch": 1.0})
