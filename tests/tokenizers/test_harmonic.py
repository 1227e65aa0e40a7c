"""The speech codec's harmonic branch: sinusoids at the predicted pitch, silent above Nyquist, built from config."""

from __future__ import annotations

import math

import torch

from anygpt.tokenizers.harmonic import HarmonicDecoder
from anygpt.tokenizers.speech import TINY_CONFIG, SpeechTokenizerCodec


def tiny_harmonic(harmonics: int = 8) -> HarmonicDecoder:
    model = SpeechTokenizerCodec(config={**TINY_CONFIG, "harmonics": harmonics}, checkpoint=None, decoder=None).model
    assert isinstance(model.decoder, HarmonicDecoder)
    return model.decoder


def peak_hz(wave: torch.Tensor, rate: int = 16000) -> float:
    spectrum = torch.fft.rfft(wave.double() * torch.hann_window(len(wave), dtype=torch.float64)).abs()
    return float(spectrum.argmax()) * rate / len(wave)


def test_the_oscillator_sings_at_the_frame_pitch_and_its_harmonics():
    decoder = tiny_harmonic(harmonics=3)
    frames, length = 50, 16000
    f0 = torch.full((1, frames), 200.0)
    amplitudes = torch.zeros(1, 3, frames)
    amplitudes[0, 0] = 1.0
    fundamental = decoder.synthesize(f0, amplitudes, length)[0, 0]
    assert abs(peak_hz(fundamental) - 200.0) <= 1.0
    sine = torch.sin(2 * math.pi * 200.0 * torch.arange(1, 201).double() / 16000)
    assert torch.allclose(fundamental[:200].double(), sine, atol=1e-3)  # the phase starts at the first sample's pitch
    amplitudes = torch.zeros(1, 3, frames)
    amplitudes[0, 2] = 1.0
    assert abs(peak_hz(decoder.synthesize(f0, amplitudes, length)[0, 0]) - 600.0) <= 1.0
    # the third harmonic of 3 kHz would be 9 kHz, above Nyquist: silent, the others are not
    high = decoder.synthesize(torch.full((1, frames), 3000.0), torch.ones(1, 3, frames), length)[0, 0]
    assert abs(peak_hz(high) - 3000.0) <= 1.0 or abs(peak_hz(high) - 6000.0) <= 1.0
    spectrum = torch.fft.rfft(high.double()).abs()
    assert spectrum[int(7000 * length / 16000):].max() < 1e-3 * spectrum.max()


def test_a_gliding_pitch_keeps_a_continuous_phase():
    decoder = tiny_harmonic(harmonics=1)
    f0 = torch.linspace(100.0, 300.0, 100)[None]
    wave = decoder.synthesize(f0, torch.ones(1, 1, 100), 32000)[0, 0]
    assert wave.abs().max() <= 1.0 + 1e-5
    assert (wave[1:] - wave[:-1]).abs().max() < 2 * math.pi * 300 / 16000 * 1.01  # no jumps: slope of the sine


def test_the_branch_starts_quiet_and_keeps_the_decoder_shape():
    decoder = tiny_harmonic()
    latents = torch.randn(2, TINY_CONFIG["dimension"], 10)
    wave, f0, voicing = decoder(latents, with_pitch=True)
    assert wave.shape == (2, 1, 3200) and f0.shape == voicing.shape == (2, 10)
    assert torch.all((f0 >= decoder.f_min) & (f0 <= decoder.f_max))
    harmonic = decoder.synthesize(*decoder.pitch(decoder.features(latents))[::2], 3200)
    assert harmonic.abs().max() < 0.05 * decoder.harmonics
    assert torch.equal(decoder(latents), wave)


def test_a_pinned_window_continues_the_phase_of_the_window_before():
    decoder, hop = tiny_harmonic(harmonics=2), 320
    f0 = torch.linspace(110.0, 190.0, 20)[None]
    amplitudes = torch.ones(1, 2, 20)
    whole = decoder.synthesize(f0, amplitudes, 20 * hop)[0, 0]
    with decoder.phase_pinned(anchor=0, cycles=None, probe=8) as first:
        decoder.synthesize(f0[:, :12], amplitudes[..., :12], 12 * hop)
    with decoder.phase_pinned(anchor=4, cycles=first["cycles"], probe=12):
        later = decoder.synthesize(f0[:, 4:], amplitudes[..., 4:], 16 * hop)[0, 0]
    # frames 8-15 of the whole clip are frames 4-11 of the later window (its own edge frames interpolate differently)
    assert torch.allclose(later[4 * hop:12 * hop], whole[8 * hop:16 * hop], atol=1e-3)
    unpinned = decoder.synthesize(f0[:, 4:], amplitudes[..., 4:], 16 * hop)[0, 0]
    assert (unpinned[4 * hop:12 * hop] - whole[8 * hop:16 * hop]).abs().max() > 0.5
    assert decoder._pin is None  # the pin ends with its block
