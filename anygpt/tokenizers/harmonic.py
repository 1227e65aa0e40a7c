"""A harmonic branch for a SEANet decoder: the voice's (or instrument's) pitch as sinusoids, not frame-locked buzz.

A SEANet decoder turns 50 Hz latents into a waveform with transposed convolutions, so whatever it renders that is
not in the latents' phase repeats once per frame: a small decoder that has not learnt to carry the glottal phase
through the latents speaks every voice at 50 Hz (its frame rate) and loses who is speaking. ``HarmonicDecoder``
adds the part a source-filter vocoder would: from the decoder's own frame features (after its LSTM) it predicts
each frame's fundamental frequency, voicing and harmonic amplitudes, and sums sinusoids at multiples of a phase
that runs at the sample rate; the SEANet path keeps the rest (noise, bursts, detail). The codec's training teaches
the pitch head from the clips' own pitch (``anygpt.training.pitch``), so the codes learn to carry it. The demo's
speech codec (SpeechTokenizer's decoder) and music codec (Encodec's, the same SEANet layout) both use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class HarmonicDecoder(nn.Module):
    """A SEANet decoder plus sinusoids at the pitch and amplitudes it predicts per frame.

    Args:
        seanet: A SEANet decoder: SpeechTokenizer's ``SEANetDecoder`` (layers in ``.model``) or transformers'
            ``EncodecDecoder`` (in ``.layers``); its first three layers (conv, LSTM, activation) give the frame
            features the harmonic heads read, its other layers render the waveform as before.
        sample_rate: Output rate in Hz.
        harmonics: Number of harmonics of the fundamental (those at or above Nyquist are silent).
        f_min: Lowest fundamental the head can predict, in Hz.
        f_max: Highest fundamental, in Hz.
    """

    def __init__(self, seanet: nn.Module, sample_rate: int, harmonics: int = 64, f_min: float = 40.0,
                 f_max: float = 800.0):
        super().__init__()
        self.seanet, self.sample_rate = seanet, int(sample_rate)
        self.harmonics, self.f_min, self.f_max = int(harmonics), float(f_min), float(f_max)
        channels = _features_channels(seanet)
        self.head = nn.Conv1d(channels, 2 + self.harmonics, kernel_size=3, padding=1)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():  # start quiet and unvoiced, at a middle pitch
            self.head.bias.zero_()
            self.head.bias[1] = -2.0
            self.head.bias[2:] = -4.0
        self._pin: dict | None = None

    @contextmanager
    def phase_pinned(self, anchor: int, cycles: float | None, probe: int) -> Iterator[dict]:
        """Decode windows of one utterance in phase: inside, the oscillator is shifted so that its phase at the
        first sample of frame ``anchor`` is ``cycles`` (in turns; None: not shifted), and the phase it reaches at
        frame ``probe`` is put in the yielded dict under ``"cycles"`` (the next window's ``cycles``). One utterance
        at a time: every item of a batch gets the first item's shift."""
        self._pin = {"anchor": int(anchor), "target": cycles, "probe": int(probe), "cycles": None}
        try:
            yield self._pin
        finally:
            self._pin = None

    def features(self, latents: torch.Tensor) -> torch.Tensor:
        """Frame features ``[B, C, T]`` after the decoder's input conv, LSTM and activation."""
        for layer in _layers(self.seanet)[:3]:
            latents = layer(latents)
        return latents

    def frequency(self, logit: torch.Tensor) -> torch.Tensor:
        """Hz of a pitch logit: ``f_min`` to ``f_max``, even on a log scale."""
        return self.f_min * torch.exp(torch.sigmoid(logit) * math.log(self.f_max / self.f_min))

    def pitch(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per frame: fundamental in Hz ``[B, T]``, voicing logit ``[B, T]``, harmonic amplitudes ``[B, K, T]``."""
        out = self.head(features)
        f0 = self.frequency(out[:, 0])
        amplitudes = F.softplus(out[:, 2:]) * torch.sigmoid(out[:, 1:2])
        return f0, out[:, 1], amplitudes

    def synthesize(self, f0: torch.Tensor, amplitudes: torch.Tensor, length: int) -> torch.Tensor:
        """Sinusoids ``[B, 1, length]``: frame values interpolated to the sample rate, phase accumulated from f0."""
        hop = length // max(1, f0.shape[-1])
        f0 = F.interpolate(f0[:, None], size=length, mode="linear", align_corners=False)[:, 0]  # [B, L]
        amplitudes = F.interpolate(amplitudes, size=length, mode="linear", align_corners=False)  # [B, K, L]
        cycles = torch.cumsum(f0.double() / self.sample_rate, dim=-1)
        if self._pin is not None:
            cycles = self._pinned(cycles, hop)
        phase = (2 * math.pi * (cycles - torch.floor(cycles))).to(f0.dtype)  # [B, L], wrapped in float64
        orders = torch.arange(1, self.harmonics + 1, device=f0.device, dtype=f0.dtype)[None, :, None]
        audible = (orders * f0[:, None] < self.sample_rate / 2).to(f0.dtype)
        return (amplitudes * audible * torch.sin(orders * phase[:, None])).sum(1, keepdim=True)

    def _pinned(self, cycles: torch.Tensor, hop: int) -> torch.Tensor:
        pin, last = self._pin, cycles.shape[-1] - 1
        if pin["target"] is not None:
            at = min(pin["anchor"] * hop, last)
            cycles = cycles + (pin["target"] - cycles[:1, at:at + 1])
        at = min(pin["probe"] * hop, last)
        pin["cycles"] = float(cycles[0, at] - torch.floor(cycles[0, at]))
        return cycles

    def forward(self, latents: torch.Tensor, with_pitch: bool = False):
        """Waveform ``[B, 1, L]`` of latents ``[B, D, T]`` (L: T times the decoder's hop); with ``with_pitch`` also
        ``(f0, voicing logit)``."""
        features = self.features(latents)
        wave = features
        for layer in _layers(self.seanet)[3:]:
            wave = layer(wave)
        f0, voicing, amplitudes = self.pitch(features)
        # the oscillator's phase sums f0 over the whole clip, so its gradient is chaotic: the pitch head learns from
        # the pitch loss alone, the amplitudes and voicing from the waveform losses
        wave = wave + self.synthesize(f0.detach(), amplitudes, wave.shape[-1])
        return (wave, f0, voicing) if with_pitch else wave


def _layers(seanet: nn.Module) -> nn.ModuleList | nn.Sequential:
    return seanet.model if hasattr(seanet, "model") else seanet.layers


def _features_channels(seanet: nn.Module) -> int:
    """Channels out of the decoder's LSTM block (the first transposed convolution's input)."""
    for layer in _layers(seanet)[3:]:
        for module in layer.modules():
            if isinstance(module, nn.ConvTranspose1d):
                return module.in_channels
    raise ValueError("the SEANet decoder has no transposed convolution after its LSTM")
