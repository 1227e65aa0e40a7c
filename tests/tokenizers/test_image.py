"""SeedImageCodec: every stage against the SEED-2 golden fixtures, the full-size layout, loading, images, errors."""

from __future__ import annotations

import io
import json
import warnings

import pytest
import torch
from PIL import Image, ImageFile
from torch import nn

from anygpt import AnyGPTError
from anygpt.tokenizers.base import ModalityCodec
from anygpt.tokenizers.image import REAL_CONFIG, TINY_CONFIG, SeedImageCodec
from anygpt.tokenizers.seed.model import IGNORED_QUANTIZER_KEYS, SeedQuantizer, split_keys
from anygpt.tokenizers.seed.qformer import causal_mask
from tests.conftest import fixture_path

SEED = ("seed", "public")


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    torch.testing.assert_close(actual.float(), expected.float(), rtol=0, atol=atol)


@pytest.fixture(scope="module")
def cases():
    return torch.load(fixture_path(*SEED, "cases.pt"), weights_only=True)


@pytest.fixture(scope="module")
def parts():
    """(config, quantizer state dict, ViT state dict) of the fixture model."""
    config = json.loads(fixture_path(*SEED, "config.json").read_text())
    quantizer = torch.load(fixture_path(*SEED, "quantizer_state_dict.pt"), weights_only=True)
    visual = torch.load(fixture_path(*SEED, "visual_state_dict.pt"), weights_only=True)
    return config, quantizer, visual


@pytest.fixture(scope="module")
def golden(parts):
    config, quantizer, visual = parts
    return SeedImageCodec.from_state_dicts(quantizer, visual, **config)


@pytest.fixture(scope="module")
def small():
    """Random weights at the tiny sizes with 8192 codes, no decoder."""
    return SeedImageCodec(quantizer=None, visual=None, decoder=None, config=TINY_CONFIG)


@pytest.fixture(scope="module")
def image_paths(cases):
    return [fixture_path(*SEED, f"{name}.png") for name in cases["image_names"]]


@pytest.fixture(scope="module")
def full_layout():
    keys = json.loads(fixture_path("seed", "full_size_keys.json").read_text())

    def meta(rows):
        return {k: torch.empty(shape, device="meta", dtype=torch.int64 if k.endswith("position_ids") else None)
                for k, shape in rows}

    return keys, meta(keys["quantizer"]), meta(keys["visual_encoder"])


# --- fixture parity ---


def test_state_dict_matches_the_reference_model(golden):
    reference = torch.load(fixture_path(*SEED, "state_dict.pt"), weights_only=True)
    ours = golden.model.state_dict()
    assert list(ours) == list(reference)
    for key, value in reference.items():
        assert ours[key].shape == value.shape and ours[key].dtype == value.dtype, key
        assert torch.equal(ours[key], value), key


def test_preprocessing_from_files_and_bytes(golden, cases, image_paths):
    close(golden.preprocess(image_paths), cases["pixel_values"], atol=1e-6)
    close(golden.preprocess(cases["png_bytes"]), cases["pixel_values"], atol=1e-6)
    close(golden.preprocess([Image.open(io.BytesIO(b)) for b in cases["png_bytes"]]), cases["pixel_values"], 1e-6)


def test_each_stage_matches(golden, cases):
    model = golden.model
    with torch.no_grad():
        # ViT values reach ~5.4: fp32 GEMMs of another CPU differ in the last bits (ulp ~5e-7 there)
        close(model.visual_encoder(cases["pixel_values"]), cases["vit_output"], atol=1e-5)
        close(model.ln_vision(cases["vit_output"]), cases["image_embeds"], atol=1e-6)
        close(model.query_output(cases["image_embeds"]), cases["query_output"], atol=2e-6)
        z = model.encode_task_layer(cases["query_output"])
        close(z, cases["encode_task_output"], atol=1e-6)
        codes = model.quantize(cases["encode_task_output"])
        assert torch.equal(codes, cases["codes"])
        quant = model.quantize.embedding(codes)
        close(model.decode_task_layer(z + (quant - z)), cases["query_output_up"], atol=1e-6)
    close(golden.prequant(cases["pixel_values"]), cases["encode_task_output"], atol=1e-6)
    close(golden.codebook_entry(cases["codes"]), cases["codebook_entry"], atol=1e-6)
    close(golden.codebook_entry(cases["extra_codes"]), cases["extra_codebook_entry"], atol=1e-6)


def test_encode_end_to_end_and_batch_independent(golden, cases, image_paths):
    codes = golden.encode(image_paths)
    assert all(c.dtype == torch.long and c.shape == (32,) for c in codes)
    assert torch.equal(torch.stack(codes), cases["codes"])
    assert torch.equal(torch.stack(golden.encode(cases["png_bytes"])), cases["codes"])
    for path, expected in zip(image_paths, cases["codes"]):
        assert torch.equal(golden.encode([path])[0], expected)


def test_qformer_is_causal_over_32_queries_only(golden, cases):
    assert torch.equal(causal_mask(32), cases["qformer_self_attention_mask"])
    bert, embeds = golden.model.Qformer.bert, cases["image_embeds"]
    queries = golden.model.query_tokens.expand(3, -1, -1)
    changed = queries.clone()
    changed[:, 16:] += 1.0
    with torch.no_grad():
        before, after = bert(queries, embeds), bert(changed, embeds)
        assert torch.equal(before[:, :16], after[:, :16]) and not torch.allclose(before[:, 16:], after[:, 16:])
        # 31 queries: bidirectional, as the reference (the causal switch keys on exactly 32)
        before, after = bert(queries[:, :31], embeds), bert(changed[:, :31], embeds)
        assert not torch.allclose(before[:, :16], after[:, :16])


# --- full-size layout and loading rules ---


def test_full_size_layout_and_parameter_count(full_layout):
    keys, _, _ = full_layout
    with torch.device("meta"):
        model = SeedQuantizer(**REAL_CONFIG)
    visual, rest = split_keys(model)
    assert [[k, list(v.shape)] for k, v in visual.items()] == keys["visual_encoder"]
    assert [[k, list(v.shape)] for k, v in rest.items()] == keys["quantizer"]
    vit = sum(p.numel() for p in model.visual_encoder.parameters())
    assert vit == 985_894_528
    assert sum(p.numel() for p in model.parameters()) - vit == 164_104_000


def test_full_size_meta_state_dicts_load_strictly(full_layout):
    _, quantizer, visual = full_layout
    codec = SeedImageCodec.from_state_dicts(quantizer, visual)
    assert codec.model.query_tokens.is_meta and codec.vocab_size == 8192 and codec.span_length == 32
    extra = {"Qformer.cls.predictions.bias": torch.empty(30522, device="meta"),
             "Qformer.bert.embeddings.word_embeddings.weight": torch.empty(30522, 768, device="meta"),
             "Qformer.bert.embeddings.position_embeddings.weight": torch.empty(512, 768, device="meta"),
             "Qformer.bert.encoder.layer.3.intermediate.dense.weight": torch.empty(3072, 768, device="meta"),
             "Qformer.bert.encoder.layer.11.output.LayerNorm.bias": torch.empty(768, device="meta"),
             "vision_proj.weight": torch.empty(256, 768, device="meta"),
             "text_proj.bias": torch.empty(256, device="meta"), "itm_head.weight": torch.empty(2, 768, device="meta"),
             "temp": torch.empty((), device="meta")}
    SeedImageCodec.from_state_dicts({**quantizer, **extra}, {"model": visual})


@pytest.mark.parametrize("key", [
    "Qformer.bert.encoder.layer.0.intermediate_query.extra", "Qformer.bert.encoder.layer.0.output_query.x",
    "Qformer.bert.encoder.layer.0.attention.output.extra", "Qformer.bert.encoder.intermediate.dense.weight",
    "tempo", "visual_encoder.cls_token", "Qformer.bert.embeddings.token_type_embeddings.weight",
])
def test_unknown_quantizer_keys_are_errors(full_layout, key):
    _, quantizer, visual = full_layout
    with pytest.raises(AnyGPTError, match=key.replace(".", r"\.")) as err:
        SeedImageCodec.from_state_dicts({**quantizer, key: torch.empty(1, device="meta")}, visual)
    assert "\n" not in str(err.value) and "unexpected" in str(err.value)


def test_ignore_patterns_never_match_a_model_key(full_layout):
    import re

    keys, _, _ = full_layout
    pattern = re.compile("|".join(IGNORED_QUANTIZER_KEYS))
    assert not [k for k, _ in keys["quantizer"] if pattern.match(k)]


def test_missing_keys_and_bad_shapes_are_errors(full_layout):
    _, quantizer, visual = full_layout
    dropped = dict(quantizer)
    del dropped["Qformer.bert.encoder.layer.4.crossattention.self.key.weight"]
    with pytest.raises(AnyGPTError, match=r"missing Qformer\.bert\.encoder\.layer\.4\.crossattention"):
        SeedImageCodec.from_state_dicts(dropped, visual)
    no_vit = {k: v for k, v in visual.items() if not k.startswith("blocks.38.")}
    with pytest.raises(AnyGPTError, match=r"ViT state dict.*missing blocks\.38\.norm1\.weight"):
        SeedImageCodec.from_state_dicts(quantizer, no_vit)
    with pytest.raises(AnyGPTError, match=r"unexpected blocks\.39\.norm1\.weight"):
        SeedImageCodec.from_state_dicts(quantizer, {**visual, "blocks.39.norm1.weight": torch.empty(1408)})
    wrong = {**quantizer, "quantize.embedding.weight": torch.empty(8192, 64, device="meta")}
    with pytest.raises(AnyGPTError, match=r"quantize\.embedding\.weight has shape \[8192, 64\].*\[8192, 32\]"):
        SeedImageCodec.from_state_dicts(wrong, visual)


def test_round_trip_through_files(parts, cases, image_paths, tmp_path):
    config, quantizer, visual = parts
    qpath, vpath = tmp_path / "seed_quantizer.pt", tmp_path / "eva_vit_g.pth"
    torch.save({**quantizer, "temp": torch.tensor(0.07), "vision_proj.weight": torch.randn(4, 96),
                "Qformer.bert.encoder.layer.1.output.dense.bias": torch.randn(96)}, qpath)
    torch.save({k: v.half() for k, v in visual.items()}, vpath)  # like eva_vit_g.pth: stored in float16
    codec = SeedImageCodec.from_pretrained(quantizer=str(qpath), visual=str(vpath), config=config)
    assert codec.decoder is None and codec.model.visual_encoder.cls_token.dtype == torch.float32
    assert torch.equal(codec.model.visual_encoder.pos_embed, visual["pos_embed"].half().float())
    torch.save(visual, vpath)
    codec = SeedImageCodec.from_pretrained(quantizer=str(qpath), visual=str(vpath), config=config)
    assert torch.equal(torch.stack(codec.encode(image_paths)), cases["codes"])
    with pytest.raises(AnyGPTError, match="missing.pt"):
        SeedImageCodec.from_pretrained(quantizer=str(tmp_path / "missing.pt"), visual=str(vpath), config=config)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AnyGPTError, match="bad.pt"):
        SeedImageCodec.from_pretrained(quantizer=str(tmp_path / "bad.pt"), visual=str(vpath), config=config)


def test_a_quantizer_file_may_leave_out_the_query_reconstruction_head(parts, cases, image_paths, tmp_path):
    config, quantizer, visual = parts
    qpath, vpath = tmp_path / "seed_quantizer.pt", tmp_path / "eva_vit_g.pth"
    torch.save(visual, vpath)
    head = [k for k in quantizer if k == "pos_embed" or k.startswith("blocks.")]
    assert head and "pos_embed_image" not in head
    torch.save({k: v for k, v in quantizer.items() if k not in head}, qpath)
    codec = SeedImageCodec.from_pretrained(quantizer=str(qpath), visual=str(vpath), config=config)
    codes = codec.encode(image_paths)
    assert torch.equal(torch.stack(codes), cases["codes"])
    full = SeedImageCodec(quantizer=quantizer, visual=visual, decoder=None, config=config)
    with torch.no_grad():  # the image features that unCLIP draws from do not use the head
        torch.testing.assert_close(codec.model.codebook_entry(torch.stack(codes)),
                                   full.model.codebook_entry(torch.stack(codes)))
    torch.save({k: v for k, v in quantizer.items() if k != "pos_embed"}, qpath)  # half the head: an error
    with pytest.raises(AnyGPTError, match=r"missing pos_embed"):
        SeedImageCodec.from_pretrained(quantizer=str(qpath), visual=str(vpath), config=config)


def test_bad_options_are_errors():
    with pytest.raises(AnyGPTError, match="unknown SEED tokenizer config keys: depth"):
        SeedImageCodec(quantizer=None, visual=None, decoder=None, config={**TINY_CONFIG, "depth": 2})
    with pytest.raises(AnyGPTError, match="multiple of 12"):
        SeedImageCodec(quantizer=None, visual=None, decoder=None, config={**TINY_CONFIG, "qformer_hidden": 64})
    with pytest.raises(AnyGPTError, match="dtype"):
        SeedImageCodec(quantizer=None, visual=None, decoder=None, config=TINY_CONFIG, dtype="half")


# --- images ---


MODES = ["L", "LA", "RGBA", "CMYK", "P", "I;16", "1", "1x1"]


def _image_in_mode(mode: str) -> Image.Image:
    if mode == "1x1":
        return Image.new("RGB", (1, 1), (200, 10, 30))
    if mode == "I;16":
        return Image.frombytes("I;16", (20, 10), bytes(range(200)) * 2)
    base = Image.open(fixture_path(*SEED, "img2_stripes_rect_noise_200x150.png")).convert("RGB")
    if mode == "P":
        palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        palette.info["transparency"] = 3
        return palette
    if mode == "RGBA":
        rgba = base.convert("RGBA")
        rgba.putalpha(128)
        return rgba
    return base.convert(mode)


@pytest.mark.parametrize("mode", MODES)
def test_image_modes_become_rgb_and_encode(small, mode, tmp_path):
    image = _image_in_mode(mode)
    source = tmp_path / ("image.tif" if mode == "CMYK" else "image.png")  # PNG has no CMYK
    image.save(source)
    loaded = small.load(source)
    with Image.open(source) as reference:
        assert reference.mode == image.mode
        expected = reference.convert("RGB")
    assert loaded.mode == "RGB" and loaded.tobytes() == expected.tobytes()
    assert small.load(image).tobytes() == image.convert("RGB").tobytes()
    [codes] = small.encode([source])
    assert codes.shape == (32,) and codes.dtype == torch.long and 0 <= codes.min() and codes.max() < 8192


def test_bad_image_inputs(small, tmp_path):
    empty, corrupt, folder = tmp_path / "empty.png", tmp_path / "corrupt.png", tmp_path / "folder.png"
    empty.write_bytes(b"")
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    folder.mkdir()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(fixture_path(*SEED, "img2_stripes_rect_noise_200x150.png").read_bytes()[:2000])
    for source, name in [(tmp_path / "missing.png", "missing.png"), (empty, "empty.png"), (corrupt, "corrupt.png"),
                         (folder, "folder.png"), (truncated, "truncated.png"), (str(corrupt), "corrupt.png")]:
        with pytest.raises(AnyGPTError, match=name) as err:
            small.encode([source])
        assert "\n" not in str(err.value)
    for source in [b"", b"garbage bytes", 42]:
        with pytest.raises(AnyGPTError) as err:
            small.load(source)
        assert "\n" not in str(err.value)


def test_huge_images_are_refused_before_decoding(image_paths, monkeypatch):
    codec = SeedImageCodec(quantizer=None, visual=None, decoder=None, config=TINY_CONFIG, max_pixels=100)
    calls = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: calls.append(1) or original(self))
    with pytest.raises(AnyGPTError, match=r"100x80 = 8000 pixels, over the limit of 100") as err:
        codec.encode([image_paths[0]])
    assert not calls and "img0_gradient_100x80.png" in str(err.value)
    with pytest.raises(AnyGPTError, match="over the limit"):
        codec.preprocess([Image.new("RGB", (20, 20))])
    # PIL's own decompression-bomb guard never leaks: its warning is silenced and its error becomes ours
    roomy = SeedImageCodec(quantizer=None, visual=None, decoder=None, config=TINY_CONFIG)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        roomy.load(image_paths[0])  # 8000 pixels: PIL would warn
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(AnyGPTError, match="too large"):
        roomy.load(image_paths[0])


# --- decode ---


class StubDecoder(nn.Module):
    """Records what the codec hands to an UnCLIPDecoder."""

    def __init__(self, embedding_dim: int = 32):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.calls = []

    def decode(self, image_embeds, seeds=None):
        self.calls.append((image_embeds, seeds))
        return [Image.new("RGB", (8, 8)) for _ in range(len(image_embeds))]


def test_decode_hands_embeddings_to_the_decoder(image_paths):
    stub = StubDecoder()
    codec = SeedImageCodec(quantizer=None, visual=None, decoder=stub, config=TINY_CONFIG)
    codes = codec.encode(image_paths[:2])
    images = codec.decode(codes, seeds=[1, None])
    assert len(images) == 2 and all(isinstance(i, Image.Image) for i in images)
    embeds, seeds = stub.calls[0]
    assert embeds.dtype == torch.float32 and embeds.shape == (2, 32) and seeds == [1, None]
    assert torch.equal(embeds, codec.codebook_entry(torch.stack(codes)))
    assert codec.encode([]) == [] and codec.decode([]) == []
    with pytest.raises(ValueError, match="incomplete"):
        codec.decode([codes[0][:31]])
    with pytest.raises(ValueError, match="8192"):
        codec.decode([torch.full((32,), 8192)])
    with pytest.raises(ValueError, match="seeds"):
        codec.decode(codes, seeds=[1])
    with pytest.raises(AnyGPTError, match="28-d"):
        SeedImageCodec(quantizer=None, visual=None, decoder=StubDecoder(28), config=TINY_CONFIG)


def test_codebook_entry_checks_ids(small):
    with pytest.raises(ValueError, match="image code 8192 is outside"):
        small.codebook_entry(torch.tensor([[8192] + [0] * 31]))
    with pytest.raises(ValueError, match="image code -1 is outside"):
        small.codebook_entry(torch.tensor([[0] * 31 + [-1]]))
    with pytest.raises(ValueError, match=r"shape \[batch, 32\]"):
        small.codebook_entry(torch.zeros(32, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        small.codebook_entry(torch.zeros(1, 32))


def test_decode_without_decoder_is_an_error(small):
    with pytest.raises(AnyGPTError, match="needs an UnCLIPDecoder"):
        small.decode([torch.zeros(32, dtype=torch.long)])


# --- tiny / random weights ---


def test_tiny_gives_varied_codes_batch_independent(image_paths):
    state = torch.random.get_rng_state()
    codec = SeedImageCodec.tiny()
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert isinstance(codec, ModalityCodec) and codec.vocab_size == 8192 and codec.span_length == 32
    assert (codec.modality, codec.token_prefix, codec.start_tag, codec.end_tag) == ("image", "👀", "<soim>", "<eoim>")
    if codec.decoder is not None:
        assert codec.decoder.embedding_dim == TINY_CONFIG["image_features_dim"]
    codes = codec.encode(image_paths)
    for path, row in zip(image_paths, codes):
        assert len(set(row.tolist())) > 4 and 0 <= row.min() and row.max() < 8192
        assert torch.equal(codec.encode([path])[0], row)
    assert not torch.equal(codes[0], codes[1])
    other = SeedImageCodec(quantizer=None, visual=None, decoder=None, config=TINY_CONFIG, seed=1)
    assert not torch.equal(torch.stack(other.encode(image_paths)), torch.stack(codes))


def test_reduced_precision_runs_on_cpu(image_paths, small):
    assert small.compute_dtype() == torch.float32
    codec = SeedImageCodec(quantizer=None, visual=None, decoder=None, config=TINY_CONFIG, dtype="bfloat16")
    [codes] = codec.encode(image_paths[:1])
    assert codec.model.query_tokens.dtype == torch.bfloat16
    assert codes.shape == (32,) and codes.max() < 8192
    assert codec.codebook_entry(codes[None]).shape == (1, 32)


def test_half_precision_attention_uses_fused_kernels_and_agrees_with_float32():
    from anygpt.tokenizers.seed.vit import EvaAttention

    torch.manual_seed(0)
    attention = EvaAttention(64, 4)
    torch.nn.init.normal_(attention.q_bias)
    torch.nn.init.normal_(attention.v_bias)
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        reference = attention(x)
        half = attention.to(torch.bfloat16)(x.to(torch.bfloat16)).float()
    torch.testing.assert_close(half, reference, atol=3e-2, rtol=3e-2)
