"""SoundStormTrainer: the original's masking, a tiny twin that learns through `anygpt fit`, fit checkpoints that load
into the inference class and decode through the speech codec."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from anygpt import AnyGPTError
from anygpt.cli import main
from anygpt.decoders.soundstorm import SoundStormDecoder
from anygpt.tokenizers.speech import SpeechTokenizerCodec
from anygpt.training.soundstorm import MaskDraw, SoundStormTrainer, apply_mask, draw_mask

ROOT = Path(__file__).resolve().parents[2]
TINY = "tests/configs/codecs/soundstorm_tiny.yaml"
MASK = 1024
RATE, FRAMES = 16000, 16
STEPS = 80


def tiny_args(**overrides) -> dict:
    args = yaml.safe_load((ROOT / TINY).read_text())["model"]["init_args"]
    return {**args, **overrides}


def reference_mask(acoustic, frame_mask, draw, min_mask):
    """The spec written out slot by slot (codec_training §2.1, with at least ``min_mask`` frames per item)."""
    inputs, selected = acoustic.clone(), torch.zeros(frame_mask.shape, dtype=torch.bool)
    b, n, levels = acoustic.shape
    for i in range(b):
        eligible = [f for f in range(n) if frame_mask[i, f] and f >= draw.prompt]
        count = min(max(math.ceil(float(draw.ratios[i]) * len(eligible)), min_mask), len(eligible))
        for f in sorted(eligible, key=lambda f: -float(draw.scores[i, f]))[:count]:
            selected[i, f] = True
        for f in range(n):
            for level in range(levels):
                after = f >= draw.prompt and (level > draw.level or (level == draw.level and selected[i, f]))
                if not frame_mask[i, f] or after:
                    inputs[i, f, level] = MASK
    return inputs, selected


def test_mask_on_fixed_draws():
    acoustic = torch.randint(0, MASK, (3, 10, 7), generator=torch.Generator().manual_seed(0))
    frame_mask = torch.arange(10) < torch.tensor([[10], [8], [6]])
    scores = torch.tensor([[0.1 * k for k in range(10)],
                           [0.9, 0.8, 0.7, 0.1, 0.2, 0.6, 0.5, 0.4, 0.3, 0.95],
                           [0.99, 0.5, 0.5, 0.1, 0.4, 0.3, 0.98, 0.97, 0.0, 0.0]])
    draw = MaskDraw(prompt=3, level=2, ratios=torch.tensor([1.0, 0.5, 0.0]), scores=scores)
    inputs, selected = apply_mask(acoustic, frame_mask, draw, MASK)
    # item 0: all 7 eligible frames; item 1: ceil(0.5 * 5) = 3 of frames 3..7, best scores 5, 6, 7;
    # item 2: ratio 0 still masks one frame (never a prompt or padding frame, whatever their scores): frame 4
    assert [torch.nonzero(row).flatten().tolist() for row in selected] == [[3, 4, 5, 6, 7, 8, 9], [5, 6, 7], [4]]
    for i, length in enumerate((10, 8, 6)):
        assert torch.equal(inputs[i, :3], acoustic[i, :3])  # prompt frames keep every level
        assert torch.equal(inputs[i, 3:length, :2], acoustic[i, 3:length, :2])  # levels below q are kept
        assert (inputs[i, 3:, 3:] == MASK).all()  # levels above q are MASK after the prompt
        assert (inputs[i, length:] == MASK).all()  # padding frames
        level_q = inputs[i, 3:length, 2]
        assert torch.equal(level_q == MASK, selected[i, 3:length])
        assert torch.equal(level_q[~selected[i, 3:length]], acoustic[i, 3:length, 2][~selected[i, 3:length]])
    # the original (no floor) can mask nothing: that is what min_mask=1 prevents
    _, none = apply_mask(acoustic, frame_mask, draw, MASK, min_mask=0)
    assert not none[2].any() and none[1].sum() == 3


@pytest.mark.parametrize("seed", range(6))
def test_mask_matches_the_spec_on_random_draws(seed):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 13, (4,), generator=generator)
    frame_mask = torch.arange(12) < lengths[:, None]
    acoustic = torch.randint(0, MASK, (4, 12, 7), generator=generator)
    draw = draw_mask(frame_mask, 7, generator)
    inputs, selected = apply_mask(acoustic, frame_mask, draw, MASK)
    expected_inputs, expected_selected = reference_mask(acoustic, frame_mask, draw, 1)
    assert torch.equal(inputs, expected_inputs) and torch.equal(selected, expected_selected)
    assert (selected.sum(dim=-1) >= 1).all()


def test_draws_cover_the_spec_ranges():
    frame_mask = torch.arange(12) < torch.tensor([[12], [5]])  # min_len 5: t in [0, 3]
    generator = torch.Generator().manual_seed(1)
    draws = [draw_mask(frame_mask, 7, generator) for _ in range(300)]
    assert {d.prompt for d in draws} == {0, 1, 2, 3}
    assert {d.level for d in draws} == set(range(7))
    ratios = torch.cat([d.ratios for d in draws])
    assert ratios.min() >= 0 and ratios.max() <= 1 and ratios.mean() == pytest.approx(2 / math.pi, abs=0.05)
    assert draw_mask(torch.tensor([[True, False]]), 7).prompt == 0  # a one-frame item: no prompt


def test_loss_is_cross_entropy_on_the_masked_slots_of_level_q():
    trainer = SoundStormTrainer(**tiny_args())
    generator = torch.Generator().manual_seed(3)
    codes = torch.randint(0, MASK, (2, 9, 8), generator=generator)
    frame_mask = torch.arange(9) < torch.tensor([[9], [6]])
    batch = {"codes": codes, "frame_mask": frame_mask}
    loss, *_ = trainer.masked_step(batch, torch.Generator().manual_seed(5))
    draw = draw_mask(frame_mask, 7, torch.Generator().manual_seed(5))
    inputs, selected = reference_mask(codes[..., 1:], frame_mask, draw, 1)
    semantic = codes[..., 0].masked_fill(~frame_mask, 0)
    with torch.no_grad():
        logits = trainer.decoder.logits(semantic, inputs, frame_mask)
    terms = [-logits[i, f, draw.level].log_softmax(-1)[codes[i, f, 1 + draw.level]]
             for i in range(2) for f in range(9) if selected[i, f]]
    torch.testing.assert_close(loss.detach(), torch.stack(terms).mean())
    # ids the loss never sees (levels above q after the prompt, padding frames) do not change it
    changed = codes.clone()
    changed[:, draw.prompt:, 2 + draw.level:] = (changed[:, draw.prompt:, 2 + draw.level:] + 1) % MASK
    changed[1, 6:] = 7
    again, *_ = trainer.masked_step({"codes": changed, "frame_mask": frame_mask}, torch.Generator().manual_seed(5))
    torch.testing.assert_close(again, loss)


def test_audio_batches_become_all_levels_with_a_frame_mask():
    trainer = SoundStormTrainer(**tiny_args())
    audio = torch.randn(2, 5 * 320, generator=torch.Generator().manual_seed(0)) * 0.3
    mask = torch.arange(5 * 320) < torch.tensor([[5 * 320], [2 * 320 + 1]])
    codes, frame_mask = trainer.codes({"audio": audio * mask, "mask": mask})
    assert codes.shape == (2, 5, 8) and frame_mask.tolist() == [[True] * 5, [True, True, True, False, False]]
    [alone] = trainer.codec._encode([audio[0:1]], layers=8)
    assert torch.equal(codes[0], alone.t())


def test_embeddings_start_from_the_codebooks():
    trainer = SoundStormTrainer(**tiny_args())
    books = [layer._codebook.embed for layer in trainer.codec.model.quantizer.vq.layers]
    decoder = trainer.decoder
    assert torch.equal(decoder.semantic_token_emb.weight, books[0])
    table = decoder.net.code_embeds.weight
    for level in range(7):
        start = level * (MASK + 1)
        assert torch.equal(table[start:start + MASK], books[level + 1])
        assert not table[start + MASK].any()
    fresh = SoundStormTrainer(**tiny_args(init_from_codec=False))
    assert not torch.equal(fresh.decoder.semantic_token_emb.weight, books[0])
    with pytest.raises(AnyGPTError, match="init_from_codec") as err:
        SoundStormTrainer(**tiny_args(decoder={"dim": 48, "depth": 1, "heads": 2, "dim_head": 24},
                                      init_from_codec=True))
    assert "\n" not in str(err.value)


def test_schedule_warms_up_from_the_start_lr_then_decays():
    trainer = SoundStormTrainer(**tiny_args(lr=6e-4, warmup_steps=4, warmup_start_lr=3e-5, min_lr=6e-5,
                                            total_steps=20))
    setup = trainer.configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    assert optimizer.defaults["betas"] == (0.9, 0.99)
    lrs = []
    for _ in range(21):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(3e-5) and lrs[4] == pytest.approx(6e-4) and lrs[20] == pytest.approx(6e-5)
    assert lrs[:5] == sorted(lrs[:5]) and lrs[4:] == sorted(lrs[4:], reverse=True)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """The tiny twin fitted through the CLI on 4 synthetic chirps (each clip always the whole file: repeated)."""
    from anygpt.cli import AnyModelCLI

    folder = tmp_path_factory.mktemp("soundstorm")
    t = np.arange(FRAMES * 320) / RATE
    for i, (f0, f1) in enumerate([(200, 900), (1200, 300), (500, 500), (700, 2500)]):
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1]))
        soundfile.write(folder / f"c{i}.wav", (0.5 * np.sin(phase)).astype(np.float32), RATE)
    lines = [json.dumps({"path": f"c{i}.wav"}) for i in range(4)]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "val.jsonl").write_text("\n".join(lines * 4) + "\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        cli = AnyModelCLI(args=[
            "fit", "--config", TINY, "--data.init_args.train", str(folder / "train.jsonl"),
            "--data.init_args.val", str(folder / "val.jsonl"), "--data.init_args.clip_seconds", str(FRAMES * 0.02),
            "--data.init_args.batch_size", "4", "--trainer.max_steps", str(STEPS),
            "--trainer.check_val_every_n_epoch", "null", "--trainer.val_check_interval", str(STEPS),
            "--trainer.num_sanity_val_steps", "0", "--trainer.enable_checkpointing", "true",
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(folder)])
    [metrics] = folder.rglob("metrics.csv")
    [ckpt] = folder.rglob("*.ckpt")
    return cli, list(csv.DictReader(metrics.open())), ckpt, folder


def test_tiny_twin_learns(fitted):
    _, rows, _, _ = fitted
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == STEPS
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 6.5 and last < first - 2.0, (first, last)  # ln(1024) = 6.93 at the start
    [val] = [r for r in rows if r.get("val/accuracy")]
    assert float(val["val/accuracy"]) > 0.05  # chance: 1 / 1024
    assert float(val["val/loss"]) < first - 1.5
    assert any(key.startswith("val/accuracy_rvq") and val[key] for key in val)


def test_fit_checkpoint_loads_into_the_inference_class(fitted):
    cli, _, ckpt, folder = fitted
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["state_dict"] and all(key.startswith("decoder.") for key in state["state_dict"])  # no codec
    trained = cli.model.decoder.eval()
    reloaded = SoundStormDecoder.from_pretrained(str(ckpt))
    assert reloaded.state_dict().keys() == trained.state_dict().keys()
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, trained.state_dict()[key]), key
    semantic = torch.randint(0, MASK, (2, 12), generator=torch.Generator().manual_seed(0))
    prompt = torch.randint(0, MASK, (2, 3, 8), generator=torch.Generator().manual_seed(1))
    for greedy in (True, False):
        ours = trained.generate(semantic, prompt, steps=3, greedy=greedy, generator=torch.Generator().manual_seed(7))
        theirs = reloaded.generate(semantic, prompt, steps=3, greedy=greedy,
                                   generator=torch.Generator().manual_seed(7))
        assert torch.equal(ours, theirs)
    # the predict path: the speech codec decodes through the reloaded decoder as through the trained one
    speech = SpeechTokenizerCodec.tiny(decoder=str(ckpt))  # as a YAML names it: the checkpoint's path
    ids = speech.encode([str(folder / "c0.wav")])
    wave = speech.decode(ids, seeds=[4])[0]
    same = SpeechTokenizerCodec.tiny(decoder=copy.deepcopy(trained)).decode(ids, seeds=[4])[0]
    assert wave.shape == (1, 320 * FRAMES) and torch.equal(wave, same)
    # fine-tuning starts from a fit checkpoint, untouched by the codebook initialisation
    tuned = SoundStormTrainer(**tiny_args(decoder={"checkpoint": str(ckpt)}))
    assert torch.equal(tuned.decoder.net.code_embeds.weight, trained.net.code_embeds.weight)


def test_bad_config_key_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as done:  # the CLI prints the error alone, unwrapped from jsonargparse's
        main(["fit", "--config", TINY, "--model.init_args.decoder", "{dimm: 32}"])
    expected = "model.init_args.decoder: unknown key 'dimm'; known keys: checkpoint, codebook_size"
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("anygpt: error:")]
    assert done.value.code == 1 and len(errors) == 1 and errors[0].startswith(f"anygpt: error: {expected}")
    with pytest.raises(AnyGPTError, match="codec: unknown key 'sample_rate'"):
        SoundStormTrainer(**tiny_args(codec={"sample_rate": 16000}))
