"""Shared audio input: windowed reads, resampling, item normalisation, one-line errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from anygpt import AnyGPTError
from anygpt.tokenizers.audio import as_waveform, read_audio, resample


def _ramp_file(tmp_path, rate=8000, seconds=1.0, channels=1, name="ramp.wav"):
    """A float WAV whose sample i holds i / n (channel c adds c), so a window's values reveal its position."""
    n = int(rate * seconds)
    ramp = np.arange(n, dtype=np.float32) / n
    data = np.stack([ramp * (0.5 if c else 1.0) for c in range(channels)], axis=1)
    path = tmp_path / name
    sf.write(path, data, rate, subtype="FLOAT")
    return path, data


def _assert_one_line_naming(err: pytest.ExceptionInfo, name: str):
    message = str(err.value)
    assert "\n" not in message
    assert name in message, message


def test_read_audio_path_bytes_and_filelike_agree(tmp_path):
    path, data = _ramp_file(tmp_path, channels=2)
    expected = torch.from_numpy(data.T.copy())
    for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes())):
        wav, rate = read_audio(source)
        assert rate == 8000
        assert wav.dtype == torch.float32 and wav.shape == (2, 8000)
        assert torch.equal(wav, expected)


def test_read_audio_window_picks_the_right_samples(tmp_path):
    path, data = _ramp_file(tmp_path)
    wav, _ = read_audio(path, offset_seconds=0.25, duration_seconds=0.5)
    assert torch.equal(wav[0], torch.from_numpy(data[2000:6000, 0]))
    wav, _ = read_audio(path, offset_seconds=0.75)  # to the end
    assert torch.equal(wav[0], torch.from_numpy(data[6000:, 0]))
    wav, _ = read_audio(path, offset_seconds=0.9, duration_seconds=5.0)  # cut at the end
    assert torch.equal(wav[0], torch.from_numpy(data[7200:, 0]))
    wav, _ = read_audio(path, duration_seconds=0.1)  # offset 0 by default
    assert torch.equal(wav[0], torch.from_numpy(data[:800, 0]))


def test_read_audio_window_past_the_end(tmp_path):
    path, _ = _ramp_file(tmp_path)
    with pytest.raises(AnyGPTError) as err:
        read_audio(path, offset_seconds=1.5)
    _assert_one_line_naming(err, str(path))


def test_read_audio_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AnyGPTError) as err:
        read_audio(path)
    _assert_one_line_naming(err, str(path))


def test_read_audio_zero_length(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 1), dtype=np.float32), 16000)
    with pytest.raises(AnyGPTError) as err:
        read_audio(path)
    _assert_one_line_naming(err, str(path))


def test_read_audio_not_audio(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is text,\nnot audio\n")
    with pytest.raises(AnyGPTError) as err:
        read_audio(path)
    _assert_one_line_naming(err, str(path))
    with pytest.raises(AnyGPTError) as err:
        read_audio(b"this is text, not audio")
    _assert_one_line_naming(err, "bytes")


def test_read_audio_folder(tmp_path):
    with pytest.raises(AnyGPTError) as err:
        read_audio(tmp_path)
    _assert_one_line_naming(err, str(tmp_path))


def test_resample_is_torchaudio_sinc_and_identity_when_equal():
    wav = torch.randn(2, 4410, generator=torch.Generator().manual_seed(0))
    assert resample(wav, 16000, 16000) is wav
    out = resample(wav, 44100, 32000)
    assert out.shape == (2, 3200)
    assert torch.equal(out, AF.resample(wav, 44100, 32000))


def test_as_waveform_tuples():
    mono = np.linspace(-1, 1, 100, dtype=np.float64)
    wav, rate = as_waveform((mono, 16000))
    assert rate == 16000 and wav.shape == (1, 100) and wav.dtype == torch.float32
    assert torch.allclose(wav[0], torch.from_numpy(mono).float())
    stereo = torch.randn(2, 50)
    wav, _ = as_waveform((stereo, 8000))
    assert torch.equal(wav, stereo)
    pcm = np.array([-32768, 0, 16384], dtype=np.int16)
    wav, _ = as_waveform((pcm, 8000))
    assert wav.tolist() == [[-1.0, 0.0, 0.5]]
    wav, _ = as_waveform((torch.arange(100.0), 100), offset_seconds=0.25, duration_seconds=0.5)
    assert wav[0].tolist() == list(map(float, range(25, 75)))


def test_as_waveform_reads_files(tmp_path):
    path, data = _ramp_file(tmp_path)
    wav, rate = as_waveform(path, offset_seconds=0.5)
    assert rate == 8000 and torch.equal(wav[0], torch.from_numpy(data[4000:, 0]))


@pytest.mark.parametrize(
    "item",
    [
        (torch.zeros(1, 2, 100), 16000),  # 3-D
        (torch.zeros(0), 16000),  # empty
        (torch.zeros(2, 0), 16000),  # empty channels
        (torch.zeros(100), 0),  # bad rate
        (torch.zeros(100), 16000, 1),  # three values
    ],
)
def test_as_waveform_rejects_bad_items(item):
    with pytest.raises(AnyGPTError) as err:
        as_waveform(item)
    assert "\n" not in str(err.value)


def test_as_waveform_window_past_the_end():
    with pytest.raises(AnyGPTError):
        as_waveform((torch.zeros(100), 100), offset_seconds=2.0)


def test_non_finite_audio_is_refused_in_one_line(tmp_path):
    import numpy as np
    import soundfile

    from anygpt import AnyGPTError
    from anygpt.tokenizers.audio import as_waveform

    wave = np.zeros(1600, dtype=np.float32)
    wave[100] = np.nan
    soundfile.write(tmp_path / "nan.wav", wave, 16000, subtype="FLOAT")
    with pytest.raises(AnyGPTError, match="nan.wav holds non-finite samples"):
        as_waveform(str(tmp_path / "nan.wav"))
    with pytest.raises(AnyGPTError, match="waveform holds non-finite samples"):
        as_waveform((np.full(800, np.inf, dtype=np.float32), 16000))


def test_non_finite_float_image_is_refused(tmp_path):
    import numpy as np
    from PIL import Image

    from anygpt import AnyGPTError
    from anygpt.tokenizers.image import _to_rgb

    pixels = np.zeros((8, 8), dtype=np.float32)
    pixels[2, 3] = np.nan
    with pytest.raises(AnyGPTError, match="holds non-finite pixels"):
        _to_rgb(Image.fromarray(pixels, mode="F"), "x.tif")
