"""Audio input shared by the audio codecs: read a window of a file, resample, normalise an item to [C, L]."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anygpt import AnyGPTError
from anygpt.messages import describe_source, one_line


def read_audio(
    source: str | os.PathLike | bytes | Any, offset_seconds: float = 0.0, duration_seconds: float | None = None
) -> tuple[torch.Tensor, int]:
    """Read the window ``[offset, offset + duration)`` of an audio file without loading the rest.

    Args:
        source: A path, the bytes of an audio file, or a binary file-like object.
        offset_seconds: Start of the window, in seconds from the start of the file.
        duration_seconds: Length of the window in seconds; None reads to the end. A window running past the end is
            cut at the end.

    Returns:
        A float32 tensor ``[C, L]`` in [-1, 1] and the file's sample rate.

    Raises:
        AnyGPTError: Missing file, not an audio file, no samples, non-finite samples, or a window that starts past
            the end; one line naming the source.
    """
    import soundfile as sf

    name = describe_source(source, "audio")
    if offset_seconds < 0:
        raise AnyGPTError(f"audio offset must be >= 0 seconds, got {offset_seconds} for {name}")
    if duration_seconds is not None and duration_seconds <= 0:
        raise AnyGPTError(f"audio duration must be > 0 seconds, got {duration_seconds} for {name}")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.exists():
            raise AnyGPTError(f"audio file not found: {name}")
        if path.is_dir():
            raise AnyGPTError(f"expected an audio file, got a folder: {name}")
        source = str(path)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        with sf.SoundFile(source) as f:
            rate, total = f.samplerate, f.frames
            if total <= 0:
                raise AnyGPTError(f"audio file {name} holds no samples")
            start = int(round(offset_seconds * rate))
            if start >= total:
                raise AnyGPTError(
                    f"audio window starts at {offset_seconds:g} s, past the end of {name} ({total / rate:g} s)"
                )
            count = total - start if duration_seconds is None else min(int(round(duration_seconds * rate)), total - start)
            if count <= 0:
                raise AnyGPTError(f"audio window of {duration_seconds:g} s in {name} holds no samples")
            if start:
                f.seek(start)
            data = f.read(count, dtype="float32", always_2d=True)
    except AnyGPTError:
        raise
    except Exception as err:  # libsndfile: unknown format, truncated or corrupt file
        raise AnyGPTError(f"cannot read audio from {name}: {one_line(err)}") from err
    if data.shape[0] == 0:
        raise AnyGPTError(f"audio file {name} holds no samples")
    if not np.isfinite(data).all():
        raise AnyGPTError(f"audio file {name} holds non-finite samples (NaN or infinity)")
    return torch.from_numpy(np.ascontiguousarray(data.T)), rate


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample ``[..., L]`` with torchaudio's sinc interpolation at its defaults (as the original); identity if equal."""
    if int(orig_sr) == int(new_sr):
        return wav
    import torchaudio.functional as AF

    return AF.resample(wav, int(orig_sr), int(new_sr))


def as_waveform(
    item: Any, offset_seconds: float = 0.0, duration_seconds: float | None = None
) -> tuple[torch.Tensor, int]:
    """Any audio item as ``(float32 tensor [C, L], sample_rate)``, cut to a window.

    Args:
        item: A path, file bytes or file-like (read with ``read_audio``), or a ``(waveform, sample_rate)`` tuple
            whose waveform is ``[L]`` or ``[C, L]``, numpy or torch; integer PCM is scaled to [-1, 1].
        offset_seconds: Start of the window in seconds.
        duration_seconds: Length of the window in seconds; None keeps the rest.

    Raises:
        AnyGPTError: Unreadable file, bad shape, empty or non-finite waveform, or empty window.
    """
    if not isinstance(item, (tuple, list)):
        return read_audio(item, offset_seconds, duration_seconds)
    if len(item) != 2:
        raise AnyGPTError(f"an audio item must be a path, bytes or a (waveform, sample_rate) pair, got {len(item)} values")
    wav, rate = item
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise AnyGPTError(f"sample rate must be a positive integer, got {rate!r}")
    wav = torch.as_tensor(np.asarray(wav) if not isinstance(wav, torch.Tensor) else wav).detach().cpu()
    if not (wav.is_floating_point() or wav.dtype in (torch.int16, torch.int32)):
        raise AnyGPTError(f"waveform must be float (or int16/int32 PCM), got {wav.dtype}")
    if not wav.is_floating_point():
        wav = wav.float() / (32768.0 if wav.dtype == torch.int16 else 2147483648.0)
    if wav.dim() == 1:
        wav = wav.unsqueeze(0)
    if wav.dim() != 2:
        raise AnyGPTError(f"waveform must be [L] or [channels, L], got shape {list(wav.shape)}")
    if wav.shape[0] == 0 or wav.shape[1] == 0:
        raise AnyGPTError(f"waveform is empty (shape {list(wav.shape)})")
    if not torch.isfinite(wav).all():
        raise AnyGPTError("waveform holds non-finite samples (NaN or infinity)")
    rate = int(rate)
    if offset_seconds < 0 or (duration_seconds is not None and duration_seconds <= 0):
        raise AnyGPTError(f"bad audio window: offset {offset_seconds} s, duration {duration_seconds} s")
    start = int(round(offset_seconds * rate))
    stop = wav.shape[1] if duration_seconds is None else start + int(round(duration_seconds * rate))
    wav = wav[:, start:stop]
    if wav.shape[1] == 0:
        raise AnyGPTError(f"audio window at {offset_seconds:g} s holds no samples")
    return wav.to(torch.float32).contiguous(), rate


def fit_random_codebooks(codebooks: list[torch.Tensor], residual: torch.Tensor) -> None:
    """Give random-weight residual quantizers usable codebooks, in place (their libraries start them at zero).

    Each codebook ``[K, D]`` is drawn from a Gaussian fitted to the residual ``[M, D]`` that the codebooks before
    it leave, so random models still produce varied codes. Uses the global RNG (callers fork and seed it).
    """
    with torch.no_grad():
        for embed in codebooks:
            drawn = residual.mean(0) + residual.std(0) * torch.randn_like(embed)
            embed.copy_(drawn)
            residual = residual - drawn[torch.cdist(residual, drawn).argmin(1)]


def probe_noise(channels: int, sample_rate: int) -> torch.Tensor:
    """One second of Gaussian noise at four loudness levels ``[4, channels, sample_rate]``: encoder input for
    ``fit_random_codebooks``."""
    amplitudes = torch.tensor([0.03, 0.1, 0.3, 1.0]).view(-1, 1, 1)
    return torch.randn(4, channels, sample_rate) * amplitudes
