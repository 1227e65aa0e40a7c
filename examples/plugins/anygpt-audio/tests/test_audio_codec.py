"""EncodecAudioCodec against transformers' EncodecModel used directly, the original's audio layout and ids, loading
saved weights, and the one-line errors for bad inputs."""

from __future__ import annotations

import io

import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from transformers import EncodecConfig, EncodecModel

from anygpt import AnyGPTError
from anygpt.tokenizers import registry
from anygpt.tokenizers.base import instantiate
from anygpt.tokenizers.vocab import VocabLayout
from anygpt_audio import REAL_CONFIG, EncodecAudioCodec


@pytest.fixture(scope="module")
def codec():
    return EncodecAudioCodec.tiny()


@pytest.fixture(scope="module")
def saved(codec, tmp_path_factory):
    """The tiny codec's weights as a transformers folder, laid out like a local mirror of the Hub id."""
    mirror = tmp_path_factory.mktemp("weights")
    codec.model.save_pretrained(mirror / "facebook" / "encodec_24khz")
    return mirror


@pytest.fixture(scope="module")
def reference(saved):
    """An independent EncodecModel read back by transformers itself."""
    return EncodecModel.from_pretrained(saved / "facebook" / "encodec_24khz").eval()


def hand_flatten(grid: torch.Tensor) -> list[int]:
    """[4, T] codes in the original's order: frame by frame, layer l shifted by 1024 * l."""
    return [int(grid[layer, t]) + 1024 * layer for t in range(grid.shape[1]) for layer in range(grid.shape[0])]


def noise(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.2 * torch.randn(channels, int(seconds * rate), generator=gen)


def test_the_plugin_is_registered_under_audio():
    assert registry.codec_class("audio") is EncodecAudioCodec
    assert "anygpt_audio:EncodecAudioCodec" in registry.describe()


def test_real_config_is_the_24khz_model_at_4_codebooks(codec):
    defaults = EncodecConfig()  # transformers documents its defaults as facebook/encodec_24khz
    for key, value in REAL_CONFIG.items():
        expected = getattr(defaults, key)
        assert (list(expected) if isinstance(expected, tuple) else expected) == value, key
    assert (codec.sample_rate, codec.hop_length, codec.frame_rate) == (24000, 320, 75)
    # 10 bits per code at 75 frames/s: 750 bit/s per codebook; 3 kbps is 4 codebooks, HF's default 1.5 only 2.
    assert codec.model.quantizer.get_num_quantizers_for_bandwidth(3.0) == 4 == codec.num_codebooks
    assert codec.model.quantizer.get_num_quantizers_for_bandwidth(1.5) == 2
    assert (codec.vocab_size, codec.codebook_size, codec.bandwidth) == (4096, 1024, 3.0)


def test_audio_block_lands_after_the_released_vocabulary(codec):
    layout = VocabLayout(32000)
    for spec in [("image", "👀", 8192, "<soim>", "<eoim>"), ("speech", "🗣️", 1024, "<sosp>", "<eosp>"),
                 ("music", "🎶", 8192, "<somu>", "<eomu>")]:
        layout.register(*spec)
    audio = codec.register(layout)
    assert (audio.start, audio.size, audio.bos, audio.eos) == (49418, 4096, 53514, 53515)
    assert layout.string_from_ids([53514, 49418 + 5, 49418 + 1024 + 7, 53515]) == "<soau><👂5><👂1031><eoau>"


def test_codes_and_audio_equal_transformers_encodec(codec, reference):
    wav = noise(0.6, 16000, channels=2)  # 16 kHz stereo: resampled to 24 kHz, then mixed
    mono = AF.resample(wav, 16000, 24000).mean(0, keepdim=True)
    with torch.no_grad():
        grid = reference.encode(mono[None], bandwidth=3.0).audio_codes[0, 0]
        expected_audio = reference.decode(grid[None, None], [None]).audio_values[0]
    assert grid.shape == (4, 45)  # ceil(14400 / 320) frames
    codes = codec.encode([(wav, 16000)])[0]
    assert codes.dtype == torch.long and codes.tolist() == hand_flatten(grid)
    audio = codec.decode([codes])[0]
    assert audio.shape == (1, 45 * 320) and audio.dtype == torch.float32
    torch.testing.assert_close(audio, expected_audio, atol=1e-5, rtol=0)


def test_every_slot_holds_a_code_of_its_layer_and_windows_are_5_seconds(codec):
    long = noise(7.0, 24000, seed=1)
    short = noise(1.0, 24000, seed=2)
    codes = codec.encode([(long, 24000), (short, 24000), (long[0], 24000)])
    assert [c.numel() for c in codes] == [5 * 75 * 4, 75 * 4, 5 * 75 * 4]
    assert torch.equal(codes[0], codes[2])  # [L] and [1, L] are the same audio
    for flat in codes:
        frames = flat.view(-1, 4)
        for layer in range(4):
            assert frames[:, layer].min() >= 1024 * layer and frames[:, layer].max() < 1024 * (layer + 1)
        assert codec.allowed(5) == (1024, 2048) and codec.allowed(3) == (3072, 4096)
    assert frames.unique().numel() > 16  # random codebooks still give varied codes
    later = EncodecAudioCodec.tiny(offset_seconds=2.0)
    assert torch.equal(later.encode([(long, 24000)])[0], codec.encode([(long[:, 48000:], 24000)])[0])


def test_flatten_and_unflatten_are_inverse(codec, reference):
    grid = torch.randint(0, 1024, (4, 6), generator=torch.Generator().manual_seed(3))
    flat = torch.tensor(hand_flatten(grid))
    with torch.no_grad():
        expected = reference.decode(grid[None, None], [None]).audio_values[0]
    torch.testing.assert_close(codec.decode([flat])[0], expected, atol=1e-5, rtol=0)
    assert codec.check_codes(flat).tolist() == flat.tolist()


def test_files_bytes_and_pairs_give_the_same_codes(codec, tmp_path):
    wav = noise(0.5, 24000, seed=4)
    path = tmp_path / "clip.wav"
    sf.write(path, wav[0].numpy(), 24000, subtype="FLOAT")
    data = path.read_bytes()
    by_path, by_bytes, by_file, by_pair = codec.encode([str(path), data, io.BytesIO(data), (wav, 24000)])
    assert torch.equal(by_path, by_pair) and torch.equal(by_bytes, by_pair) and torch.equal(by_file, by_pair)
    loaded, rate = codec.load(str(path))
    assert rate == 24000 and loaded.shape == (1, 12000)


def test_saved_weights_load_by_path_and_by_hub_id(codec, saved, monkeypatch):
    sound = [(noise(0.4, 24000, seed=5), 24000)]
    expected = codec.encode(sound)[0]
    by_path = EncodecAudioCodec(source=str(saved / "facebook" / "encodec_24khz"))
    monkeypatch.setenv("ANYGPT_WEIGHTS", str(saved))  # the Hub id resolves to the local mirror, offline
    by_id = EncodecAudioCodec.from_pretrained()
    by_name = instantiate("audio")  # the registered name with its defaults: facebook/encodec_24khz
    for loaded in (by_path, by_id, by_name):
        assert loaded.model.config.sampling_rate == 24000 and loaded.num_codebooks == 4
        assert torch.equal(loaded.encode(sound)[0], expected)
    state, original = by_id.model.state_dict(), codec.model.state_dict()
    assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in state)


@pytest.mark.parametrize("item, words", [
    (42, ["audio item 0", "got int"]),
    ("/no/such/sound.wav", ["/no/such/sound.wav", "not found"]),
    ((torch.zeros(2, 3, 4), 24000), ["audio item 0", "shape [2, 3, 4]"]),
    ((torch.zeros(1, 0), 24000), ["audio item 0", "empty"]),
    ((torch.full((100,), float("nan")), 24000), ["audio item 0", "non-finite"]),
    ((torch.zeros(100), 0), ["audio item 0", "sample rate", "got 0"]),
    (b"not a wav file", ["cannot read audio", "<audio bytes, 14 bytes>"]),
])
def test_bad_inputs_are_one_line_errors_naming_them(codec, item, words):
    with pytest.raises(AnyGPTError) as error:
        codec.encode([item])
    message = str(error.value)
    assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize("codes, words", [
    (torch.tensor([1, 1025, 2050]), ["audio codes 0", "whole frames of 4", "got 3"]),
    (torch.tensor([1, 1, 2050, 3075]), ["audio codes 0", "position 1", "[1024, 2048)"]),
    (torch.tensor([1.0, 1025.0, 2050.0, 3075.0]), ["audio codes 0", "integers"]),
    (torch.tensor([], dtype=torch.long), ["audio codes 0", "got 0"]),
])
def test_bad_codes_are_one_line_errors(codec, codes, words):
    with pytest.raises(AnyGPTError) as error:
        codec.decode([torch.tensor([0, 1024, 2048, 3072]), codes])
    message = str(error.value).replace("audio codes 1", "audio codes 0")
    assert "\n" not in message and all(w in message for w in words), message


def test_bad_sources_are_one_line_errors(tmp_path):
    for kwargs, words in [({"source": str(tmp_path / "missing")}, ["missing"]),
                          ({"source": str(tmp_path)}, ["EncodecAudioCodec", str(tmp_path)]),
                          ({"source": None}, ["needs weights"]),
                          ({"config": {}, "bandwidth": 2.0}, ["bandwidth 2.0"])]:
        with pytest.raises(AnyGPTError) as error:
            EncodecAudioCodec(**kwargs)
        assert "\n" not in str(error.value) and all(w in str(error.value) for w in words), (kwargs, error.value)
