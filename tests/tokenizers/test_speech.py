"""SpeechTokenizerCodec: parity with the speechtokenizer package, lengths, voice prompts, released layout, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional as AF

from anygpt import AnyGPTError
from anygpt.decoders.soundstorm import SoundStormDecoder
from anygpt.tokenizers.speech import REAL_CONFIG, TINY_CONFIG, SpeechTokenizerCodec, _speechtokenizer_class


def speech_like(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A few gliding harmonics plus noise, different in each channel: [L, C] float32."""
    g = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    cols = []
    for c in range(channels):
        f0 = 110 + 60 * c + 30 * np.sin(2 * np.pi * 1.5 * t)
        phase = 2 * np.pi * np.cumsum(f0) / rate
        wave = sum(np.sin(k * phase) / k for k in range(1, 5)) * 0.2 + 0.02 * g.standard_normal(t.size)
        cols.append(wave * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t + c)))
    return np.stack(cols, 1).astype(np.float32)


@pytest.fixture(scope="module")
def codec():
    return SpeechTokenizerCodec.tiny()


@pytest.fixture(scope="module")
def stereo_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("speech") / "stereo_24k.wav"
    soundfile.write(path, speech_like(1.3, 24000, channels=2), 24000, subtype="FLOAT")
    return path


def reference_codes(model, wav: torch.Tensor, rate: int) -> torch.Tensor:
    """The package's own full 8-layer encode of AnyGPT's input (channel 0, sinc resample): [8, T]."""
    x = AF.resample(wav[:1], rate, 16000)
    with torch.no_grad():
        return model.encode(x.unsqueeze(0))[:, 0]


def test_encode_equals_the_package_encode_on_channel_0(codec, stereo_file):
    data, rate = soundfile.read(stereo_file, dtype="float32", always_2d=True)
    wav = torch.from_numpy(data.T.copy())
    expected = reference_codes(codec.model, wav, rate)[0]
    [got] = codec.encode([stereo_file])
    assert got.dtype == torch.long and torch.equal(got, expected)
    assert len(set(got.tolist())) > 5  # the random codebooks give varied codes
    # channel 0 is what counts: the other channel alone gives other codes
    other = reference_codes(codec.model, wav[1:], rate)[0]
    assert not torch.equal(other, expected)


def test_batch_of_mixed_lengths_equals_single_encodes(codec):
    items = [(torch.from_numpy(speech_like(s, 16000, seed=i).T.copy()), 16000) for i, s in enumerate([0.5, 0.73, 0.5])]
    batch = codec.encode(items)
    for item, codes in zip(items, batch):
        assert torch.equal(codes, codec.encode([item])[0])
    assert [c.numel() for c in batch] == [25, math.ceil(0.73 * 16000 / 320), 25]


def test_lengths_whole_frames_and_decode_without_soundstorm():
    codec = SpeechTokenizerCodec(config=dict(TINY_CONFIG), checkpoint=None, decoder=None)
    wav = torch.from_numpy(speech_like(1.1, 16000).T.copy())[:, :16001]
    [codes] = codec.encode([(wav, 16000)])
    assert codes.numel() == 51  # ceil(16001 / 320)
    [out] = codec.decode([codes])
    assert out.shape == (1, 51 * 320)
    with torch.no_grad():
        expected = codec.model.decode(codes.view(1, 1, -1))[0]  # RVQ-1 alone
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with pytest.raises(AnyGPTError, match="voice prompt needs a SoundStorm"):
        codec.decode([codes], prompts=[(wav, 16000)])


def test_decode_runs_soundstorm_then_all_8_layers(codec):
    ids = torch.randint(0, 1024, (40,), generator=torch.Generator().manual_seed(3))
    [out] = codec.decode([ids], seeds=[5], steps=2)
    full = codec.decoder.generate(ids.unsqueeze(0), steps=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(full[0, :, 0], ids)
    with torch.no_grad():
        expected = codec.model.decode(full.permute(2, 0, 1))[0]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert out.shape == (1, 40 * 320)
    again = codec.decode([ids], seeds=[5], steps=2)[0]
    assert torch.equal(out, again)  # a seed fixes SoundStorm's sampling


def test_voice_prompt_is_mixed_to_mono_resampled_and_encoded_to_8_layers(codec, stereo_file):
    data, rate = soundfile.read(stereo_file, dtype="float32", always_2d=True)
    mono = AF.resample(torch.from_numpy(data.T.copy()).mean(0, keepdim=True), rate, 16000)
    with torch.no_grad():
        expected = codec.model.encode(mono.unsqueeze(0))[:, 0].t()
    prompt = codec.encode_prompt(stereo_file)
    assert prompt.shape == (math.ceil(mono.shape[-1] / 320), 8) and torch.equal(prompt, expected)

    short = SpeechTokenizerCodec(config=dict(TINY_CONFIG), checkpoint=None, decoder=codec.decoder, prompt_seconds=0.5)
    assert short.encode_prompt(stereo_file).shape == (25, 8)

    ids = torch.randint(0, 1024, (30,), generator=torch.Generator().manual_seed(4))
    [out] = codec.decode([ids], prompts=[stereo_file], seeds=[1], steps=1)
    full = codec.decoder.generate(ids.unsqueeze(0), prompt_tokens=prompt.unsqueeze(0), steps=1)
    with torch.no_grad():
        expected_wav = codec.model.decode(full.permute(2, 0, 1))[0]
    torch.testing.assert_close(out, expected_wav, rtol=0, atol=0)
    unprompted = codec.decode([ids], seeds=[1], steps=1)[0]
    assert not torch.equal(out, unprompted)  # the prompt conditions SoundStorm


@pytest.mark.parametrize("codes, message", [
    (torch.tensor([], dtype=torch.long), "empty|0 codes"),
    (torch.tensor([3, 1024]), "1024"),
    (torch.tensor([-1, 5]), "-1"),
])
def test_bad_codes_fail_with_one_line(codec, codes, message):
    with pytest.raises(ValueError, match=message) as err:
        codec.decode([codes])
    assert "\n" not in str(err.value)


def test_bad_audio_inputs(codec, tmp_path):
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), 16000)
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(AnyGPTError, match="empty.wav"):
        codec.encode([empty])
    with pytest.raises(AnyGPTError, match="text.wav"):
        codec.encode([tmp_path / "text.wav"])
    with pytest.raises(AnyGPTError, match="not found.*missing.wav"):
        codec.encode_prompt(tmp_path / "missing.wav")


def released_folder(root, model, decoder, extra_config: dict | None = None):
    """A folder laid out like fnlp/AnyGPT-speech-modules, holding tiny weights."""
    repo = root / "fnlp" / "AnyGPT-speech-modules"
    (repo / "speechtokenizer").mkdir(parents=True)
    (repo / "soundstorm").mkdir()
    config = {**TINY_CONFIG, "codebook_dim": 512, "lambda_distill": 120, **(extra_config or {})}
    (repo / "speechtokenizer" / "config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), repo / "speechtokenizer" / "ckpt.dev")
    torch.save(decoder.state_dict(), repo / "soundstorm" / "speechtokenizer_soundstorm_mls.pt")
    return repo


def test_released_layout_loads_through_repo_references(codec, tmp_path, monkeypatch, stereo_file):
    repo = released_folder(tmp_path, codec.model, codec.decoder)
    monkeypatch.setenv("ANYGPT_WEIGHTS", str(tmp_path))
    loaded = SpeechTokenizerCodec()  # the defaults name the released files
    package = _speechtokenizer_class().load_from_checkpoint(repo / "speechtokenizer" / "config.json",
                                                            repo / "speechtokenizer" / "ckpt.dev").eval()
    data, rate = soundfile.read(stereo_file, dtype="float32", always_2d=True)
    expected = reference_codes(package, torch.from_numpy(data.T.copy()), rate)[0]
    assert torch.equal(loaded.encode([stereo_file])[0], expected)
    ids = expected[:20]
    assert torch.equal(loaded.decode([ids], seeds=[2])[0], codec.decode([ids], seeds=[2])[0])
    # from_pretrained with local paths, no SoundStorm
    plain = SpeechTokenizerCodec.from_pretrained(str(repo / "speechtokenizer" / "config.json"),
                                                 str(repo / "speechtokenizer" / "ckpt.dev"))
    assert plain.decoder is None and torch.equal(plain.encode([stereo_file])[0], expected)


def test_checkpoint_that_does_not_fit_the_config_is_one_clear_line(codec, tmp_path):
    repo = released_folder(tmp_path, codec.model, codec.decoder, extra_config={"dimension": 48})
    with pytest.raises(AnyGPTError, match="does not fit the SpeechTokenizer config") as err:
        SpeechTokenizerCodec.from_pretrained(str(repo / "speechtokenizer" / "config.json"),
                                             str(repo / "speechtokenizer" / "ckpt.dev"))
    assert "\n" not in str(err.value)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"n_filters": 4}))
    with pytest.raises(AnyGPTError, match="lacks"):
        SpeechTokenizerCodec(config=str(bad), checkpoint=None, decoder=None)
    with pytest.raises(AnyGPTError, match="ckpt.dev"):
        SpeechTokenizerCodec.from_pretrained(str(repo / "speechtokenizer" / "config.json"), str(tmp_path / "ckpt.dev"))
    with pytest.raises(AnyGPTError, match="SoundStorm predicts"):
        SpeechTokenizerCodec(config={**TINY_CONFIG, "n_q": 4}, checkpoint=None, decoder=SoundStormDecoder.tiny())


def test_full_size_layout_matches_the_released_checkpoint():
    """192 entries and 481,875,496 fp32 bytes (audio §1.3-1.4), with the old weight_norm names."""
    with torch.device("meta"):
        model = _speechtokenizer_class()(dict(REAL_CONFIG))
    state = model.state_dict()
    assert len(state) == 192
    assert sum(t.numel() for t in state.values()) * 4 == 481_875_496
    assert "encoder.model.0.conv.conv.weight_g" in state and "encoder.model.1.block.0.alpha" in state
    assert state["quantizer.vq.layers.7._codebook.embed"].shape == (1024, 1024)
    assert "encoder.model.13.lstm.weight_ih_l0_reverse" in state


def test_decoder_dtype_casts_soundstorm_only():
    codec = SpeechTokenizerCodec.tiny(decoder_dtype="bfloat16")
    assert codec.decoder.semantic_token_emb.weight.dtype == torch.bfloat16
    assert next(codec.model.parameters()).dtype == torch.float32
    [out] = codec.decode([torch.arange(0, 1000, 50)], seeds=[0], steps=1)
    assert out.dtype == torch.float32 and out.shape == (1, 20 * 320)
    with pytest.raises(AnyGPTError, match="decoder_dtype"):
        SpeechTokenizerCodec.tiny(decoder_dtype="int8")
