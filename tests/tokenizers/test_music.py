"""EncodecMusicCodec on a tiny random Encodec: parity with transformers' own path, layout, grammar, input window."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from transformers import EncodecConfig, EncodecFeatureExtractor, EncodecModel

from anygpt import AnyGPTError
from anygpt.tokenizers.vocab import VocabLayout
from anygpt.tokenizers.base import ModalityCodec
from anygpt.tokenizers.music import REAL_CONFIG, EncodecMusicCodec, flatten_codes, unflatten_codes

SR = 32000


@pytest.fixture(scope="module")
def codec():
    return EncodecMusicCodec.tiny()


def _clip(n: int, seed: int) -> np.ndarray:
    """A mono clip: two tones plus noise, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    wav = 0.4 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1375 * t) + 0.1 * rng.standard_normal(n)
    return wav.astype(np.float32)


def _reference_codes(model, clip: np.ndarray) -> torch.Tensor:
    """transformers' own path for one clip: feature extractor -> model.encode -> codes [K, T]."""
    fe = EncodecFeatureExtractor(feature_size=1, sampling_rate=SR)
    inputs = fe(raw_audio=clip, sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        out = model.encode(inputs["input_values"], inputs["padding_mask"], bandwidth=2.2)
    return out.audio_codes[0, 0]


def _loop_flatten(codes: torch.Tensor) -> list[int]:
    """AnyGPT's flatten written out: frame by frame, layer l shifted by 2048 * l."""
    flat = []
    for t in range(codes.shape[1]):
        for layer in range(codes.shape[0]):
            flat.append(int(codes[layer, t]) + 2048 * layer)
    return flat


def _loop_unflatten(flat: list[int], k: int = 4) -> torch.Tensor:
    grid = [[0] * (len(flat) // k) for _ in range(k)]
    for i, code in enumerate(flat):
        grid[i % k][i // k] = code - 2048 * (i % k)
    return torch.tensor(grid)


def test_is_a_modality_codec_with_the_real_layout(codec):
    assert isinstance(codec, ModalityCodec)
    assert (codec.modality, codec.token_prefix, codec.start_tag, codec.end_tag) == ("music", "🎶", "<somu>", "<eomu>")
    assert (codec.sample_rate, codec.frame_rate, codec.num_codebooks, codec.codebook_size) == (32000, 50, 4, 2048)
    assert codec.vocab_size == 8192 and codec.span_length is None
    assert not codec.training and not any(p.requires_grad for p in codec.parameters())


def test_encode_matches_transformers_path(codec):
    clip = _clip(SR // 2 + 123, seed=0)  # not a whole number of frames
    (codes,) = codec.encode([(torch.from_numpy(clip), SR)])
    ref = _reference_codes(codec.model, clip)
    assert ref.shape == (4, math.ceil(clip.size / 640))
    assert len(set(ref[0].tolist())) > 3, "the tiny model should give varied codes, else parity proves little"
    assert codes.dtype == torch.long
    assert codes.tolist() == _loop_flatten(ref)


def test_batch_of_different_lengths_equals_lone_encodes(codec):
    a, b = _clip(SR // 2, seed=1), _clip(SR // 3 + 7, seed=2)
    codes = codec.encode([(a, SR), (torch.from_numpy(b)[None], SR)])
    for got, clip in zip(codes, (a, b)):
        assert got.numel() == 4 * math.ceil(clip.size / 640)
        assert got.tolist() == _loop_flatten(_reference_codes(codec.model, clip))
    # Why equal lengths only: zero-padding the short clip in one batch changes its last frames.
    fe = EncodecFeatureExtractor(feature_size=1, sampling_rate=SR)
    padded = fe(raw_audio=[a, b], sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        batch = codec.model.encode(padded["input_values"], padded["padding_mask"], bandwidth=2.2).audio_codes[0, 1]
    t = math.ceil(b.size / 640)
    assert _loop_flatten(batch[:, :t]) != codes[1].tolist()


def test_equal_length_batch_equals_lone_encodes(codec):
    clips = [_clip(SR // 4, seed=s) for s in (3, 4, 5)]
    codes = codec.encode([(c, SR) for c in clips])
    for got, clip in zip(codes, clips):
        assert got.tolist() == _loop_flatten(_reference_codes(codec.model, clip))


def test_decode_length_and_values(codec):
    n = SR // 4 + 100
    (codes,) = codec.encode([(_clip(n, seed=6), SR)])
    t = math.ceil(n / 640)
    (full,) = codec.decode([codes])
    (trimmed,) = codec.decode([codes], lengths=[n])
    assert full.shape == (1, 640 * t) and trimmed.shape == (1, n)
    with torch.no_grad():
        ref = codec.model.decode(_loop_unflatten(codes.tolist())[None, None], [None]).audio_values[0]
    torch.testing.assert_close(full, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(trimmed, ref[..., :n], rtol=0, atol=1e-6)
    (kept,) = codec.decode([codes], lengths=[None])
    assert kept.shape == (1, 640 * t)


def test_decode_batch_of_different_lengths(codec):
    codes = codec.encode([(_clip(1280, seed=7), SR), (_clip(3000, seed=8), SR)])
    out = codec.decode(codes, lengths=[1280, 3000])
    assert [o.shape for o in out] == [(1, 1280), (1, 3000)]
    for o, c in zip(out, codes):
        torch.testing.assert_close(o, codec.decode([c], lengths=[o.shape[-1]])[0], rtol=0, atol=1e-6)


def test_flatten_round_trip_and_order():
    codes = torch.randint(0, 2048, (4, 13), generator=torch.Generator().manual_seed(0))
    flat = flatten_codes(codes)
    assert flat.tolist() == _loop_flatten(codes)
    assert torch.equal(unflatten_codes(flat), codes)
    with pytest.raises(ValueError):
        unflatten_codes(flat[:-1])


def test_allowed_and_can_end(codec):
    assert [codec.allowed(p) for p in range(6)] == [
        (0, 2048), (2048, 4096), (4096, 6144), (6144, 8192), (0, 2048), (2048, 4096)
    ]
    assert [codec.can_end(n) for n in (0, 1, 3, 4, 5, 8, 1000)] == [False, False, False, True, False, True, True]


def test_decode_rejects_wrong_layer_slot(codec):
    codes = flatten_codes(torch.zeros(4, 3, dtype=torch.long))
    codes[6] = 5  # slot 2 of frame 1 must hold a layer-2 code in [4096, 6144)
    with pytest.raises(ValueError, match="position 6"):
        codec.decode([codes])


def test_decode_rejects_partial_frame(codec):
    codes = flatten_codes(torch.zeros(4, 3, dtype=torch.long))[:10]
    with pytest.raises(ValueError, match="position 8"):
        codec.decode([codes])


def test_load_stereo_44k_to_mono_32k(tmp_path, codec):
    n = 22051
    rng = np.random.default_rng(9)
    data = (0.3 * rng.standard_normal((n, 2))).astype(np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, data, 44100, subtype="FLOAT")
    wav, rate = codec.load(path)
    assert rate == 32000 and wav.dtype == torch.float32
    assert wav.shape == (1, math.ceil(n * 32000 / 44100))
    per_channel = [AF.resample(torch.from_numpy(data[:, c].copy()), 44100, 32000) for c in range(2)]
    expected = (per_channel[0] + per_channel[1]) / 2
    torch.testing.assert_close(wav[0], expected, rtol=0, atol=1e-5)


def test_load_window(tmp_path, codec, monkeypatch):
    n = SR  # 1 s ramp at 32 kHz: no resampling, so values give positions
    ramp = np.arange(n, dtype=np.float32) / n
    path = tmp_path / "ramp.wav"
    sf.write(path, ramp, SR, subtype="FLOAT")
    assert codec.segment_seconds == 5.0 and codec.offset_seconds == 0.0  # AnyGPT chat's 5 s, from the start
    monkeypatch.setattr(codec, "segment_seconds", 0.25)
    monkeypatch.setattr(codec, "offset_seconds", 0.5)
    wav, _ = codec.load(path)
    assert torch.equal(wav[0], torch.from_numpy(ramp[16000:24000]))
    monkeypatch.setattr(codec, "offset_seconds", 0.0)
    wav, _ = codec.load(path.read_bytes())
    assert torch.equal(wav[0], torch.from_numpy(ramp[:8000]))
    monkeypatch.setattr(codec, "segment_seconds", None)
    wav, _ = codec.load(path)
    assert torch.equal(wav[0], torch.from_numpy(ramp))
    # The window applies to waveform items too.
    monkeypatch.setattr(codec, "segment_seconds", 0.1)
    monkeypatch.setattr(codec, "offset_seconds", 0.25)
    (codes,) = codec.encode([(torch.from_numpy(ramp), SR)])
    monkeypatch.setattr(codec, "segment_seconds", None)
    monkeypatch.setattr(codec, "offset_seconds", 0.0)
    (window,) = codec.encode([(torch.from_numpy(ramp[8000:11200]), SR)])
    assert codes.numel() == 4 * 5 and torch.equal(codes, window)


@pytest.mark.parametrize("kind", ["missing", "empty", "text"])
def test_load_bad_input(tmp_path, codec, kind):
    path = tmp_path / f"{kind}.wav"
    if kind == "empty":
        sf.write(path, np.zeros((0, 1), dtype=np.float32), SR)
    elif kind == "text":
        path.write_bytes(b"definitely not a wav file\n")
    with pytest.raises(AnyGPTError) as err:
        codec.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_random_weights_are_seeded_and_leave_global_rng_alone(codec):
    state = torch.get_rng_state()
    b, c = EncodecMusicCodec.tiny(), EncodecMusicCodec.tiny(seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = codec.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_bad_bandwidth_and_missing_weights(tmp_path):
    with pytest.raises(AnyGPTError, match="bandwidth"):
        EncodecMusicCodec.tiny(bandwidth=6.0)
    with pytest.raises(AnyGPTError, match="no-such-folder"):
        EncodecMusicCodec(source=str(tmp_path / "no-such-folder"))


def test_real_config_layout_on_meta_device():
    with torch.device("meta"):
        model = EncodecModel(EncodecConfig(**REAL_CONFIG))
    layers = model.quantizer.layers
    assert len(layers) == 4
    assert all(layer.codebook.embed.shape == (2048, 128) for layer in layers)
    assert model.quantizer.get_num_quantizers_for_bandwidth(2.2) == 4
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 56.88e6) / 56.88e6 < 0.01, params
    assert not any(name.endswith("shortcut.conv.weight_v") or "shortcut" in name for name, _ in model.named_parameters())


def test_register_gives_the_released_music_ids(codec):
    vocab = VocabLayout(32000)
    vocab.register("image", "👀", 8192, "<soim>", "<eoim>")
    vocab.register("speech", "🗣️", 1024, "<sosp>", "<eosp>")
    rng = codec.register(vocab)
    assert (rng.start, rng.stop - 1, rng.bos, rng.eos) == (41224, 49415, 49416, 49417)
    assert len(vocab) == 49418
    assert vocab.token_id("<🎶0>") == 41224 and vocab.token_id("<🎶8191>") == 49415


def test_loads_weights_from_a_local_folder(tmp_path, codec):
    codec.model.save_pretrained(tmp_path / "encodec")
    loaded = EncodecMusicCodec(source=str(tmp_path / "encodec"), segment_seconds=None)
    assert not loaded.training and loaded.bandwidth == 2.2
    item = (_clip(2000, seed=10), SR)
    assert torch.equal(loaded.encode([item])[0], codec.encode([item])[0])


def test_span_check_agrees_with_the_position_by_position_grammar(codec):
    from anygpt.tokenizers.base import _check_grammar

    k, size = codec.num_codebooks, codec.codebook_size
    generator = torch.Generator().manual_seed(0)
    good = flatten_codes(torch.randint(0, size, (k, 50), generator=generator), size)
    assert torch.equal(codec.check_codes(good), _check_grammar(codec, good))
    for position in (0, 7, len(good) - 1):
        for value in (-1, (position % k) * size - 1, (position % k + 1) * size, k * size):
            bad = good.clone()
            bad[position] = value
            if value >= 0 and (position % k) * size <= value < (position % k + 1) * size:
                continue
            with pytest.raises(ValueError) as ours:
                codec.check_codes(bad)
            with pytest.raises(ValueError) as reference:
                _check_grammar(codec, bad)
            assert str(ours.value) == str(reference.value)
