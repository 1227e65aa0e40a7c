"""Pitch of training clips, for the speech codec's harmonic branch: YIN (de Cheveigné and Kawahara, 2002) on the
GPU, one estimate per codec frame, and the loss that teaches the branch's pitch head."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def yin_pitch(audio: torch.Tensor, sample_rate: int, hop: int, f_min: float = 50.0, f_max: float = 600.0,
              window: int = 1024, threshold: float = 0.3, floor_db: float = -45.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fundamental frequency and voicing of each frame of ``audio [B, L]``.

    Frame ``t`` is the window of ``window`` samples centred on sample ``t * hop + hop / 2`` (the codec's frame
    ``t``); there are ``ceil(L / hop)`` frames. A frame is voiced when YIN's cumulative mean normalised difference
    dips below ``threshold`` at a lag within ``[sample_rate / f_max, sample_rate / f_min]`` and its energy is within
    ``floor_db`` of the clip's loudest frame; its period is the first such dip's local minimum, refined by a parabola.

    Returns:
        ``f0 [B, T]`` in Hz (the best lag's frequency, also where unvoiced) and ``voiced [B, T]`` (bool).
    """
    audio = audio.reshape(audio.shape[0], -1).float()
    frames = -(-audio.shape[-1] // hop)
    lag_min, lag_max = max(2, int(sample_rate / f_max)), int(sample_rate / f_min) + 1
    span = window + lag_max + 1
    start = hop // 2 - window // 2
    padded = F.pad(audio, (max(0, -start), span + frames * hop))
    offset = max(0, -start) + start
    x = padded[:, offset: offset + (frames - 1) * hop + span].unfold(-1, span, hop)[:, :frames]  # [B, T, span]
    n = 1 << (2 * span - 1).bit_length()
    head = torch.fft.rfft(x[..., :window], n)
    corr = torch.fft.irfft(head.conj() * torch.fft.rfft(x, n), n)[..., : lag_max + 2]  # r(lag)
    energy = torch.cumsum(F.pad(x * x, (1, 0)), -1)
    lags = torch.arange(lag_max + 2, device=audio.device)
    e_lag = energy[..., lags + window] - energy[..., lags]  # energy of x[lag: lag + window]
    diff = (e_lag[..., :1] + e_lag - 2 * corr).clamp_min(0)
    running = torch.cumsum(diff[..., 1:], -1)
    cmnd = torch.cat([torch.ones_like(diff[..., :1]), diff[..., 1:] * lags[1:] / running.clamp_min(1e-12)], -1)
    inner = cmnd[..., lag_min: lag_max + 1]
    local_min = (inner <= cmnd[..., lag_min - 1: lag_max]) & (inner <= cmnd[..., lag_min + 1: lag_max + 2])
    dips = (inner < threshold) & local_min
    found = dips.any(-1)
    best = torch.where(found, dips.float().argmax(-1), inner.argmin(-1)) + lag_min
    left, mid, right = (cmnd.gather(-1, (best + k)[..., None])[..., 0] for k in (-1, 0, 1))
    bend = left - 2 * mid + right
    shift = torch.where(bend > 1e-9, 0.5 * (left - right) / bend.clamp_min(1e-9), torch.zeros_like(bend))
    period = best.float() + shift.clamp(-1, 1)
    loudness = 10 * torch.log10(e_lag[..., 0] / window + 1e-12)
    loud = loudness > loudness.amax(-1, keepdim=True) + floor_db
    return sample_rate / period, found & loud


def pitch_loss(f0: torch.Tensor, target_f0: torch.Tensor, voiced: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean absolute log-frequency error, in octaves, over the frames ``voiced`` marks (both cut to the shorter
    length), and the share of them within a semitone. Voicing itself is left to the reconstruction losses: the
    branch's voicing only gates its amplitudes, and YIN's voicing is not ground truth."""
    n = min(f0.shape[-1], target_f0.shape[-1])
    voiced = voiced[:, :n]
    if not voiced.any():
        return f0.sum() * 0, f0.new_zeros(())
    octaves = (torch.log2(f0[:, :n][voiced]) - torch.log2(target_f0[:, :n][voiced])).abs()
    return octaves.mean(), (octaves < 1 / 12).float().mean()
