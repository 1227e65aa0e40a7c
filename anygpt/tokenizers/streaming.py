"""Decoding a speech span while it is still being generated.

A codec whose ``decode`` turns ``T`` codes into ``hop * T`` samples (SpeechTokenizer with SoundStorm: 320 samples a
code) can be decoded window by window: each chunk of new codes is decoded together with ``context`` codes before it
(the second stage and the decoder's convolutions see what came before) and ``lookahead`` codes after it (the
decoder's receptive field reaches a few frames ahead), and only the chunk's own samples are kept. The lookahead's
samples are not thrown away: the next chunk's start cross-fades from them, so windows that drew SoundStorm's codes
differently meet without a step. A codec whose decoder runs an oscillator (the demo's harmonic branch) starts each
window's oscillator at the phase the last window reached at the chunk's first sample (``phase_pinned``), so the
cross-fade joins two sines in phase rather than cancelling them. A chunk does not end exactly at its last code's
last sample: within the first ``splice`` codes of its lookahead it ends where the waveform steps least (a splice
near a peak or trough rather than on a steep slope, as audio editors cut), so no join lands on a click.
Joined, the chunks approximate the whole-span decode; ``benchmarks/stream_speech.py`` measures how closely.
"""

from __future__ import annotations

from typing import Any

import torch


class ChunkedDecoder:
    """Feeds the codes of a growing span and returns waveform chunks as soon as enough codes follow them.

    Args:
        codec: The span's codec (``decode([codes], **options)`` -> ``[waveform [C, hop * T]]``).
        options: Keyword arguments of ``codec.decode`` (its seed, steps and voice prompt, for one span).
        chunk: Codes per emitted chunk (25: half a second of speech at 50 codes/s).
        context: Codes before a chunk that its window also decodes.
        lookahead: Codes after a chunk that must exist before it is emitted (and that its window decodes).
        splice: Codes of the lookahead (at most ``lookahead``) within which a chunk's end moves to the sample where
            the waveform steps least; 0 ends every chunk on its last code's last sample.
    """

    def __init__(self, codec: Any, options: dict | None = None, chunk: int = 25, context: int = 50,
                 lookahead: int = 4, splice: int = 1):
        if chunk < 1 or min(context, lookahead, splice) < 0:
            raise ValueError(f"chunk must be >= 1 and context, lookahead, splice >= 0, got {chunk}, {context}, "
                             f"{lookahead}, {splice}")
        self.codec, self.options = codec, dict(options or {})
        self.chunk, self.context, self.lookahead = chunk, context, lookahead
        self.splice = min(splice, lookahead, chunk)
        self.codes: list[int] = []
        self.emitted = 0
        self.overrun = 0  # samples past code `emitted`'s first sample that the last chunk already held (its splice)
        self.tail: torch.Tensor | None = None  # the last window's samples past its chunk (its lookahead)
        self.cycles: float | None = None  # the oscillator's phase that the last window reached at this chunk's start

    def push(self, code: int) -> list[torch.Tensor]:
        """Add one code; returns the chunks it completes (usually none, at most one)."""
        self.codes.append(int(code))
        out = []
        while len(self.codes) - self.emitted >= self.chunk + self.lookahead:
            out.append(self._window(self.emitted, self.emitted + self.chunk))
            self.emitted += self.chunk
        return out

    def finish(self, length: int | None = None) -> torch.Tensor | None:
        """The samples of the codes not emitted yet, up to ``length`` codes of the span (all by default); None
        if there are none."""
        end = len(self.codes) if length is None else min(length, len(self.codes))
        if end <= self.emitted:
            return None
        wav = self._window(self.emitted, end, last=True)
        self.emitted = end
        return wav if wav.shape[-1] else None

    def _window(self, start: int, end: int, last: bool = False) -> torch.Tensor:
        low, high = max(0, start - self.context), min(len(self.codes), end + self.lookahead)
        codes = [torch.tensor(self.codes[low:high], dtype=torch.long)]
        pinned = getattr(self.codec, "phase_pinned", None)
        if pinned is None:
            wav = self.codec.decode(codes, **self.options)[0]
        else:
            with pinned(start - low, self.cycles, end - low) as state:
                wav = self.codec.decode(codes, **self.options)[0]
            self.cycles = state["cycles"]
        hop = wav.shape[-1] // (high - low)
        cut = (end - low) * hop
        if not last and self.splice:
            steps = wav[..., cut - 1:cut + self.splice * hop].diff(dim=-1).abs().amax(dim=0)
            cut += int(steps.argmin())  # the chunk's last sample and the next one's first: the smallest step
        out = wav[..., (start - low) * hop + self.overrun:cut].clone()
        self.overrun = cut - (end - low) * hop
        if self.tail is not None and self.tail.shape[-1] and out.shape[-1]:
            n = min(self.tail.shape[-1], out.shape[-1])
            fade = torch.linspace(0.0, 1.0, n + 2, dtype=out.dtype)[1:-1]
            out[..., :n] = self.tail[..., :n] * (1 - fade) + out[..., :n] * fade
        self.tail = wav[..., cut:]
        return out
