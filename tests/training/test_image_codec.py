"""SEED tokenizer training (tiny, CPU): the tiny twin through `anygpt fit`, the round trip from the fit to
SeedImageCodec, joint training with an unCLIP decoder, and bad configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from anygpt import AnyGPTError
from anygpt.tokenizers.image import SeedImageCodec
from anygpt.training.image_codec import SeedTrainer, load_codec
from anygpt.training.image_embedders import MeanColourEmbedder

ROOT = Path(__file__).resolve().parents[2]
TWIN = ROOT / "tests" / "configs" / "codecs" / "seed_tiny.yaml"
IMAGES = ROOT / "tests" / "configs" / "data" / "unclip_images"
# joint mode: a tiny UNet of its own, conditioned on the twin's 32-d embedding (also used by tests/demo/test_ship.py)
JOINT_DECODER = {"source": "tiny", "embedding_dim": 32, "cond_dropout": 0.0, "decoder": {"num_inference_steps": 2},
                 "unet": {"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8,
                          "attention_head_dim": [2, 4], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                          "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "use_linear_projection": True}}


@pytest.fixture(scope="module")
def images() -> dict:
    paths = sorted(IMAGES.glob("*.png"))
    arrays = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    return {"paths": [str(p) for p in paths], "pixels": torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seed")
    spec = yaml.safe_load(TWIN.read_text())
    spec["model"]["init_args"]["export_dir"] = str(tmp / "export")
    path = tmp / "seed_tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    from anygpt.cli import AnyModelCLI

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(ROOT)
        cli = AnyModelCLI(args=["fit", "--config", str(path), "--trainer.enable_checkpointing", "true",
                                "--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={tmp / 'ckpt'}",
                                "--trainer.callbacks.save_last=true"])
    return cli, tmp, spec


def fresh(spec: dict) -> SeedTrainer:
    """The module the twin starts from (its codec is drawn from the config's seed, not the global RNG)."""
    args = dict(spec["model"]["init_args"])
    args["embedder"] = MeanColourEmbedder(**args["embedder"]["init_args"])
    return SeedTrainer(**args)


def measure(module: SeedTrainer, pixels: torch.Tensor) -> dict[str, float]:
    """Loss and teacher cosine on the eight pictures, computed here from the module's outputs."""
    with torch.no_grad():
        out = module(pixels)
        target = MeanColourEmbedder(dim=32, seed=0)(pixels)
        vq = F.mse_loss(out["z"], module.codec.model.quantize.embedding(out["codes"]))
        recon = (1 - F.cosine_similarity(out["recon"], out["query"], dim=-1)).mean()
        image = ((out["embedding"] - target) ** 2).mean()
    return {"loss": float(5 * 1.25 * vq + 2 * recon + 0.5 * image), "image": float(image),
            "cosine": float(F.cosine_similarity(out["embedding"], target, dim=-1).mean()),
            "live": len(out["codes"].unique())}


def test_tiny_twin_lowers_loss_and_matches_the_teacher(run, images):
    cli, _, spec = run
    before, after = measure(fresh(spec), images["pixels"]), measure(cli.model, images["pixels"])
    metrics = {k: round(float(v), 4) for k, v in cli.trainer.callback_metrics.items()}
    print(f"tiny SEED: before {before}, after {after}; metrics {metrics}")
    assert after["loss"] < 0.6 * before["loss"], (before, after)
    assert after["image"] < 0.5 * before["image"], (before, after)
    assert after["cosine"] > before["cosine"] + 0.1 and after["cosine"] > 0.8, (before, after)
    assert after["live"] > 1
    assert {"train/loss", "train/vq", "train/recon", "train/image", "val/loss", "val/embedding_cosine",
            "val/perplexity", "val/live_codes"} <= set(metrics)
    assert metrics["val/live_codes"] > 1 and metrics["val/perplexity"] > 1
    frozen = fresh(spec).codec.model.visual_encoder.state_dict()  # the ViT did not move
    assert all(torch.equal(v, cli.model.codec.model.visual_encoder.state_dict()[k]) for k, v in frozen.items())


def test_round_trip_gives_the_same_codes(run, images):
    cli, tmp, spec = run
    trained = cli.model.codec
    expected = torch.stack(trained.encode(images["paths"]))
    with torch.no_grad():  # the training path picks the inference path's codes
        pixels = trained.preprocess(images["paths"])
        z = cli.model.codec.model.encode_task_layer(trained.model.query_output(trained.model.image_embeds(pixels)))
    assert torch.equal(trained.quantize(z), expected)
    checkpoint = tmp / "ckpt" / "last.ckpt"
    stored = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert not any(k.startswith("codec.model.visual_encoder.") for k in stored)  # frozen: left out
    for source in (tmp / "export", checkpoint):
        codec = load_codec(str(source))
        assert isinstance(codec, SeedImageCodec)
        assert torch.equal(torch.stack(codec.encode(images["paths"])), expected)
        assert torch.equal(codec.codebook_entry(expected), trained.codebook_entry(expected))
    untrained = torch.stack(fresh(spec).codec.encode(images["paths"]))
    assert not torch.equal(untrained, expected)


def test_image_head_equals_codebook_entry(run, images):
    module = run[0].model
    with torch.no_grad():
        out = module(images["pixels"][:3])
        assert torch.allclose(out["embedding"], module.codec.model.codebook_entry(out["codes"]), atol=1e-5)


def test_joint_mode_trains_the_unet_through_the_embedding(run, images):
    spec = dict(run[2]["model"]["init_args"], embedder=None)
    spec["decoder"] = JOINT_DECODER
    module = SeedTrainer(**spec)
    batch = {"image": images["pixels"][:2], "items": [{}, {}]}
    parts, _, target = module._losses(batch, torch.Generator().manual_seed(0))
    assert target is None and set(parts) == {"vq", "recon", "denoise"}
    module._total(parts).backward()
    assert module.codec.model.distill_image_proj.weight.grad.abs().sum() > 0  # only the denoising loss reaches it
    assert module.unclip.decoder.unet.conv_in.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.codec.model.Qformer.parameters())


def test_frozen_codes_stay_while_the_code_decoder_and_unet_train(run, images):
    spec = dict(run[2]["model"]["init_args"], embedder=None, train_codes=False, restart_threshold=0.5, lr=1e-2)
    spec["decoder"] = JOINT_DECODER
    module = SeedTrainer(**spec)
    pixels = images["pixels"][:4]
    with torch.no_grad():
        before = module(pixels)
    book = module.codec.model.quantize.embedding.weight.detach().clone()
    head = module.codec.model.distill_image_proj.weight.detach().clone()
    unet = module.unclip.decoder.unet.conv_in.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1e-1)
    for _ in range(3):
        parts, out, _ = module._losses({"image": pixels, "items": [{}] * 4}, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        module._total(parts).backward()
        optimizer.step()
    with torch.no_grad():
        after = module(pixels)
    assert torch.equal(before["codes"], after["codes"])
    assert torch.equal(book, module.codec.model.quantize.embedding.weight)
    assert module.restart_threshold == 0.0  # no dead-code restarts either
    assert not torch.equal(head, module.codec.model.distill_image_proj.weight)
    assert not torch.equal(unet, module.unclip.decoder.unet.conv_in.weight)
    assert not torch.allclose(before["embedding"], after["embedding"])
    with pytest.raises(AnyGPTError, match="train_codes false keeps the codes: it needs train_encoder false"):
        SeedTrainer(**dict(spec, train_encoder=True))


@pytest.mark.parametrize("args, words", [
    ({"codec": {"quantizer": None, "visual": None, "bogus": 1}}, "codec: unknown key 'bogus'"),
    ({"codec": {"quantizer": None, "visual": None, "decoder": "x"}}, "codec.decoder: set by the trainer"),
    ({"weights": {"pixel": 1.0}}, "unknown loss 'pixel'"),
    ({"lr": -1.0}, "lr > 0"),
    ({"decoder": {"source": "tiny", "colour": 1}}, "decoder: unknown key 'colour'"),
])
def test_bad_arguments_fail_with_one_line(run, args, words):
    spec = {**run[2]["model"]["init_args"], "embedder": None, **args}
    with pytest.raises(AnyGPTError) as err:
        SeedTrainer(**spec)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_load_codec_refuses_what_is_not_a_seed_run(tmp_path):
    with pytest.raises(AnyGPTError, match="no such SeedTrainer checkpoint"):
        load_codec(str(tmp_path / "missing.ckpt"))
    with pytest.raises(AnyGPTError, match="missing seed_quantizer.pt"):
        load_codec(str(tmp_path))


def test_fresh_heads_keep_stage_one_and_redraw_stage_two(run):
    _, tmp, spec = run
    codec = {**spec["model"]["init_args"]["codec"], "quantizer": str(tmp / "export" / "seed_quantizer.pt"),
             "visual": str(tmp / "export" / "eva_vit_g.pth")}
    loaded = SeedTrainer(codec=codec).codec.model
    redrawn = SeedTrainer(codec=codec, fresh_heads=True).codec.model
    assert all(torch.equal(v, loaded.Qformer.state_dict()[k]) for k, v in redrawn.Qformer.state_dict().items())
    for name in ("quantize.embedding.weight", "distill_image_proj.weight", "blocks.0.attn.qkv.weight"):
        assert not torch.equal(redrawn.get_parameter(name), loaded.get_parameter(name)), name


def test_joint_fit_validates_decoded_pictures(run, tmp_path, monkeypatch):
    spec = yaml.safe_load(TWIN.read_text())
    spec["trainer"].update(max_steps=3, val_check_interval=3, limit_val_batches=1)
    spec["model"]["init_args"]["decoder"] = {
        "source": "tiny", "embedding_dim": 32, "decoder": {"num_inference_steps": 2, "batch_size": 2}}
    path = tmp_path / "joint.yaml"
    path.write_text(yaml.safe_dump(spec))
    from anygpt.cli import AnyModelCLI

    monkeypatch.chdir(ROOT)
    cli = AnyModelCLI(args=["fit", "--config", str(path)])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert {"train/denoise", "train/image", "val/psnr", "val/ssim", "val/embedding_cosine"} <= set(metrics)
    assert all(np.isfinite(list(metrics.values())))
