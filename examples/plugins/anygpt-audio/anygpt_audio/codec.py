"""General audio (sound effects) as Encodec 24 kHz codes: the modality the original meant to have (pipeline §2.4).

AnyGPT loaded ``facebook/encodec_24khz`` but never wired it up: its ``audio`` entry (prefix ``👂``, ``<soau>`` /
``<eoau>``, 4 x 1024 codes, 5-s windows) was commented out, and transformers' default bandwidth (1.5 kbps) would
have given 2 codebooks, not 4. Here the model encodes at 3 kbps, which is 4 codebooks of 1024 codes at 75 frames
per second, flattened frame by frame like music: 300 LM tokens per second, 1500 per 5-s window.

The network is the one ``EncodecMusicCodec`` drives (transformers' ``EncodecModel``); this class only changes the
checkpoint, the layout and the token strings, so the same code path reads HF folders, repo ids and the ``.ckpt``
files of ``anygpt fit`` with ``anygpt.training.music_codec.EncodecTrainer``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from anygpt import AnyGPTError
from anygpt.messages import one_line
from anygpt.tokenizers.audio import as_waveform
from anygpt.tokenizers.music import EncodecMusicCodec

#: ``facebook/encodec_24khz``'s ``config.json`` (transformers' ``EncodecConfig`` defaults are this model too).
REAL_CONFIG: dict[str, Any] = {
    "sampling_rate": 24000,
    "audio_channels": 1,
    "upsampling_ratios": [8, 5, 4, 2],
    "codebook_size": 1024,
    "codebook_dim": 128,
    "hidden_size": 128,
    "num_filters": 32,
    "num_lstm_layers": 2,
    "num_residual_layers": 1,
    "kernel_size": 7,
    "last_kernel_size": 7,
    "residual_kernel_size": 3,
    "dilation_growth_rate": 2,
    "compress": 2,
    "pad_mode": "reflect",
    "trim_right_ratio": 1.0,
    "norm_type": "weight_norm",
    "normalize": False,
    "chunk_length_s": None,
    "overlap": None,
    "use_causal_conv": True,
    "use_conv_shortcut": True,
    "target_bandwidths": [1.5, 3.0, 6.0, 12.0, 24.0],
}

#: The real layout (24 kHz, hop 320, 4 x 1024 codes at 3 kbps) with narrow layers: random weights, fast on CPU.
TINY_CONFIG: dict[str, Any] = {**REAL_CONFIG, "num_filters": 4, "hidden_size": 16, "codebook_dim": 16}

_ITEM_TYPES = (str, os.PathLike, bytes, bytearray, memoryview, tuple, list)


class EncodecAudioCodec(EncodecMusicCodec):
    """General audio as Encodec 24 kHz codes: 4 codebooks x 1024 at 75 frames/s, 300 LM tokens per second.

    Each frame's 4 residual codes go to the LM in layer order, layer ``l`` shifted by ``1024 * l``, so the vocabulary
    holds 4096 codes ``<👂0>`` .. ``<👂4095>`` wrapped in ``<soau>`` / ``<eoau>``, and slot ``i % 4`` of a span
    always comes from block ``i % 4``. Added to AnyGPT-base, the block takes ids 49418-53513 and the tags 53514/53515.

    Args:
        source: Weights: a local folder, a Hugging Face repo id or a URL (``anygpt.hub.resolve``), or a ``.ckpt`` of
            ``anygpt fit`` with ``EncodecTrainer``. Ignored when ``config`` is given.
        config: ``transformers.EncodecConfig`` fields, over the 24 kHz model's, of a model with random weights
            (tests, smoke runs): ``{num_filters: 4, hidden_size: 16, codebook_dim: 16}`` is the tiny variant.
        segment_seconds: Seconds of audio to encode per item (the original's 5); None keeps all of it.
        offset_seconds: Where the window starts, in seconds.
        bandwidth: Encodec target bandwidth in kbps, one of the model's ``target_bandwidths``: 3.0 gives the 4
            codebooks of the layout (1.5 gives 2, 6.0 gives 8).
        seed: Seed of the random weights when ``config`` is given (the global RNG is left untouched).

    Raises:
        AnyGPTError: No weights and no config, weights that do not load, or a bandwidth the model lacks; one line
            naming the source.
    """

    modality = "audio"
    token_prefix = "👂"
    start_tag = "<soau>"
    end_tag = "<eoau>"
    vocab_size = 4096
    span_length = None

    def __init__(
        self,
        source: str | None = "facebook/encodec_24khz",
        config: dict | None = None,
        segment_seconds: float | None = 5.0,
        offset_seconds: float = 0.0,
        bandwidth: float | None = 3.0,
        seed: int = 0,
    ):
        if source is None and config is None:
            raise AnyGPTError("EncodecAudioCodec needs weights (source: a folder, repo id or .ckpt) or a config "
                              "for random weights")
        full = None if config is None else {**REAL_CONFIG, **config}
        try:
            super().__init__(source, full, segment_seconds, offset_seconds, bandwidth, seed)
        except (OSError, ValueError, TypeError, KeyError) as err:  # transformers: no Encodec folder, bad weights
            what = f"config {config}" if config is not None else f"weights {source}"
            raise AnyGPTError(f"EncodecAudioCodec: cannot build from {what}: {one_line(err)}") from None

    @classmethod
    def tiny(cls, **kw: Any) -> EncodecAudioCodec:
        """Random weights with the real layout (24 kHz, hop 320, 4 x 1024 codes) and narrow layers: CPU-fast."""
        kw.setdefault("config", dict(TINY_CONFIG))
        kw.setdefault("source", None)
        return cls(**kw)

    @classmethod
    def from_pretrained(cls, source: str = "facebook/encodec_24khz", **kw: Any) -> EncodecAudioCodec:
        """The released weights (or a local copy of them: a folder, or ``$ANYGPT_WEIGHTS/facebook/encodec_24khz``)."""
        return cls(source=source, **kw)

    def check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """The span as a 1-D LongTensor after checking its grammar (whole frames, each code in its layer's block).

        Raises:
            ValueError: Non-integer codes, a partial frame, or a code in the wrong layer block (with its position).
        """
        codes = torch.as_tensor(codes)
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"audio codes must be integers, got {codes.dtype}")
        n, k = codes.numel(), self.num_codebooks
        if not self.can_end(n):
            raise ValueError(f"an audio span needs whole frames of {k} codes, got {n}"
                             + (f": the frame at position {n - n % k} is incomplete" if n else ""))
        return super().check_codes(codes)

    def encode(self, media_batch: list) -> list[torch.Tensor]:
        """Codes of each item: paths, file bytes, binary files, or ``(waveform [C, L] or [L], sample_rate)`` pairs.

        Each item is cut to its window, resampled to 24 kHz and mixed to mono.

        Returns:
            One LongTensor ``[4 * T]`` per item, T = ceil(L / 320), layer ``l`` of a frame offset by ``1024 * l``.

        Raises:
            AnyGPTError: An item that is not readable audio: one line naming it (its index, or its path).
        """
        if not isinstance(media_batch, (list, tuple)):
            raise AnyGPTError(f"audio encode takes a list of items, got {type(media_batch).__name__}")
        for index, item in enumerate(media_batch):
            if not isinstance(item, _ITEM_TYPES) and not hasattr(item, "read"):
                raise AnyGPTError(f"audio item {index}: expected a path, file bytes, a binary file or a (waveform, "
                                  f"sample_rate) pair, got {type(item).__name__}")
            if isinstance(item, (tuple, list)):  # files are named by read_audio's own errors
                try:
                    as_waveform(item, self.offset_seconds, self.segment_seconds)
                except AnyGPTError as err:
                    raise AnyGPTError(f"audio item {index}: {err}") from None
        return super().encode(list(media_batch))

    def decode(self, codes: list[torch.Tensor], lengths: list[int | None] | None = None) -> list[torch.Tensor]:
        """Waveforms ``[1, 320 * T]`` at 24 kHz (not clipped), each cut to ``lengths[i]`` samples when given.

        Raises:
            AnyGPTError: Codes that break the layout, or a bad length: one line naming the item.
        """
        if not isinstance(codes, (list, tuple)):
            raise AnyGPTError(f"audio decode takes a list of code sequences, got {type(codes).__name__}")
        for index, item in enumerate(codes):
            try:
                self.check_codes(item)
            except (ValueError, TypeError, RuntimeError) as err:
                raise AnyGPTError(f"audio codes {index}: {one_line(err)}") from None
        try:
            return super().decode(list(codes), lengths)
        except ValueError as err:
            raise AnyGPTError(f"audio decode: {one_line(err)}") from None
