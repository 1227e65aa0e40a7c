"""unCLIP decoder training (tiny, CPU): the VAE and UNet trainers through `anygpt fit`, the conditioning, the round
trip from a fit checkpoint to UnCLIPDecoder, the embedders, and bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from anygpt import AnyGPTError
from anygpt.decoders.unclip import UnCLIPDecoder
from anygpt.training.image_embedders import (CLIPImageEmbedder, LatentEmbedder, MeanColourEmbedder,
                                             RandomConvEmbedder)
from anygpt.training.unclip import UnCLIPTrainer, draw_condition
from anygpt.training.unclip_vae import VAETrainer

ROOT = Path(__file__).resolve().parents[2]
TWINS = ROOT / "tests" / "configs" / "codecs"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Eight 32x32 pictures (a solid colour with a square of another), a manifest with an embedding per record."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(3)
    arrays, records = [], []
    for i in range(8):
        array = np.empty((32, 32, 3), np.uint8)
        array[:] = rng.integers(0, 256, 3)
        top, left = rng.integers(0, 18, 2)
        array[top:top + 12, left:left + 12] = rng.integers(0, 256, 3)
        Image.fromarray(array).save(folder / f"{i}.png")
        arrays.append(array)
        records.append({"path": f"{i}.png", "embedding": rng.normal(size=32).round(4).tolist()})
    manifest = folder / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    return {"manifest": manifest, "images": images, "records": records}


def config(tmp_path: Path, twin: str, data: dict, **init_args) -> Path:
    """The tiny twin ``twin`` on the synthetic pictures (no flips: fixed crops), with ``init_args`` changed."""
    spec = yaml.safe_load((TWINS / twin).read_text())
    spec["data"]["init_args"].update(train=str(data["manifest"]), val=str(data["manifest"]), flip=False)
    spec["model"]["init_args"].update(init_args)
    path = tmp_path / twin
    path.write_text(yaml.safe_dump(spec))
    return path


def fit(path: Path, monkeypatch, *extra: str):
    from anygpt.cli import AnyModelCLI

    monkeypatch.chdir(ROOT)
    return AnyModelCLI(args=["fit", "--config", str(path), *extra])


def fresh(cli):
    """The same LightningModule as the CLI built, before training (same seed, same arguments)."""
    from lightning.pytorch import seed_everything

    seed_everything(0)
    args = {k: v for k, v in cli.model.hparams.items() if not k.startswith("_")}
    if isinstance(args.get("embedder"), dict):
        args["embedder"] = MeanColourEmbedder(**args["embedder"]["init_args"])
    return type(cli.model)(**args)


@pytest.fixture(scope="module")
def vae_run(data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vae")
    with pytest.MonkeyPatch.context() as monkeypatch:
        cli = fit(config(tmp, "unclip_vae_tiny.yaml", data, export_dir=str(tmp / "export")), monkeypatch)
    return cli, tmp / "export"


@pytest.fixture(scope="module")
def unclip_run(data, vae_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unclip")
    path = config(tmp, "unclip_tiny.yaml", data, vae=str(vae_run[1]), export_dir=str(tmp / "export"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        cli = fit(path, monkeypatch, "--trainer.enable_checkpointing", "true", "--trainer.callbacks+=ModelCheckpoint",
                  f"--trainer.callbacks.dirpath={tmp / 'ckpt'}", "--trainer.callbacks.save_last=true")
    return cli, tmp


def test_vae_fit_lowers_reconstruction_loss_and_exports(vae_run, data):
    cli, folder = vae_run
    from diffusers import AutoencoderKL

    def l1(vae) -> float:
        with torch.no_grad():
            pixels = data["images"] * 2 - 1
            return float((vae.decode(vae.encode(pixels).latent_dist.mean).sample - pixels).abs().mean())

    before, after = l1(fresh(cli).vae), l1(cli.model.vae)
    print(f"tiny VAE: L1 {before:.4f} -> {after:.4f}; metrics {dict(cli.trainer.callback_metrics)}")
    assert after < 0.7 * before, (before, after)
    metrics = cli.trainer.callback_metrics
    assert {"train/loss", "train/l1", "train/kl", "val/loss", "val/psnr"} <= set(metrics)
    assert 8 < float(metrics["val/psnr"]) < 60
    exported = AutoencoderKL.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), cli.model.vae.state_dict().values()))
    with torch.no_grad():  # the scaling factor gives the data's latents about unit variance
        latents = exported.encode(data["images"] * 2 - 1).latent_dist.sample()
    print(f"scaling factor {exported.config.scaling_factor:.4f}, 1 / latent std {1 / float(latents.std()):.4f}")
    assert 0.6 < exported.config.scaling_factor * float(latents.std()) < 1.5


def test_a_fresh_encoder_learns_the_latents_of_a_frozen_decoder_only_vae(vae_run, data, tmp_path, monkeypatch):
    import shutil

    from anygpt.decoders.decoder_only_vae import strip_encoder

    lean = shutil.copytree(vae_run[1], tmp_path / "lean")
    strip_encoder(lean)
    with pytest.raises(AnyGPTError, match="without its encoder") as err:  # encoding needs the encoder
        UnCLIPTrainer(source="tiny", vae=str(lean))
    assert "\n" not in str(err.value)
    path = config(tmp_path, "unclip_vae_tiny.yaml", data, vae=None, source=str(lean),
                  frozen=["decoder", "post_quant_conv"], export_dir=str(tmp_path / "export"))
    cli = fit(path, monkeypatch, "--trainer.max_steps", "60")
    shipped = vae_run[0].model.vae
    trained = cli.model.vae
    for name, value in trained.state_dict().items():  # the decoder is the shipped one, bit for bit
        if name.startswith(("decoder.", "post_quant_conv.")):
            assert torch.equal(value, shipped.state_dict()[name]), name
    assert trained.config.scaling_factor == shipped.config.scaling_factor

    def l1(vae) -> float:
        with torch.no_grad():
            pixels = data["images"] * 2 - 1
            return float((vae.decode(vae.encode(pixels).latent_dist.mean).sample - pixels).abs().mean())

    before, after, original = l1(fresh(cli).vae), l1(trained), l1(shipped)
    print(f"fresh encoder for a frozen decoder: L1 {before:.4f} -> {after:.4f} (the original encoder: {original:.4f})")
    assert after < 0.9 * before and after < 1.1 * original, (before, after, original)


def test_bad_frozen_parts_are_one_clear_line(data):
    small = yaml.safe_load((TWINS / "unclip_vae_tiny.yaml").read_text())["model"]["init_args"]["vae"]
    with pytest.raises(AnyGPTError, match="no VAE part 'unet'"):
        VAETrainer(vae=small, frozen=["unet"])
    with pytest.raises(AnyGPTError, match="nothing would train"):
        VAETrainer(vae=small, frozen=["encoder", "quant_conv", "decoder", "post_quant_conv"])


def test_unclip_fit_lowers_denoising_loss_and_validates(unclip_run, vae_run, data):
    cli, _ = unclip_run
    before_module = fresh(cli)
    embeddings = cli.model.embed({"image": data["images"], "items": data["records"]})

    def loss(module) -> float:
        with torch.no_grad():
            return float(module.denoising_loss(data["images"], embeddings, torch.Generator().manual_seed(3)))

    before, after = loss(before_module), loss(cli.model)
    print(f"tiny unCLIP: denoising loss {before:.4f} -> {after:.4f}; metrics {dict(cli.trainer.callback_metrics)}")
    assert after < 0.85 * before, (before, after)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert {"train/loss", "val/loss", "val/psnr", "val/ssim", "val/embedding_cosine"} <= set(metrics)
    assert all(np.isfinite(list(metrics.values())))
    assert -1 <= metrics["val/embedding_cosine"] <= 1 and -1 <= metrics["val/ssim"] <= 1
    trained_vae = vae_run[0].model.vae.state_dict()  # the trained VAE is the decoder's, frozen
    assert all(torch.equal(v, trained_vae[k]) for k, v in cli.model.decoder.vae.state_dict().items())
    assert list(cli.model.decoder.unet.config.block_out_channels) == [16, 32]  # the YAML's fresh UNet


def test_checkpoint_round_trip_gives_the_same_images(unclip_run, data):
    cli, tmp = unclip_run
    embeddings = torch.tensor([r["embedding"] for r in data["records"][:3]])
    seeds = [4, 5, 6]
    expected = np.stack([np.asarray(p) for p in cli.model.decoder.decode(embeddings, seeds=seeds)])
    UnCLIPTrainer.export_checkpoint(str(tmp / "ckpt" / "last.ckpt"), str(tmp / "from_ckpt"))
    # export_checkpoint's folder, the one written as the fit ended, and the checkpoint's components
    from anygpt.training.unclip import checkpoint_components

    for source in (tmp / "from_ckpt", tmp / "export", tmp / "ckpt" / "last.ckpt"):
        if source.suffix == ".ckpt":
            decoder = UnCLIPDecoder(components=checkpoint_components(str(source)), num_inference_steps=3,
                                    batch_size=2)
        else:
            decoder = UnCLIPDecoder(source=str(source), num_inference_steps=3, batch_size=2)
        got = np.stack([np.asarray(p) for p in decoder.decode(embeddings, seeds=seeds)])
        assert np.array_equal(expected, got)
    assert expected.std() > 1
    untrained = fresh(cli).decoder.unet.conv_in.weight
    assert not torch.equal(decoder.unet.conv_in.weight, untrained)


@pytest.fixture(scope="module")
def tiny():
    return UnCLIPTrainer(source="tiny", decoder={"num_inference_steps": 2})


def test_condition_dropout_and_noise_levels(tiny):
    pipe, embeddings = tiny.decoder.pipe, torch.randn(2000, 32)
    dropped = draw_condition(pipe, embeddings, 1000, 1.0, torch.Generator().manual_seed(0))
    assert dropped.labels.shape == (2000, 64) and dropped.dropped.all() and not dropped.labels.any()
    kept = draw_condition(pipe, embeddings, 1000, 0.0, torch.Generator().manual_seed(0))
    assert not kept.dropped.any() and (kept.labels != 0).any(dim=1).all()
    assert 0 <= int(kept.levels.min()) < 50 and 950 < int(kept.levels.max()) <= 999
    half = draw_condition(pipe, embeddings, 300, 0.5, torch.Generator().manual_seed(1))
    assert 0.45 < float(half.dropped.float().mean()) < 0.55 and int(half.levels.max()) <= 299
    assert not half.labels[half.dropped].any() and (half.labels[~half.dropped] != 0).any(dim=1).all()
    # level 0 barely noises (squaredcos: alpha_bar_0 ~ 1), and its sinusoidal embedding is cos 0 = 1, sin 0 = 0
    clean = draw_condition(pipe, embeddings[:4], 1, 0.0)
    assert torch.allclose(clean.labels[:, :32], embeddings[:4], atol=0.05)
    assert torch.equal(clean.labels[:, 32:48], torch.ones(4, 16)) and not clean.labels[:, 48:].any()
    # a given level and noise: the pipeline's own noise_image_embeddings, image by image
    generator = torch.Generator().manual_seed(2)
    drawn = draw_condition(pipe, embeddings[:3], 1000, 0.0, generator)
    generator = torch.Generator().manual_seed(2)
    torch.randint(0, 1000, (3,), generator=generator), torch.rand(3, generator=generator)
    noise = torch.randn(3, 32, generator=generator)
    for i in range(3):
        theirs = pipe.noise_image_embeddings(embeddings[i:i + 1], int(drawn.levels[i]), noise=noise[i:i + 1])
        assert torch.allclose(drawn.labels[i:i + 1], theirs, atol=1e-6)


def test_embeddings_get_gradient_through_the_denoising_loss(tiny, data):
    images = data["images"][:2]
    for dropout, flows in [(0.0, True), (1.0, False)]:
        tiny.cond_dropout = dropout
        tiny.zero_grad()
        embeddings = torch.randn(2, 32, requires_grad=True)
        tiny.denoising_loss(images, embeddings, torch.Generator().manual_seed(0)).backward()
        assert bool(embeddings.grad.abs().sum() > 0) == flows
        assert tiny.decoder.unet.conv_in.weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in tiny.decoder.vae.parameters())
        assert all(p.grad is None for p in tiny.decoder.text_encoder.parameters())
    tiny.cond_dropout = 0.1


def test_a_grid_unet_reads_the_clean_embedding_unless_the_condition_is_dropped(data):
    unet = {"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8,
            "attention_head_dim": [2, 4], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "in_channels": 6}  # 4 latent channels + the 32-d embedding as 2 x 4 x 4
    trainer = UnCLIPTrainer(source="tiny", unet=unet, max_noise_level=1000)
    assert trainer.decoder.unet.conv_in.in_channels == 6
    seen = []
    trainer.decoder.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    embeddings = torch.randn(2, 32, generator=torch.Generator().manual_seed(5))
    for dropout in (0.0, 1.0):
        trainer.cond_dropout = dropout
        trainer.zero_grad()
        trainer.denoising_loss(data["images"][:2], embeddings, torch.Generator().manual_seed(0)).backward()
        grid = seen[-1][:, 4:]
        for b, y, x in [(0, 0, 0), (1, 7, 3), (1, 15, 15)]:  # 16 x 16 latents: each 4 x 4 block one grid cell
            for c in range(2):
                expected = 0.0 if dropout else float(embeddings[b, c * 16 + (y // 4) * 4 + x // 4])
                assert float(grid[b, c, y, x]) == pytest.approx(expected)
        weight_grad = trainer.decoder.unet.conv_in.weight.grad[:, 4:]
        assert bool(weight_grad.abs().sum() > 0) == (dropout == 0.0)  # zero inputs: no gradient on their weights


def test_embeddings_from_the_manifest(tiny, data):
    batch = {"image": data["images"][:3], "items": data["records"][:3]}
    assert torch.equal(tiny.embed(batch), torch.tensor([r["embedding"] for r in data["records"][:3]]))
    with pytest.raises(AnyGPTError, match="no 'embedding' field") as err:
        tiny.embed({"image": data["images"][:1], "items": [{"path": "x.png"}]})
    assert "\n" not in str(err.value) and "x.png" in str(err.value)
    with pytest.raises(AnyGPTError, match="32-d"):
        tiny.embed({"image": data["images"][:1], "items": [{"embedding": [0.0] * 5}]})


@pytest.mark.parametrize("twin, init_args, words", [
    ("unclip_tiny.yaml", {"unet": {"block_out_channels": [16, 32], "bogus_width": 3}}, ["unet", "bogus_width"]),
    ("unclip_tiny.yaml", {"decoder": {"num_inference_stepz": 3}}, ["decoder", "num_inference_stepz"]),
    ("unclip_tiny.yaml", {"unet": {"in_channels": 3}}, ["unet.in_channels", "4 latent channels"]),
    ("unclip_tiny.yaml", {"unet": {"in_channels": 7}}, ["unet.in_channels", "C x s x s grid"]),  # 32 / 3
    ("unclip_vae_tiny.yaml", {"vae": {"latent_chanels": 4}}, ["vae", "latent_chanels"]),
])
def test_a_bad_config_key_is_one_clear_line(tmp_path, data, monkeypatch, capsys, twin, init_args, words):
    from anygpt.cli import main

    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as done:  # the CLI prints the error alone, unwrapped from jsonargparse's
        main(["fit", "--config", str(config(tmp_path, twin, data, **init_args))])
    assert done.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("anygpt: error:")]
    assert len(errors) == 1, errors
    assert all(word in errors[0] for word in words), errors[0]


def test_embedders_are_frozen_seeded_maps(data, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    images = data["images"][:3]
    for make in (MeanColourEmbedder, RandomConvEmbedder):
        a, b, c = make(dim=16, seed=0), make(dim=16, seed=0), make(dim=16, seed=1)
        assert a(images).shape == (3, 16) and torch.equal(a(images), b(images))
        assert not torch.equal(a(images), c(images))
        assert not any(p.requires_grad for p in a.parameters())
    # the mean colour: one flat picture per colour, so equal colours give equal embeddings
    flat = torch.tensor([0.2, 0.5, 0.9])[None, :, None, None].expand(2, 3, 8, 8)
    assert torch.allclose(*MeanColourEmbedder(dim=8)(flat))
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=24, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
        image_size=32, patch_size=8)).save_pretrained(tmp_path / "clip" / "image_encoder")
    clip = CLIPImageEmbedder(source=str(tmp_path / "clip"))
    assert clip.dim == 24 and clip(images).shape == (3, 24) and torch.isfinite(clip(images)).all()
    with pytest.raises(AnyGPTError, match="images must be"):
        clip(images[0])
    with pytest.raises(AnyGPTError, match="no CLIP image encoder"):
        CLIPImageEmbedder(source=str(tmp_path))


def test_latent_embedder_is_the_vae_posterior_mean_grid(data, tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        sample_size=32, scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    images = data["images"][:3]
    whole, pooled = LatentEmbedder(str(tmp_path / "vae")), LatentEmbedder(str(tmp_path / "vae"), pool=2)
    side = images.shape[-1] // 2  # one 2x downsampling between two blocks
    with torch.no_grad():
        mean = vae.encode(images * 2 - 1).latent_dist.mean * 0.5
    torch.testing.assert_close(whole(images), mean.reshape(3, 4 * side * side), atol=1e-5, rtol=1e-5)
    quarter = mean.reshape(3, 4, side // 2, 2, side // 2, 2).mean(dim=(3, 5)).reshape(3, -1)
    torch.testing.assert_close(pooled(images), quarter, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(whole(images)[0], whole(images)[1])  # different pictures, different teachers
    assert not any(p.requires_grad for p in whole.parameters())
    with pytest.raises(AnyGPTError, match="no such file or folder"):
        LatentEmbedder(str(tmp_path / "nothing"))
    with pytest.raises(AnyGPTError, match="without its encoder .* cannot encode pictures"):
        LatentEmbedder(str(ROOT / "anygpt/demo/weights/image_codec/decoder/vae"))  # the demo ships it decoder-only
    with pytest.raises(AnyGPTError, match="pool must be"):
        LatentEmbedder(str(tmp_path / "vae"), pool=0)


def test_bad_vae_inputs_are_one_clear_line(tmp_path, data):
    small = yaml.safe_load((TWINS / "unclip_vae_tiny.yaml").read_text())["model"]["init_args"]["vae"]
    problems = [
        (lambda: VAETrainer(vae=small, source=str(tmp_path)), "not both"),
        (lambda: VAETrainer(vae=small, kl_weight=-1.0), "kl_weight"),
        (lambda: VAETrainer(source=str(tmp_path)), "not a VAE"),
        (lambda: VAETrainer(vae=small).losses(data["images"][:1, :, :31, :31]), "multiples"),
        (lambda: UnCLIPTrainer(source="tiny", vae=str(tmp_path / "missing")), "missing"),
        (lambda: UnCLIPTrainer(source=None), "source is required"),
        (lambda: UnCLIPTrainer(source="tiny", cond_dropout=1.5), "cond_dropout"),
        (lambda: UnCLIPTrainer(source="tiny", decoder={"dtype": "float16"}), "decoder.dtype"),
    ]
    for make, words in problems:
        with pytest.raises(AnyGPTError, match=words) as err:
            make()
        assert "\n" not in str(err.value)


def test_concat_embedder_puts_embeddings_side_by_side_in_order(data):
    from anygpt.training.image_embedders import ConcatEmbedder

    images = data["images"][:3]
    colour, conv = MeanColourEmbedder(dim=4, seed=0), RandomConvEmbedder(dim=5, seed=0)
    both = ConcatEmbedder([colour, conv], weights=[1.0, 0.5])
    torch.testing.assert_close(both(images), torch.cat([colour(images), 0.5 * conv(images)], dim=-1))
    assert both(images).shape == (3, 9) and not any(p.requires_grad for p in both.parameters())
    with pytest.raises(AnyGPTError, match="a weight for each"):
        ConcatEmbedder([colour, conv], weights=[1.0])
    with pytest.raises(AnyGPTError, match="a weight for each"):
        ConcatEmbedder([])
