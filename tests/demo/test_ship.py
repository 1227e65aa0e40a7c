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

    card = write_card(tmp_path / "runs", tmp_path, corpus=tmp_path / "none.json", figures=tmp_path / "none.json",
                      notes=["the codec saw the first 20000 utterances"]).read_text()
    assert "- `lm` (configs/demo/lm.yaml): not trained" in card
    assert "## Notes\n\n- the codec saw the first 20000 utterances" in card
    assert "## Corpus" not in card
