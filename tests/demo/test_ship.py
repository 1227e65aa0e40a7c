"""Shipping the demo's weights: half-precision safetensors that load back into the inference classes."""

from __future__ import annotations

import pytest
import torch

from anygpt import AnyGPTError

CODEC = {"n_filters": 4, "dimension": 32, "semantic_dimension": 16, "codebook_size": 64}


def test_speech_codec_ships_and_loads_with_the_same_codes(tmp_path):
    from anygpt.demo.ship import ship_speech_codec
    from anygpt.tokenizers.speech import SpeechTokenizerCodec

    trained = SpeechTokenizerCodec(config=CODEC, checkpoint=None, decoder=None, seed=3)
    torch.save({"state_dict": {f"codec.model.{k}": v for k, v in trained.model.state_dict().items()}},
               tmp_path / "last.ckpt")
    path = ship_speech_codec(tmp_path / "last.ckpt", tmp_path)
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(path).values() if v.is_floating_point()} == {torch.float16}
    assert not [k for k in load_file(path) if k.endswith(("embed_avg", "cluster_size"))]  # training statistics
    loaded = SpeechTokenizerCodec(config=CODEC, checkpoint=str(path), decoder=None)
    assert next(loaded.model.parameters()).dtype == torch.float32
    audio = 0.3 * torch.sin(torch.arange(16000) / 16000 * 2 * torch.pi * torch.linspace(150, 400, 16000))
    with torch.no_grad():
        a = trained.model.encode(audio[None, None])
        b = loaded.model.encode(audio[None, None])
    assert (a == b).float().mean() > 0.9  # half precision moves a few codes at most


def test_soundstorm_ships_with_its_config_in_the_metadata(tmp_path):
    from anygpt.decoders.soundstorm import SoundStormDecoder
    from anygpt.demo.ship import ship_soundstorm

    config = {"dim": 64, "depth": 1, "heads": 4, "dim_head": 16, "codebook_size": 64, "num_quantizers": 7,
              "num_semantic_tokens": 64, "conv_kernel_size": 7}
    torch.manual_seed(0)
    decoder = SoundStormDecoder(**config)
    torch.save({"state_dict": {f"decoder.{k}": v for k, v in decoder.state_dict().items()},
                "soundstorm_config": {"heads": 4, "dim_head": 16}}, tmp_path / "last.ckpt")
    loaded = SoundStormDecoder.from_pretrained(str(ship_soundstorm(tmp_path / "last.ckpt", tmp_path)))
    attn = loaded.net.conformer.layers[0].attn.fn
    assert (attn.heads, attn.dim_head) == (4, 16)  # 64 = 4 x 16, not the shape guess 1 x 64
    semantic = torch.randint(0, 64, (1, 20))
    acoustic = torch.randint(0, 64, (1, 20, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(semantic, acoustic), decoder.eval().logits(semantic, acoustic),
                                   atol=0.05, rtol=0.05)


def test_a_checkpoint_without_the_part_is_one_line(tmp_path):
    from anygpt.demo.ship import ship_soundstorm

    torch.save({"state_dict": {"other.weight": torch.zeros(1)}}, tmp_path / "last.ckpt")
    with pytest.raises(AnyGPTError, match="holds no 'decoder.' weights"):
        ship_soundstorm(tmp_path / "last.ckpt", tmp_path)


def test_the_model_card_names_untrained_parts_and_carries_the_notes(tmp_path):
    from anygpt.demo.ship import write_card

    none = tmp_path / "none.json"
    card = write_card(tmp_path / "runs", tmp_path, corpus=none, figures=none, scenes=none, melodies=none,
                      media_figures=none, notes=["the codec saw the first 20000 utterances"]).read_text()
    assert "- `lm` (configs/demo/lm.yaml): not trained" in card
    assert "## Notes\n\n- the codec saw the first 20000 utterances" in card
    assert "## Corpus" not in card and "## Held-out figures" not in card


def test_a_new_card_keeps_the_notes_of_the_one_it_replaces_and_shows_both_benchmarks(tmp_path):
    import json

    from anygpt.demo.ship import write_card

    none = tmp_path / "none.json"
    (tmp_path / "media.json").write_text(json.dumps({"image": {"count": 3}, "load_s": 1.0}))
    (tmp_path / "scenes.json").write_text(json.dumps({"seed": 0, "size": 64, "splits": {"train": {
        "scenes": 7, "manifest_sha256": "abc", "pixels_sha256": "def"}}}))
    common = dict(corpus=none, figures=none, scenes=tmp_path / "scenes.json", melodies=none,
                  media_figures=tmp_path / "media.json")
    write_card(tmp_path / "runs", tmp_path, notes=["part 1: how the codec was trained"], **common)
    card = write_card(tmp_path / "runs", tmp_path, notes=["part 2: how the LM was trained"], **common).read_text()
    assert "## Notes\n\n- part 1: how the codec was trained\n- part 2: how the LM was trained\n" in card
    card = write_card(tmp_path / "runs", tmp_path, notes=["part 2: how the LM was trained"], **common).read_text()
    assert card.count("part 2: how the LM was trained") == 1
    assert "- train: 7 scenes, manifest sha256 `abc`, pixels sha256 `def`" in card
    assert "## Held-out figures (`python benchmarks/demo_media.py`)" in card and '"count": 3' in card
    assert "load_s" not in card


def test_music_codec_ships_as_a_half_precision_folder_with_its_harmonic_branch(tmp_path):
    from safetensors.torch import load_file

    from anygpt.demo.ship import ship_music_codec
    from anygpt.tokenizers.music import EncodecMusicCodec

    config = {"sampling_rate": 16000, "num_filters": 4, "hidden_size": 16, "codebook_dim": 16, "codebook_size": 64,
              "target_bandwidths": [0.7], "num_lstm_layers": 1, "harmonics": 8, "harmonic_range": [80.0, 1600.0]}
    trained = EncodecMusicCodec(source=None, config=config, segment_seconds=None, seed=2)
    torch.save({"state_dict": {f"codec.model.{k}": v for k, v in trained.model.state_dict().items()},
                "encodec_config": trained.model.config.to_dict()}, tmp_path / "best.ckpt")
    folder = ship_music_codec(tmp_path / "best.ckpt", tmp_path)
    weights = load_file(next(folder.glob("*.safetensors")))
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    assert "decoder.head.weight" in weights  # the harmonic branch (pitch and harmonic amplitudes)
    assert not [k for k in weights if k.endswith(("embed_avg", "cluster_size"))]  # training statistics
    loaded = EncodecMusicCodec(source=str(folder), segment_seconds=None)
    tone = 0.3 * torch.sin(torch.arange(32000) / 16000 * 2 * torch.pi * torch.linspace(200, 500, 32000))
    a, b = trained.encode([(tone[None], 16000)])[0], loaded.encode([(tone[None], 16000)])[0]
    assert a.shape == b.shape and (a == b).float().mean() > 0.9
    assert loaded.decode([b])[0].shape[-1] == len(b) // loaded.num_codebooks * loaded.hop_length == 32000


@pytest.mark.parametrize("source", ["checkpoint", "export"])
def test_image_codec_ships_with_its_unclip_decoder(tmp_path, source):
    import json
    from pathlib import Path

    import lightning
    import yaml
    from safetensors.torch import load_file

    from anygpt.decoders.unclip import UnCLIPDecoder
    from anygpt.demo.ship import ship_image_codec
    from anygpt.tokenizers.image import SeedImageCodec
    from anygpt.training.image_codec import SeedTrainer
    from tests.training.test_image_codec import JOINT_DECODER

    twin = Path(__file__).resolve().parents[1] / "configs" / "codecs" / "seed_tiny.yaml"
    spec = dict(yaml.safe_load(twin.read_text())["model"]["init_args"], embedder=None, train_encoder=True)
    spec["decoder"] = JOINT_DECODER
    module = SeedTrainer(**spec)
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": lightning.__version__}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "last.ckpt")
    module.export(str(tmp_path / "export"))  # what a fit writes when it ends (export_dir)
    folder = ship_image_codec(tmp_path / ("last.ckpt" if source == "checkpoint" else "export"), tmp_path / "weights")
    shipped = torch.load(folder / "seed_quantizer.pt")
    assert {v.dtype for v in shipped.values() if v.is_floating_point()} == {torch.float16}
    assert "pos_embed" not in shipped and not [k for k in shipped if k.startswith("blocks.")]  # training only
    assert "pos_embed_image" in shipped and [k for k in shipped if k.startswith("blocks_image.")]
    unet = load_file(folder / "decoder" / "unet" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in unet.values()} == {torch.float16}
    vae = load_file(folder / "decoder" / "vae" / "diffusion_pytorch_model.safetensors")
    assert vae and not [k for k in vae if k.startswith("encoder.")]  # decoding never encodes
    decoder = UnCLIPDecoder(source=str(folder / "decoder"), num_inference_steps=2)
    codec = SeedImageCodec(quantizer=str(folder / "seed_quantizer.pt"), visual=str(folder / "eva_vit_g.pth"),
                           config=json.loads((folder / "seed_config.json").read_text()), decoder=decoder)
    pictures = [torch.rand(3, 56, 56, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    from PIL import Image

    images = [Image.fromarray((p.permute(1, 2, 0).numpy() * 255).astype("uint8")) for p in pictures]
    with torch.no_grad():
        expected = module.codec.encode(images)
    got = codec.encode(images)
    assert all((a == b).float().mean() > 0.9 for a, b in zip(expected, got))  # half precision moves few codes
    decoded = codec.decode(got, seeds=[0, 1, 2])
    assert [p.size for p in decoded] == [decoder.image_size[::-1]] * 3


def test_an_image_codec_run_without_checkpoints_ships_from_its_export_and_others_do_not(tmp_path):
    from anygpt.demo.ship import record_part, run_checkpoint, ship_image_codec, shipped_parts

    for name in ("image_codec", "music_codec"):
        (tmp_path / name / "export").mkdir(parents=True)
    assert run_checkpoint(tmp_path, "image_codec") == tmp_path / "image_codec" / "export"
    logs = tmp_path / "image_codec_logs" / "version_0"
    logs.mkdir(parents=True)
    (logs / "metrics.csv").write_text("epoch,step,train/loss,val/loss\n3,3999,0.5,\n3,4002,,0.4\n")
    (tmp_path / "weights").mkdir()
    record_part(tmp_path / "weights", "image_codec", tmp_path / "image_codec" / "export")
    assert shipped_parts(tmp_path / "weights")["image_codec"]["training"].startswith("4002 steps (shipped from its")
    assert run_checkpoint(tmp_path, "music_codec") == tmp_path / "music_codec" / "last.ckpt"
    (tmp_path / "image_codec" / "last.ckpt").touch()
    assert run_checkpoint(tmp_path, "image_codec") == tmp_path / "image_codec" / "last.ckpt"
    with pytest.raises(AnyGPTError, match="export without its unCLIP decoder"):
        ship_image_codec(tmp_path / "image_codec" / "export", tmp_path / "weights")


def test_the_lm_ships_with_one_tokenizer_config_less_and_both_tokenizers_read_it(tmp_path):
    import json

    from pathlib import Path

    from transformers import AutoTokenizer

    from anygpt.cli import AnyGPTCLI
    from anygpt.demo.ship import ship_lm
    from anygpt.lm.tokenizer import TextTokenizer

    root = Path(__file__).resolve().parents[2]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        cli = AnyGPTCLI(args=["fit", "--config", "tests/configs/fit_sft_tiny.yaml", "--trainer.max_steps", "1",
                              "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "true",
                              "--trainer.default_root_dir", str(tmp_path / "fit")])
    [ckpt] = (tmp_path / "fit").rglob("*.ckpt")
    folder = Path(ship_lm(ckpt, tmp_path / "weights"))
    assert (folder / "model.int8.safetensors").is_file() and not (folder / "model.safetensors").exists()
    assert "added_tokens_decoder" not in json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    text = "[Human]: Read this aloud: Hello  there.<eoh> [MMGPT]: <sosp><🗣️0><🗣️17><eosp><eos>"
    expected = cli.model.tokenizer.encode(text)
    assert TextTokenizer.from_pretrained(folder).encode(text) == expected
    assert AutoTokenizer.from_pretrained(folder)(text)["input_ids"] == expected


def test_the_card_of_a_later_session_says_how_a_shipped_part_was_trained(tmp_path):
    from anygpt.demo.ship import record_part, write_card

    torch.save({"global_step": 4791, "callbacks": {"Timer": {"time_elapsed": {"train": 450.0}}}},
               tmp_path / "best.ckpt")
    record_part(tmp_path, "music_codec", tmp_path / "best.ckpt")
    none = tmp_path / "none.json"
    card = write_card(tmp_path / "gone", tmp_path, corpus=none, figures=none, scenes=none, melodies=none,
                      media_figures=none).read_text()
    assert "- `music_codec` (configs/demo/music_codec.yaml): 4791 steps, 7.5 min of training (shipped at commit" in card
    assert "- `lm` (configs/demo/lm.yaml): not trained" in card


def test_the_example_media_are_the_heldout_scenes_and_melodies(tmp_path):
    """write_clips' pictures and melodies, judged by the analysers that judge the demo's own output."""
    import soundfile

    from anygpt.demo.heldout import read
    from anygpt.demo.image_judge import objects
    from anygpt.demo.music_judge import judge
    from anygpt.demo.ship import write_clips

    paths = write_clips(0, tmp_path, media=1)
    assert [p.name for p in paths] == ["heldout_scene_0.png", "heldout_melody_0.flac"]
    scene, melody = read(modality="image")[0]["attributes"], read(modality="music")[0]["attributes"]
    from PIL import Image

    found = objects(Image.open(paths[0]))
    assert [(o["color"], o["shape"]) for o in found] == [(scene["color"], scene["shape"])]
    wave, rate = soundfile.read(paths[1], dtype="float32")
    heard = judge(wave, rate)
    assert rate == 16000 and (heard["key"], heard["mode"]) == (melody["key"], melody["mode"])
    assert abs(heard["tempo"] - melody["tempo"]) <= 0.1 * melody["tempo"]
