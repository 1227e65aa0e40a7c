"""SpeechTokenizer training: the tiny twin through ``anygpt fit``, its losses, codebooks, teachers and checkpoints."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from anygpt import AnyGPTError
from anygpt.training import audio_losses as losses
from anygpt.training.codebooks import live_codes, perplexity, restart_dead_codes
from anygpt.training.teachers import HubertTeacher, d_axis_loss, frame_labels
from tests.training.synthetic_audio import LABELS, write_tone_corpus

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "configs" / "codecs" / "speechtokenizer_tiny.yaml"
TINY_HUBERT = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
               "conv_dim": [8] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tone_corpus(tmp_path_factory.mktemp("tones"))


def fit(corpus, folder: Path, *overrides: str):
    from anygpt.cli import AnyModelCLI

    train, val = corpus
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        cli = AnyModelCLI(args=["fit", "--config", str(TINY), "--data.init_args.train", str(train),
                                "--data.init_args.val", str(val), "--trainer.logger.init_args.save_dir", str(folder),
                                *overrides])
    rows = list(csv.DictReader(next(folder.rglob("metrics.csv")).open()))
    return SimpleNamespace(cli=cli, folder=folder, rows=rows)


@pytest.fixture(scope="module")
def tiny_fit(corpus, tmp_path_factory):
    return fit(corpus, tmp_path_factory.mktemp("fit"))


def series(rows: list[dict], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key)]


def tiny_config() -> dict:
    return yaml.safe_load(TINY.read_text())["model"]["init_args"]["codec"]["config"]


def test_tiny_twin_lowers_its_loss(tiny_fit):
    loss = series(tiny_fit.rows, "train/loss")
    assert len(loss) == 60 and all(math.isfinite(x) for x in loss)
    first, last = sum(loss[:5]) / 5, sum(loss[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    for part in ("train/mel", "train/time", "train/commit", "train/distill", "val/mel", "val/si_snr", "val/loss"):
        assert series(tiny_fit.rows, part), part


def test_codebooks_keep_several_live_codes(tiny_fit, corpus):
    for level in range(1, 9):
        assert series(tiny_fit.rows, f"val/live_codes_l{level}")[-1] > 1
        assert series(tiny_fit.rows, f"val/perplexity_l{level}")[-1] > 1
    model = tiny_fit.cli.model.eval()
    data = tiny_fit.cli.datamodule
    audio = data.val_dataloader().collate_fn([(item, 0.0) for item in data.val_items])
    with torch.no_grad():
        codes = model.codec.model.encode(audio["audio"].unsqueeze(1))  # [8, B, T]
    assert all(len(torch.unique(level)) > 1 for level in codes)


def labelled_share(manifest: Path, seconds: float) -> tuple[float, float]:
    """Seconds of each label in the first ``seconds`` of every file: the majority label's share of the labelled time."""
    totals = dict.fromkeys(LABELS, 0.0)
    for line in manifest.read_text().splitlines():
        for label, start, end in json.loads(line)["phonemes"]:
            totals[label] += max(0.0, min(end, seconds) - start)
    return max(totals.values()) / sum(totals.values()), 1 / len(LABELS)


def test_distillation_learns_the_tone_labels(tiny_fit, corpus):
    distill = series(tiny_fit.rows, "train/distill")
    assert sum(distill[-10:]) / 10 < sum(distill[:10]) / 10 - 0.15
    majority, chance = labelled_share(corpus[1], 0.5)
    accuracy = series(tiny_fit.rows, "val/phoneme_acc")[-1]
    assert accuracy > max(majority, chance) + 0.1, (accuracy, majority)


def test_fit_checkpoint_gives_the_same_codes_in_the_inference_class(tiny_fit, corpus, tmp_path):
    from anygpt.tokenizers.speech import SpeechTokenizerCodec

    trained = tiny_fit.cli.model.eval()
    audio = sorted((corpus[1].parent / "wav").glob("val_*.wav"))[:2]
    expected = trained.codec.encode(audio)
    last = next(tiny_fit.folder.rglob("last.ckpt"))
    loaded = SpeechTokenizerCodec(config=tiny_config(), checkpoint=str(last), decoder=None)
    for want, got in zip(expected, loaded.encode(audio)):
        assert torch.equal(want, got)
    with torch.no_grad():
        wave = loaded.load(audio[0])[0].unsqueeze(0)
        assert torch.equal(trained.codec.model.encode(wave), loaded.model.encode(wave))  # all 8 levels
    folder = trained.export(tmp_path / "export")
    exported = SpeechTokenizerCodec.from_pretrained(str(folder / "config.json"), str(folder / "ckpt.dev"))
    assert all(torch.equal(a, b) for a, b in zip(expected, exported.encode(audio)))


def test_fit_checkpoint_without_codec_weights_is_one_clear_error(tmp_path):
    from anygpt.tokenizers.speech import SpeechTokenizerCodec

    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.weight": torch.zeros(1)}}, path)
    with pytest.raises(AnyGPTError, match="no 'codec.model.' keys"):
        SpeechTokenizerCodec(config=tiny_config(), checkpoint=str(path), decoder=None)


def test_bad_media_is_skipped_and_reported(tiny_fit):
    skipped = tiny_fit.cli.datamodule.skipped
    assert len(skipped) == 1 and "broken.wav" in skipped[0]
    assert len(tiny_fit.cli.datamodule.train_items) == 12


def test_adversarial_mode_steps_both_optimizers(corpus, tmp_path):
    run = fit(corpus, tmp_path, "--model.init_args.adversarial", "true", "--trainer.max_steps", "6",
              "--model.init_args.discriminator", "{n_ffts: [256, 128], filters: 4}", "--trainer.limit_val_batches", "0")
    generator, discriminator = run.cli.trainer.optimizers
    assert {int(state["step"]) for state in generator.state.values()} == {3}  # 3 batches, one G update each
    assert {int(state["step"]) for state in discriminator.state.values()} == {3}
    assert {id(p) for group in discriminator.param_groups for p in group["params"]} == {
        id(p) for p in run.cli.model.discriminator.parameters()}
    for key in ("train/disc", "train/adv", "train/feat", "train/loss"):
        assert all(math.isfinite(x) for x in series(run.rows, key)) and series(run.rows, key), key


def test_decoder_fine_tune_keeps_the_codes_and_learns_the_round_trip(tiny_fit, corpus, tmp_path):
    last = next(tiny_fit.folder.rglob("last.ckpt"))
    codec = json.dumps({"config": tiny_config(), "checkpoint": str(last)})
    run = fit(corpus, tmp_path, "--model.init_args.codec", codec, "--model.init_args.frozen_encoder", "true",
              "--model.init_args.cycle_weight", "20.0", "--model.init_args.phoneme_labels", "null",
              "--model.init_args.time_weight", "0.0", "--model.init_args.mel_weights", "[1.0]",
              "--trainer.max_steps", "80", "--trainer.val_check_interval", "80")
    before, after = tiny_fit.cli.model.codec.model.state_dict(), run.cli.model.codec.model.state_dict()
    kept = [k for k in before if not k.startswith("decoder.")]
    assert any(k.startswith("quantizer.") for k in kept) and any(k.startswith("encoder.") for k in kept)
    assert all(torch.equal(before[k], after[k]) for k in kept), [k for k in kept if not torch.equal(before[k], after[k])]
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    cycle = series(run.rows, "train/cycle")
    assert len(cycle) == 80 and sum(cycle[-5:]) / 5 < 0.85 * sum(cycle[:5]) / 5, (cycle[:5], cycle[-5:])
    agreement = series(run.rows, "val/cycle_agreement")
    assert agreement and 0.0 <= agreement[-1] <= 1.0


def test_round_trip_logits_pick_the_codes_the_quantizer_picks():
    from anygpt.tokenizers.speech import SpeechTokenizerCodec
    from anygpt.training.round_trip import code_logits, level_one_cycle

    model = SpeechTokenizerCodec(config=tiny_config(), checkpoint=None, decoder=None).model.eval()
    wave = torch.randn(2, 3200)
    with torch.no_grad():
        embedding = model.encoder(wave.unsqueeze(1))
        codes = model.quantizer.encode(embedding)[0]
        assert torch.equal(code_logits(model.quantizer.vq.layers[0], embedding).argmax(-1), codes)
        valid = torch.ones_like(codes, dtype=torch.bool)
        loss, agreement = level_one_cycle(model, wave, codes, valid)
        assert agreement == 1.0 and loss < math.log(64)
        _, agreement = level_one_cycle(model, wave, (codes + 1) % 64, valid)
        assert agreement == 0.0


def test_frozen_encoder_needs_a_checkpoint():
    from anygpt.training.speech_codec import SpeechTokenizerTrainer

    with pytest.raises(AnyGPTError, match="frozen_encoder needs codec.checkpoint"):
        SpeechTokenizerTrainer(codec={"config": tiny_config(), "checkpoint": None}, frozen_encoder=True)


def test_hubert_teacher_distils_through_the_transform():
    from anygpt.training.audio_losses import frames_valid
    from anygpt.training.speech_codec import SpeechTokenizerTrainer

    teacher = HubertTeacher(config=TINY_HUBERT)
    audio = torch.randn(2, 8000) * 0.1
    assert teacher(audio).shape == (2, (8000 - 400) // 320 + 1, 16)
    trainer = SpeechTokenizerTrainer(codec={"config": tiny_config(), "checkpoint": None}, teacher=teacher,
                                     mel={"n_mels": 40}, kmeans_iters=2)
    batch = {"audio": audio, "mask": torch.ones(2, 8000, dtype=torch.bool), "offset": torch.zeros(2), "items": [{}, {}]}
    out = trainer._run(audio, training=True, valid=frames_valid(batch["mask"], trainer.hop))
    parts = trainer._generator_losses(batch, out)
    floor, ceiling = math.log(1 + math.e**-1), math.log(1 + math.e)  # -log sigmoid(cos) at cos = 1 and cos = -1
    assert floor - 1e-4 <= float(parts["distill_teacher"].detach()) <= ceiling + 1e-4
    parts["loss"].backward()
    assert trainer.codec.model.transform.weight.grad.abs().sum() > 0
    assert trainer.codec.model.encoder.model[0].conv.conv.weight_v.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(k.startswith("teacher") for k in trainer.state_dict())


@pytest.mark.parametrize("arguments, message", [
    ({"mel": {"n_mel": 40}}, "mel: unknown key 'n_mel'"),
    ({"codec": {"checkpont": None}}, "codec: unknown key 'checkpont'"),
    ({"phoneme_labels": ["aa", "aa"]}, "must be distinct"),
    ({"codec": {"decoder": "soundstorm.pt"}}, "leave decoder out"),
    ({"dead_code_threshold": -1.0}, "must be >= 0"),
    ({"low_band_weight": 1.0, "low_band": {"fmax": 900}}, "low_band: unknown key 'fmax'"),
    ({"low_band_weight": 1.0, "low_band": {"sample_rate": 8000}}, "sample_rate is the codec's"),
    ({"low_band_weight": 1.0, "low_band": {"f_max": 9000.0}}, "f_max must be in"),
    ({"low_band_weight": -1.0}, "must be >= 0"),
])
def test_bad_trainer_arguments_are_one_line_errors(arguments, message):
    from anygpt.training.speech_codec import SpeechTokenizerTrainer

    arguments = {**arguments, "codec": {"config": tiny_config(), "checkpoint": None, **arguments.get("codec", {})}}
    with pytest.raises(AnyGPTError, match=message) as error:
        SpeechTokenizerTrainer(**arguments)
    assert "\n" not in str(error.value)


def test_hubert_teacher_rejects_a_bad_layer():
    with pytest.raises(AnyGPTError, match="out of range"):
        HubertTeacher(config=TINY_HUBERT, layer=7)


def test_d_axis_loss_bounds_and_dimension_check():
    student = torch.randn(2, 30, 8)
    assert float(d_axis_loss(student, 3 * student)) == pytest.approx(math.log(1 + math.e ** -1), abs=1e-5)
    assert float(d_axis_loss(student, -student)) == pytest.approx(math.log(1 + math.e), abs=1e-5)
    with pytest.raises(AnyGPTError, match="semantic_dimension"):
        d_axis_loss(student, torch.randn(2, 30, 9))


def test_frame_labels_follow_the_clip_offset():
    vocabulary = {"a": 0, "b": 1, "<unk>": 2}
    items = [{"phonemes": [["a", 0.0, 0.05], ["b", 0.05, 0.1], ["zz", 0.1, 0.14]]}, {"path": "x.wav"}]
    labels = frame_labels(items, [0.02, 0.0], 7, 0.02, vocabulary)  # frame centres 0.03, 0.05, ..., 0.15
    assert labels[0].tolist() == [0, 1, 1, 1, 2, 2, -100]
    assert labels[1].tolist() == [-100] * 7
    with pytest.raises(AnyGPTError, match="x.wav: phonemes entries"):
        frame_labels([{"path": "x.wav", "phonemes": [["a", 0.1]]}], [0.0], 3, 0.02, vocabulary)


def test_losses_ignore_padding():
    target = torch.zeros(2, 4000)
    target[:, :3000] = torch.sin(torch.arange(3000) * 0.05)
    mask = torch.arange(4000).expand(2, -1) < 3000
    pred = target.clone()
    pred[:, 3000:] = torch.randn(2, 1000)  # garbage where the clip is padding
    assert float(losses.time_l1(pred, target, mask)) == 0.0
    assert float(losses.time_l1(pred, target)) > 0.1
    mel = losses.MultiScaleMelLoss(16000, [45, 1, 1, 1], n_mels=40)
    assert float(mel(pred, target, mask)) == 0.0
    assert float(mel(pred + 0.1 * torch.randn_like(pred), target, mask)) > 1.0
    assert float(losses.si_snr(0.5 * pred, target, mask).min()) > 60.0


def _numpy_low_band(wave: np.ndarray, n_fft: int, hop: int, bins: int) -> np.ndarray:
    padded = np.pad(wave, n_fft // 2, mode="reflect")
    frames = np.stack([padded[i: i + n_fft] for i in range(0, len(padded) - n_fft + 1, hop)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    return np.log(np.maximum(np.abs(np.fft.rfft(frames * window, axis=-1))[:, :bins], 1e-5)).T


def test_low_band_loss_matches_a_numpy_stft_and_ignores_padding():
    rng = np.random.default_rng(3)
    pred, target = rng.standard_normal((2, 6000)).astype(np.float32) * 0.1
    loss = losses.LowBandSpectrumLoss(16000, n_fft=1024, hop_length=160, f_max=500.0)
    want = np.abs(_numpy_low_band(pred, 1024, 160, 33) - _numpy_low_band(target, 1024, 160, 33)).mean()
    got = float(loss(torch.from_numpy(pred)[None], torch.from_numpy(target)[None]))
    assert got == pytest.approx(float(want), rel=1e-4)
    mask = torch.arange(6000)[None] < 4000
    clip = torch.from_numpy(target)[None] * mask
    noisy = clip.clone()
    noisy[:, 4000:] = torch.randn(1, 2000)
    assert float(loss(noisy, clip, mask)) == 0.0


def _comb(f0: float, seconds: float = 1.0, rate: int = 16000) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, int(4000 / f0))).unsqueeze(0) * 0.05


def test_low_band_loss_tells_a_frame_rate_buzz_from_the_speakers_pitch():
    """A 50 Hz comb (a codec's frame buzz) against a 90 Hz voice: far apart in 7.8 Hz bins, close in the mel loss's
    first scale, compared with the same voice 20 % louder."""
    voice, buzz, louder = _comb(90.0), _comb(50.0), 1.2 * _comb(90.0)
    low = losses.LowBandSpectrumLoss(16000)
    mel = losses.MultiScaleMelLoss(16000, [1.0])
    low_ratio = float(low(buzz, voice)) / float(low(louder, voice))
    mel_ratio = float(mel(buzz, voice)) / float(mel(louder, voice))
    assert low_ratio > 2.0 * mel_ratio


def test_discriminator_and_gan_losses():
    disc = losses.MultiScaleSTFTDiscriminator(n_ffts=(256, 128), filters=4)
    logits, features = disc(torch.randn(2, 4000))
    assert len(logits) == 2 and all(len(f) == 5 for f in features)
    ones = [torch.ones(3), torch.ones(4)]
    zeros = [torch.zeros(3), torch.zeros(4)]
    assert float(losses.discriminator_loss(ones, zeros)) == 0.0
    assert float(losses.generator_loss(zeros)) == 2.0
    assert float(losses.feature_matching_loss([[torch.ones(2)]], [[torch.zeros(2)]])) == 1.0


def test_codebook_statistics():
    uniform = torch.full((1, 16), 5.0)
    one_hot = torch.zeros(1, 16)
    one_hot[0, 3] = 40
    assert float(perplexity(uniform)[0]) == pytest.approx(16.0)
    assert float(perplexity(one_hot)[0]) == pytest.approx(1.0)
    assert live_codes(torch.cat([uniform, one_hot])).tolist() == [16, 1]


def test_dead_codes_come_back_where_the_package_leaves_them_dead():
    from speechtokenizer.quantization.core_vq import EuclideanCodebook

    torch.manual_seed(0)
    books = [EuclideanCodebook(dim=4, codebook_size=16, kmeans_init=True, decay=0.5, threshold_ema_dead_code=t)
             for t in (2, 0)]
    for book in books:
        book.train()
        book(torch.randn(1, 64, 4))  # k-means init on one distribution
    shifted = torch.randn(1, 64, 4) + 50  # then the data moves far away
    for _ in range(4):
        books[0](shifted)  # the package's own expiry
        restart_dead_codes(books[1], shifted[0], threshold=2.0)
        books[1](shifted)
    for book in books:
        book.eval()
    assert len(torch.unique(books[0](shifted)[1])) == 1
    assert len(torch.unique(books[1](shifted)[1])) > 4


def test_a_fresh_decoder_of_another_width_keeps_the_encoder_and_its_codes(tiny_fit):
    from anygpt.tokenizers.speech import SpeechTokenizerCodec
    from anygpt.training.speech_codec import SpeechTokenizerTrainer

    last = str(next(tiny_fit.folder.rglob("last.ckpt")))
    kept = SpeechTokenizerCodec(config=tiny_config(), checkpoint=last, decoder=None).model
    wide = {**tiny_config(), "decoder_filters": 2 * tiny_config()["n_filters"]}
    trainer = SpeechTokenizerTrainer(codec={"config": wide, "checkpoint": last}, frozen_encoder=True,
                                     fresh_decoder=True, distill_weight=0.0)
    model = trainer.codec.model
    assert model.decoder.model[0].conv.conv.out_channels != kept.decoder.model[0].conv.conv.out_channels
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in kept.state_dict().items()
               if not k.startswith("decoder."))
    wave = torch.randn(1, 1, 3200)
    with torch.no_grad():
        assert torch.equal(model.encode(wave), kept.encode(wave))
        assert model.decode(model.encode(wave)).shape == wave.shape
    assert trainer.model_config["decoder_filters"] == wide["decoder_filters"]
    with pytest.raises(AnyGPTError, match="fresh_decoder .*set frozen_encoder"):
        SpeechTokenizerTrainer(codec={"config": wide, "checkpoint": last}, fresh_decoder=True)
    with pytest.raises(AnyGPTError, match="does not fit the SpeechTokenizer config"):  # a plain load stays strict
        SpeechTokenizerCodec(config=wide, checkpoint=last, decoder=None)


def test_the_harmonic_branch_learns_the_clips_pitch(corpus, tmp_path):
    config = json.dumps({**tiny_config(), "harmonics": 8})
    run = fit(corpus, tmp_path, "--model.init_args.codec", json.dumps({"config": json.loads(config), "checkpoint": None}),
              "--model.init_args.pitch_weight", "10.0", "--trainer.max_steps", "80",
              "--trainer.val_check_interval", "80", "--model.init_args.lr_scheduler.init_args.T_max", "80")
    from anygpt.tokenizers.harmonic import HarmonicDecoder

    assert isinstance(run.cli.model.codec.model.decoder, HarmonicDecoder)
    pitch = series(run.rows, "train/pitch")
    assert len(pitch) == 80 and sum(pitch[-10:]) / 10 < 0.5 * sum(pitch[:10]) / 10, (pitch[:10], pitch[-10:])
    assert series(run.rows, "val/pitch_semitone_acc")[-1] > 0.05  # YIN-voiced frames within a semitone
