"""Losses shared by the audio codec trainers: multi-scale mel, low-band spectrum, waveform L1, SI-SNR and an
MS-STFT discriminator.

Everything takes waveforms ``[B, L]`` (or ``[B, 1, L]``) and an optional sample mask ``[B, L]`` (True where the
clip holds real audio). Padding is handled as simply as it can be: the time L1 averages over real samples only;
the mel, SI-SNR and discriminator inputs are the prediction multiplied by the mask (the target is already zero
there), so padded mel frames compare silence with silence and add nothing except at the boundary frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anygpt import AnyGPTError


def _flat(wave: torch.Tensor) -> torch.Tensor:
    return wave.reshape(wave.shape[0], -1)


def masked(wave: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``wave [B, L]`` with the padding (mask False) set to zero."""
    wave = _flat(wave)
    return wave if mask is None else wave * mask.to(wave.dtype)


def frames_valid(mask: torch.Tensor, hop: int) -> torch.Tensor:
    """Which of the ``ceil(L / hop)`` codec frames of clips ``mask [B, L]`` start on a real sample: ``[B, T]``."""
    frames = -(-mask.shape[-1] // hop)
    return torch.arange(frames, device=mask.device) * hop < mask.sum(-1, keepdim=True)


def aligned(pred: torch.Tensor, target: torch.Tensor,
            mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``pred`` and ``target`` ``[B, L]`` cut to the shorter length, with the padding (mask False) zeroed in both."""
    n = min(_flat(pred).shape[-1], _flat(target).shape[-1])
    cut = None if mask is None else mask[:, :n]
    return masked(_flat(pred)[:, :n], cut), masked(_flat(target)[:, :n], cut)


def time_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error over the real samples (both cut to the shorter length)."""
    pred, target = _flat(pred), _flat(target)
    n = min(pred.shape[-1], target.shape[-1])
    diff = (pred[:, :n] - target[:, :n]).abs()
    if mask is None:
        return diff.mean()
    weight = mask[:, :n].to(diff.dtype)
    return (diff * weight).sum() / weight.sum().clamp_min(1.0)


def si_snr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scale-invariant SNR in dB per item ``[B]`` (torchmetrics), with the padding zeroed in both."""
    from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio

    pred, target = aligned(pred, target, mask)
    return scale_invariant_signal_noise_ratio(pred.float(), target.float())


class MultiScaleMelLoss(nn.Module):
    """L1 between log mel spectrograms (``log(clamp(mel, eps))``) at several resolutions.

    Scale ``i`` uses ``n_fft / 2**i``, ``hop_length / 2**i`` and ``win_length / 2**i`` (SpeechTokenizer's recipe:
    80 mels, (1024, 240, 1024) halved three times, weights ``[45, 1, 1, 1]``). Frames are centred by reflect
    padding of ``(n_fft - hop) / 2`` on each side; magnitudes, not powers, with Slaney mel filters.

    Args:
        sample_rate: Audio rate in Hz.
        weights: One weight per scale; their number sets the number of scales.
        n_mels: Mel bands.
        n_fft: FFT size of the first scale.
        hop_length: Hop of the first scale.
        win_length: Window of the first scale.
        f_min: Lowest mel frequency.
        f_max: Highest mel frequency; None is the Nyquist frequency.
        eps: Floor of the mel magnitudes before the log.
    """

    def __init__(self, sample_rate: int = 16000, weights: Sequence[float] = (45.0, 1.0, 1.0, 1.0), n_mels: int = 80,
                 n_fft: int = 1024, hop_length: int = 240, win_length: int = 1024, f_min: float = 0.0,
                 f_max: float | None = None, eps: float = 1e-5):
        super().__init__()
        import torchaudio

        if not weights or min(n_fft, hop_length, win_length) >> (len(weights) - 1) < 1:
            raise AnyGPTError(f"mel loss: {len(weights)} scales need n_fft, hop and window >= {1 << len(weights) - 1}")
        self.weights, self.eps = [float(w) for w in weights], eps
        self.mels = nn.ModuleList()
        for i in range(len(self.weights)):
            fft, hop, win = n_fft >> i, hop_length >> i, win_length >> i
            self.mels.append(torchaudio.transforms.MelSpectrogram(
                sample_rate, n_fft=fft, win_length=win, hop_length=hop, f_min=f_min, f_max=f_max,
                n_mels=n_mels, power=1.0, center=False, norm="slaney", mel_scale="slaney"))

    def log_mel(self, wave: torch.Tensor, scale: int = 0) -> torch.Tensor:
        """``log(clamp(mel, eps))`` of ``wave [B, L]`` at one scale: ``[B, n_mels, frames]``."""
        mel = self.mels[scale]
        pad = (mel.n_fft - mel.hop_length) // 2
        wave = F.pad(_flat(wave).float().unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        with torch.autocast(wave.device.type, enabled=False):
            return torch.log(mel(wave).clamp_min(self.eps))

    def distances(self, pred: torch.Tensor, target: torch.Tensor,
                  mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Unweighted L1 of the log mels, one per scale."""
        pred, target = aligned(pred, target, mask)
        return [F.l1_loss(self.log_mel(pred, i), self.log_mel(target, i)) for i in range(len(self.weights))]

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted sum over the scales."""
        return sum(w * d for w, d in zip(self.weights, self.distances(pred, target, mask)))


class LowBandSpectrumLoss(nn.Module):
    """L1 between log magnitudes of a fine linear-frequency STFT, bins up to ``f_max`` only.

    Below 1 kHz the 80 mel bands of ``MultiScaleMelLoss`` are 15-30 Hz wide and smeared by a 1024-point window, so a
    harmonic comb at 50 Hz and one at 90 Hz look alike to it: a decoder that buzzes at its frame rate instead of the
    speaker's pitch loses little mel loss. With 2048 points at 16 kHz (7.8 Hz bins) the two combs differ bin by bin.

    Args:
        sample_rate: Audio rate in Hz.
        n_fft: FFT and Hann window size.
        hop_length: Hop between frames.
        f_max: Highest frequency compared, in Hz.
        eps: Floor of the magnitudes before the log.
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 2048, hop_length: int = 240, f_max: float = 1000.0,
                 eps: float = 1e-5):
        super().__init__()
        if not 0 < f_max <= sample_rate / 2 or n_fft < 2 or hop_length < 1:
            raise AnyGPTError(f"low-band loss: f_max must be in (0, {sample_rate / 2}] Hz, n_fft >= 2, hop >= 1")
        self.n_fft, self.hop_length, self.eps = int(n_fft), int(hop_length), eps
        self.bins = int(f_max * n_fft / sample_rate) + 1
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def log_spectrum(self, wave: torch.Tensor) -> torch.Tensor:
        """``log(clamp(|STFT|, eps))`` of ``wave [B, L]``, the bins up to ``f_max``: ``[B, bins, frames]``."""
        wave = _flat(wave).float()
        with torch.autocast(wave.device.type, enabled=False):
            spec = torch.stft(wave, self.n_fft, self.hop_length, window=self.window.float(), center=True,
                              pad_mode="reflect", return_complex=True)
            return torch.log(spec[:, : self.bins].abs().clamp_min(self.eps))

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        pred, target = aligned(pred, target, mask)
        return F.l1_loss(self.log_spectrum(pred), self.log_spectrum(target))


class STFTDiscriminator(nn.Module):
    """One Encodec-style sub-discriminator: 2-D convolutions over the real and imaginary STFT planes.

    Args:
        n_fft: FFT and window size; the hop is a quarter of it.
        filters: Channels of every convolution.
        dilations: Time dilations of the strided middle convolutions (each halves the frequency axis).
    """

    def __init__(self, n_fft: int = 1024, filters: int = 16, dilations: Sequence[int] = (1, 2, 4)):
        super().__init__()
        wn = nn.utils.parametrizations.weight_norm
        self.n_fft, self.hop = n_fft, n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        layers = [wn(nn.Conv2d(2, filters, (3, 9), padding=(1, 4)))]
        for d in dilations:
            layers.append(wn(nn.Conv2d(filters, filters, (3, 9), stride=(1, 2), dilation=(d, 1), padding=(d, 4))))
        layers.append(wn(nn.Conv2d(filters, filters, (3, 3), padding=(1, 1))))
        self.layers = nn.ModuleList(layers)
        self.post = wn(nn.Conv2d(filters, 1, (3, 3), padding=(1, 1)))

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``[B, 1, frames, bins']`` and the activations of every layer of ``wave [B, L]``."""
        with torch.autocast(wave.device.type, enabled=False):
            spec = torch.stft(_flat(wave).float(), self.n_fft, self.hop, window=self.window, normalized=True,
                              center=True, return_complex=True)
        x = torch.view_as_real(spec).permute(0, 3, 2, 1)  # [B, 2, frames, bins]
        features = []
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
            features.append(x)
        return self.post(x), features


class MultiScaleSTFTDiscriminator(nn.Module):
    """Encodec's MS-STFT discriminator: one ``STFTDiscriminator`` per FFT size.

    Args:
        n_ffts: FFT sizes (Encodec: 1024, 2048, 512, 256, 128).
        filters: Channels of each sub-discriminator (Encodec: 32; smaller trains faster).
    """

    def __init__(self, n_ffts: Sequence[int] = (1024, 2048, 512, 256, 128), filters: int = 16):
        super().__init__()
        if not n_ffts or min(n_ffts) < 8 or filters < 1:
            raise AnyGPTError(f"discriminator: need FFT sizes >= 8 and filters >= 1, got {list(n_ffts)}, {filters}")
        self.discriminators = nn.ModuleList(STFTDiscriminator(n, filters) for n in n_ffts)

    def forward(self, wave: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """Per sub-discriminator: logits, and the list of its layer activations."""
        outputs = [d(wave) for d in self.discriminators]
        return [o[0] for o in outputs], [o[1] for o in outputs]


def discriminator_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN: sum over sub-discriminators of ``mean((1 - D(x))^2) + mean(D(x_hat)^2)``."""
    return sum(((1 - r) ** 2).mean() + (f**2).mean() for r, f in zip(real, fake))


def generator_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN: sum over sub-discriminators of ``mean((1 - D(x_hat))^2)``."""
    return sum(((1 - f) ** 2).mean() for f in fake)


def feature_matching_loss(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """Sum over sub-discriminators and layers of ``mean|f(x) - f(x_hat)|`` (the real side detached)."""
    return sum((r.detach() - f).abs().mean() for rs, fs in zip(real, fake) for r, f in zip(rs, fs))
