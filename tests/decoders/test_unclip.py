"""UnCLIPDecoder (tiny random components, CPU): shapes, per-image seeds, batching, stock-pipeline parity, loading."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from anygpt.decoders.unclip import UnCLIPDecoder
from anygpt.hub import WeightsNotFoundError

STEPS = 3


@pytest.fixture(scope="module")
def decoder():
    return UnCLIPDecoder.tiny(num_inference_steps=STEPS)


@pytest.fixture(scope="module")
def embeds():
    return torch.randn(3, 32, generator=torch.Generator().manual_seed(7)) * 3


@pytest.fixture(scope="module")
def stock(decoder):
    """The stock diffusers pipeline over the same components, plus the image encoder it insists on having."""
    from diffusers import StableUnCLIPImg2ImgPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
        image_size=32, patch_size=8))
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pipe = StableUnCLIPImg2ImgPipeline(**{**decoder.pipe.components, "image_encoder": vision.eval(),
                                          "feature_extractor": processor})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


def assert_same_up_to_rounding(a: np.ndarray, b: np.ndarray) -> None:
    """Equal but for a few pixels one level apart: float kernels round differently at another batch size (~1e-6),
    while a batch-dependent random draw would change the whole picture."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


def test_decode_returns_rgb_images_of_the_image_size(decoder, embeds):
    images = decoder.decode(embeds, seeds=[1, 2, 3])
    assert len(images) == 3 and decoder.image_size == (32, 32) and decoder.embedding_dim == 32
    assert all(image.mode == "RGB" and image.size == (32, 32) for image in images)
    assert pixels(images).std() > 1  # not a blank picture
    assert decoder.decode(embeds[:0], seeds=[]) == []


def test_seeds_decide_the_picture(decoder, embeds):
    first = pixels(decoder.decode(embeds[:1], seeds=[5]))
    assert np.array_equal(first, pixels(decoder.decode(embeds[:1], seeds=[5])))
    assert not np.array_equal(first, pixels(decoder.decode(embeds[:1], seeds=[6])))
    # None draws a seed from the global RNG: new pictures each call, reproducible under a global seed
    torch.manual_seed(0)
    a, b = pixels(decoder.decode(embeds[:1])), pixels(decoder.decode(embeds[:1]))
    torch.manual_seed(0)
    assert not np.array_equal(a, b) and np.array_equal(a, pixels(decoder.decode(embeds[:1])))


@pytest.mark.parametrize("batch_size", [4, 2])
def test_an_image_does_not_depend_on_its_batch_neighbours(embeds, batch_size):
    decoder = UnCLIPDecoder.tiny(num_inference_steps=STEPS, batch_size=batch_size)
    batch = pixels(decoder.decode(embeds, seeds=[11, 12, 13]))
    for i, seed in enumerate([11, 12, 13]):
        assert_same_up_to_rounding(batch[i], pixels(decoder.decode(embeds[i:i + 1], seeds=[seed]))[0])


def test_matches_the_stock_pipeline(decoder, stock, embeds):
    ours = pixels(decoder.decode(embeds, seeds=[3, 4, 5]))
    common = dict(prompt=[""] * 3, guidance_scale=10.0, num_inference_steps=STEPS, noise_level=0, output_type="np")
    # 1. generators only: the pipeline draws each image's embedding noise, then its latents
    generators = [torch.Generator().manual_seed(seed) for seed in (3, 4, 5)]
    theirs = stock(image_embeds=embeds, generator=generators, **common).images
    assert np.array_equal(ours, (theirs * 255).round().astype(np.uint8))
    # 2. explicit latents, drawn from each generator after its embedding noise (one image: prompt "")
    alone = pixels(decoder.decode(embeds[1:2], seeds=[4]))
    generator = torch.Generator().manual_seed(4)
    torch.randn(1, 32, generator=generator)
    latents = torch.randn(1, 4, 16, 16, generator=generator)
    generator = torch.Generator().manual_seed(4)
    theirs = stock(image_embeds=embeds[1:2], generator=[generator], latents=latents,
                   **{**common, "prompt": ""}).images
    assert np.array_equal(alone, (theirs * 255).round().astype(np.uint8))


@pytest.mark.parametrize("bad, seeds, match", [
    (torch.zeros(2, 16), None, "32-d"),
    (torch.zeros(32), None, "batch"),
    (torch.full((1, 32), float("nan")), None, "finite"),
    (torch.zeros(2, 32), [1], "2 image embeddings"),
])
def test_bad_input_is_one_clear_line(decoder, bad, seeds, match):
    with pytest.raises(ValueError, match=match) as err:
        decoder.decode(bad, seeds=seeds)
    assert "\n" not in str(err.value)


def test_missing_local_folder(tmp_path):
    with pytest.raises(WeightsNotFoundError) as err:
        UnCLIPDecoder(source=str(tmp_path / "no" / "such-folder"))
    assert "\n" not in str(err.value) and "such-folder" in str(err.value)


def test_offline_repo_id_names_the_repo(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("ANYGPT_WEIGHTS", raising=False)
    with pytest.raises(WeightsNotFoundError) as err:
        UnCLIPDecoder()
    assert "\n" not in str(err.value) and "stabilityai/stable-diffusion-2-1-unclip" in str(err.value)


def test_a_saved_folder_loads_without_its_image_encoder(decoder, stock, embeds, tmp_path):
    stock.save_pretrained(tmp_path / "full")  # laid out like the released repo, image encoder included
    expected = pixels(decoder.decode(embeds[:2], seeds=[8, 9]))
    loaded = UnCLIPDecoder(source=str(tmp_path / "full"), num_inference_steps=STEPS)
    assert {name for name, _ in loaded.named_children()} == {"unet", "vae", "text_encoder", "image_normalizer"}
    assert np.array_equal(expected, pixels(loaded.decode(embeds[:2], seeds=[8, 9])))
    assert UnCLIPDecoder(source=str(tmp_path / "full"), dtype="bfloat16").unet.dtype == torch.bfloat16
    # the same folder with the image encoder and feature extractor left out (model_index.json still names them)
    lean = shutil.copytree(tmp_path / "full", tmp_path / "lean")
    shutil.rmtree(lean / "image_encoder")
    shutil.rmtree(lean / "feature_extractor")
    assert json.loads((lean / "model_index.json").read_text())["image_encoder"][0] == "transformers"
    loaded = UnCLIPDecoder(source=str(lean), num_inference_steps=STEPS)
    assert np.array_equal(expected, pixels(loaded.decode(embeds[:2], seeds=[8, 9])))


def test_a_half_precision_folder_decodes_in_float32_on_the_cpu(decoder, embeds, tmp_path):
    half = UnCLIPDecoder.tiny(num_inference_steps=STEPS)
    half.pipe.to(torch.float16)
    half.pipe.save_pretrained(tmp_path / "half")  # how the demo ships its decoder
    loaded = UnCLIPDecoder(source=str(tmp_path / "half"), num_inference_steps=STEPS)
    assert loaded.text_encoder.dtype == torch.float16  # transformers keeps the saved precision, diffusers does not
    pictures = loaded.decode(embeds[:1], seeds=[1])
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    # the same pictures as the float32 decoder, up to the weights' rounding to float16
    diff = np.abs(pixels(pictures).astype(int) - pixels(decoder.decode(embeds[:1], seeds=[1])).astype(int))
    assert diff.mean() < 2.0, diff.mean()


def test_a_vae_without_its_encoder_decodes_the_same_pictures(decoder, embeds, tmp_path):
    from anygpt.decoders.decoder_only_vae import strip_encoder

    decoder.pipe.save_pretrained(tmp_path / "full")
    lean = shutil.copytree(tmp_path / "full", tmp_path / "lean")
    assert strip_encoder(lean / "vae") > 0
    state = torch.random.get_rng_state()
    loaded = UnCLIPDecoder(source=str(lean), num_inference_steps=STEPS)
    assert torch.equal(state, torch.random.get_rng_state())  # nothing drawn at random
    assert loaded.vae.encoder is None and all(not p.is_meta for p in loaded.parameters())
    expected = pixels(decoder.decode(embeds[:2], seeds=[3, 4]))
    assert np.array_equal(expected, pixels(loaded.decode(embeds[:2], seeds=[3, 4])))
    full = UnCLIPDecoder(source=str(tmp_path / "full"), num_inference_steps=STEPS)
    assert full.vae.encoder is not None  # a folder with its encoder loads as before


def test_moves_with_its_parent_and_casts_when_decoding(decoder, embeds):
    expected = pixels(decoder.decode(embeds[:1], seeds=[1]))
    parent = torch.nn.ModuleDict({"image": UnCLIPDecoder.tiny(num_inference_steps=STEPS)}).to(torch.float64)
    child = parent["image"]
    assert child.unet.dtype == child.text_encoder.dtype == child.image_normalizer.mean.dtype == torch.float64
    assert np.array_equal(expected, pixels(child.decode(embeds[:1], seeds=[1])))  # "auto" on CPU: float32
    assert child.unet.dtype == child.vae.dtype == torch.float32
    half = UnCLIPDecoder.tiny(num_inference_steps=STEPS, dtype="bfloat16")
    half.float()  # an explicit dtype is applied at construction and again when decoding
    with torch.inference_mode():  # as in Lightning's predict loop
        assert len(half.decode(embeds[:1].double(), seeds=[1])) == 1 and half.unet.dtype == torch.bfloat16
    assert not any(p.is_inference() for p in half.parameters())  # still loadable, movable
    half.load_state_dict(half.state_dict())


def test_a_grid_unet_sees_the_embedding_beside_the_latents_in_both_guidance_branches(embeds):
    from diffusers import UNet2DConditionModel

    from anygpt.decoders.unclip import tiny_components

    components = tiny_components()
    config = {**components["unet"].config, "in_channels": 6}  # 4 latent channels + 32 = 2 x 4 x 4
    components["unet"] = UNet2DConditionModel.from_config(config).eval()
    decoder = UnCLIPDecoder(source=None, components=components, num_inference_steps=2, guidance_scale=3.0)
    seen = []
    decoder.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    assert len(decoder.decode(embeds[:2], seeds=[0, 1])) == 2
    assert seen and all(step.shape == (4, 6, 16, 16) for step in seen)  # unconditional rows, then conditional
    assert all(torch.equal(step[:, 4:], seen[0][:, 4:]) for step in seen) and not seen[0][:2, 4:].any()
    grid = seen[0][2:, 4:].numpy()
    for b in range(2):
        for c in range(2):
            for y in range(16):
                for x in range(16):
                    assert grid[b, c, y, x] == pytest.approx(float(embeds[b, c * 16 + (y // 4) * 4 + x // 4]))
    components["unet"] = UNet2DConditionModel.from_config({**config, "in_channels": 7}).eval()
    with pytest.raises(ValueError, match="7 input channels") as err:
        UnCLIPDecoder(source=None, components=components)
    assert "\n" not in str(err.value)


def test_tiny_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = UnCLIPDecoder.tiny(seed=0), UnCLIPDecoder.tiny(seed=0), UnCLIPDecoder.tiny(seed=1)
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.unet.conv_in.weight, c.unet.conv_in.weight)


def test_loading_a_folder_draws_no_progress_bars_and_leaves_them_on(decoder, tmp_path, capfd):
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    decoder.pipe.save_pretrained(tmp_path / "saved")
    capfd.readouterr()
    UnCLIPDecoder(source=str(tmp_path / "saved"), num_inference_steps=STEPS)
    err = capfd.readouterr().err
    assert "Loading pipeline components" not in err and "Loading weights" not in err, err
    assert diffusers_logging.is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()
