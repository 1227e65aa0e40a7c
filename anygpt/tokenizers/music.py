"""Music codec: Encodec 32 kHz (``facebook/encodec_32khz`` through transformers), 4 codebooks flattened frame-major."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from anygpt import AnyGPTError
from anygpt.messages import one_line
from anygpt.tokenizers.audio import as_waveform, fit_random_codebooks, probe_noise, resample
from anygpt.tokenizers.base import BaseCodec

#: ``facebook/encodec_32khz``'s ``config.json`` (audio §3.1); other EncodecConfig fields keep their defaults.
REAL_CONFIG: dict[str, Any] = {
    "sampling_rate": 32000,
    "audio_channels": 1,
    "upsampling_ratios": [8, 5, 4, 4],
    "codebook_size": 2048,
    "codebook_dim": 128,
    "hidden_size": 128,
    "num_filters": 64,
    "num_lstm_layers": 2,
    "num_residual_layers": 1,
    "norm_type": "weight_norm",
    "normalize": False,
    "chunk_length_s": None,
    "overlap": None,
    "use_causal_conv": False,
    "use_conv_shortcut": False,
    "target_bandwidths": [2.2],
}

#: The real layout (32 kHz, hop 640, 4 x 2048 codes) with narrow layers: random weights, fast on CPU.
TINY_CONFIG: dict[str, Any] = {**REAL_CONFIG, "num_filters": 4, "hidden_size": 16, "codebook_dim": 16}


def flatten_codes(codes: torch.Tensor, codebook_size: int = 2048) -> torch.Tensor:
    """Codes ``[K, T]`` to the LM order: frame by frame, layer ``l`` shifted by ``codebook_size * l``."""
    codes = torch.as_tensor(codes, dtype=torch.long)
    if codes.dim() != 2:
        raise ValueError(f"expected codes [codebooks, frames], got shape {list(codes.shape)}")
    offsets = torch.arange(codes.shape[0], device=codes.device).unsqueeze(1) * codebook_size
    return (codes + offsets).t().reshape(-1)


def unflatten_codes(flat: torch.Tensor, num_codebooks: int = 4, codebook_size: int = 2048) -> torch.Tensor:
    """Inverse of ``flatten_codes``: ``[K * T]`` to ``[K, T]`` with the layer offsets removed."""
    flat = torch.as_tensor(flat, dtype=torch.long).reshape(-1)
    if flat.numel() % num_codebooks:
        raise ValueError(f"{flat.numel()} codes are not a whole number of {num_codebooks}-code frames")
    frames = flat.reshape(-1, num_codebooks).t()
    offsets = torch.arange(num_codebooks, device=flat.device).unsqueeze(1) * codebook_size
    return frames - offsets


class EncodecMusicCodec(BaseCodec):
    """Music as Encodec 32 kHz codes: 4 codebooks x 2048 at 50 frames/s, 200 LM tokens per second.

    Each frame's 4 residual codes go to the LM in layer order, layer ``l`` shifted by ``2048 * l``, so the
    vocabulary holds 8192 codes and slot ``i % 4`` of a span always comes from block ``i % 4`` (AnyGPT's layout).
    Unlike the original, the input window starts at ``offset_seconds`` (the original's random offset is a bug),
    and equal-length inputs are batched together only, so every item gets the codes of a lone encode.

    Args:
        source: Weights: a local folder, a Hugging Face repo id or a URL (``anygpt.hub.resolve``), or a ``.ckpt``
            of ``anygpt fit`` with ``anygpt.training.music_codec.EncodecTrainer``. Ignored when ``config`` is given.
        config: ``transformers.EncodecConfig`` fields, over the 32 kHz model's, of a model with random weights
            (tests, smoke runs): ``{num_filters: 4, hidden_size: 16, codebook_dim: 16}`` is the tiny variant;
            ``harmonics: K`` (and ``harmonic_range: [f_min, f_max]``) adds the harmonic decoder branch of
            ``anygpt.tokenizers.harmonic``, which saved folders and fit checkpoints carry in their config.
        segment_seconds: Seconds of audio to encode per item (AnyGPT chat: 5, base: 20); None keeps all of it.
        offset_seconds: Where the window starts, in seconds.
        bandwidth: Encodec target bandwidth in kbps, one of the model's ``target_bandwidths``; None takes the
            first (2.2 kbps = 4 codebooks for the 32 kHz model).
        seed: Seed of the random weights when ``config`` is given (the global RNG is left untouched).
    """

    modality = "music"
    token_prefix = "🎶"
    start_tag = "<somu>"
    end_tag = "<eomu>"
    vocab_size = 8192
    span_length = None

    def __init__(
        self,
        source: str | None = "facebook/encodec_32khz",
        config: dict | None = None,
        segment_seconds: float | None = 5.0,
        offset_seconds: float = 0.0,
        bandwidth: float | None = None,
        seed: int = 0,
    ):
        super().__init__()
        from transformers import EncodecConfig, EncodecModel

        if config is not None:
            cfg = EncodecConfig(**{**REAL_CONFIG, **config})
            self.bandwidth = _check_config(cfg, bandwidth)  # before building: fail fast
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model = _build(cfg)
                _init_random_codebooks(self.model)
        elif source is not None and str(source).endswith(".ckpt"):
            self.model = _from_fit_checkpoint(str(source))
            self.bandwidth = _check_config(self.model.config, bandwidth)
        elif source is not None:
            from anygpt.hub import resolve

            folder = resolve(source)
            cfg = EncodecConfig.from_pretrained(str(folder))
            self.model = _load_harmonic(folder, cfg) if getattr(cfg, "harmonics", 0) else \
                EncodecModel.from_pretrained(str(folder))
            self.bandwidth = _check_config(self.model.config, bandwidth)
        else:
            raise AnyGPTError("EncodecMusicCodec needs weights (source) or a config for random weights")
        self.segment_seconds = segment_seconds
        self.offset_seconds = offset_seconds
        self._num_codebooks = self.model.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth)
        self.vocab_size = self._num_codebooks * self.codebook_size
        self.freeze()

    @classmethod
    def tiny(cls, **kw: Any) -> EncodecMusicCodec:
        """Random weights with the real layout (32 kHz, hop 640, 4 x 2048 codes) and narrow layers: CPU-fast."""
        kw.setdefault("config", dict(TINY_CONFIG))
        kw.setdefault("source", None)
        return cls(**kw)

    @classmethod
    def from_pretrained(cls, source: str = "facebook/encodec_32khz", **kw: Any) -> EncodecMusicCodec:
        """The released weights (or a local copy of them)."""
        return cls(source=source, **kw)

    @property
    def sample_rate(self) -> int:
        """Audio rate of the model (32000)."""
        return int(self.model.config.sampling_rate)

    @property
    def hop_length(self) -> int:
        """Samples per frame (640)."""
        return int(torch.tensor(self.model.config.upsampling_ratios).prod())

    @property
    def frame_rate(self) -> int:
        """Frames per second (50)."""
        return -(-self.sample_rate // self.hop_length)

    @property
    def num_codebooks(self) -> int:
        """Residual codebooks used at ``bandwidth`` (4)."""
        return self._num_codebooks

    @property
    def codebook_size(self) -> int:
        """Codes per codebook (2048)."""
        return int(self.model.config.codebook_size)

    # --- grammar ---

    def allowed(self, position: int) -> tuple[int, int]:
        """Slot ``position % K`` of a frame holds a code of layer ``position % K``."""
        low = self.codebook_size * (position % self.num_codebooks)
        return low, low + self.codebook_size

    def can_end(self, length: int) -> bool:
        """A span ends after whole frames only."""
        return length > 0 and length % self.num_codebooks == 0

    def check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Grammar check with a message that says where a partial frame starts."""
        codes = torch.as_tensor(codes, dtype=torch.long).flatten()
        n, k = codes.numel(), self.num_codebooks
        if not self.can_end(n):
            raise ValueError(
                f"a {self.modality} span needs whole frames of {k} codes, got {n}: the frame at position "
                f"{n - n % k} is incomplete" if n else f"a {self.modality} span of 0 codes is empty"
            )
        size = self.codebook_size
        low = torch.arange(n) % k * size  # allowed(), for every position at once (a melody has ~600)
        outside = ((codes < low) | (codes >= low + size)).nonzero()
        if len(outside):
            position = int(outside[0])
            raise ValueError(f"{self.modality} code {int(codes[position])} at position {position} is outside its "
                             f"allowed range [{int(low[position])}, {int(low[position]) + size})")
        return codes

    # --- media ---

    def load(self, source: Any) -> tuple[torch.Tensor, int]:
        """Read the window of a file (path, bytes or file-like) and prepare it: 32 kHz mono ``[1, L]``."""
        return self._prepare(source)

    def _prepare(self, item: Any) -> tuple[torch.Tensor, int]:
        wav, rate = as_waveform(item, self.offset_seconds, self.segment_seconds)
        wav = resample(wav, rate, self.sample_rate).mean(dim=0, keepdim=True)  # resample, then mix (as AnyGPT)
        return wav, self.sample_rate

    def encode(self, media_batch: list) -> list[torch.Tensor]:
        """Codes of each item: paths / bytes, or ``(waveform [C, L], sample_rate)`` pairs.

        Returns:
            One LongTensor ``[K * T]`` per item, T = ceil(L / 640), flattened by ``flatten_codes``.
        """
        waves = [self._prepare(item)[0] for item in media_batch]
        out: list[torch.Tensor | None] = [None] * len(waves)
        groups: dict[int, list[int]] = {}
        for i, wav in enumerate(waves):  # equal lengths only: padding would change the last frames
            groups.setdefault(wav.shape[-1], []).append(i)
        with torch.inference_mode():
            for length, indices in groups.items():
                batch = torch.stack([waves[i] for i in indices]).to(self.device)
                mask = torch.ones(len(indices), length, dtype=torch.long, device=self.device)
                codes = self.model.encode(batch, mask, self.bandwidth, return_dict=True).audio_codes[0]
                for i, item_codes in zip(indices, codes):
                    out[i] = flatten_codes(item_codes, self.codebook_size).cpu()
        return out

    def decode(self, codes: list[torch.Tensor], lengths: list[int | None] | None = None) -> list[torch.Tensor]:
        """Waveforms ``[1, 640 * T]`` at 32 kHz (not clipped), each cut to ``lengths[i]`` samples when given.

        Raises:
            ValueError: A code in the wrong layer slot, a partial frame, or a length longer than the audio.
        """
        if lengths is not None and len(lengths) != len(codes):
            raise ValueError(f"got {len(lengths)} lengths for {len(codes)} code sequences")
        grids = [
            unflatten_codes(self.check_codes(c), self.num_codebooks, self.codebook_size) for c in codes
        ]
        out: list[torch.Tensor | None] = [None] * len(grids)
        groups: dict[int, list[int]] = {}
        for i, grid in enumerate(grids):
            groups.setdefault(grid.shape[-1], []).append(i)
        with torch.inference_mode():
            for indices in groups.values():
                batch = torch.stack([grids[i] for i in indices]).unsqueeze(0).to(self.device)
                audio = self.model.decode(batch, [None], return_dict=True).audio_values
                for i, wav in zip(indices, audio):
                    out[i] = wav.float().cpu()
        if lengths is not None:
            for i, length in enumerate(lengths):
                if length is None:
                    continue
                if not 0 < length <= out[i].shape[-1]:
                    raise ValueError(f"length {length} is outside 1..{out[i].shape[-1]} for item {i}")
                out[i] = out[i][..., :length]
        return out


def _from_fit_checkpoint(path: str) -> torch.nn.Module:
    """The Encodec network of an ``EncodecTrainer`` fit checkpoint, loaded strictly."""
    from transformers import EncodecConfig, EncodecModel

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError) as err:
        raise AnyGPTError(f"cannot read checkpoint {path} ({one_line(err)})") from None
    prefix = "codec.model."
    state = {k[len(prefix):]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith(prefix)}
    if not state or "encodec_config" not in checkpoint:
        raise AnyGPTError(f"{path} is not a checkpoint of EncodecTrainer (no {prefix}* weights or Encodec config)")
    model = _build(EncodecConfig(**checkpoint["encodec_config"]))
    model.load_state_dict(state, strict=True)
    return model.eval()


def _build(cfg: Any) -> torch.nn.Module:
    """A fresh ``EncodecModel`` of ``cfg``; with ``cfg.harmonics`` (K > 0) its decoder gets the harmonic branch of
    ``anygpt.tokenizers.harmonic`` (pitch and K harmonic amplitudes per frame, fundamentals within
    ``cfg.harmonic_range`` Hz, default 40-800): the demo's music codec."""
    from transformers import EncodecModel

    model = EncodecModel(cfg)
    if getattr(cfg, "harmonics", 0):
        from anygpt.tokenizers.harmonic import HarmonicDecoder

        f_min, f_max = getattr(cfg, "harmonic_range", None) or (40.0, 800.0)
        model.decoder = HarmonicDecoder(model.decoder, cfg.sampling_rate, int(cfg.harmonics), float(f_min),
                                        float(f_max))
    return model


def _load_harmonic(folder, cfg: Any) -> torch.nn.Module:
    """A saved Encodec with a harmonic branch (``save_pretrained`` of ``_build``'s model), loaded strictly (codebook
    statistics that a shipped file leaves out are restarted from the codebooks)."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if len(files) != 1:
        raise AnyGPTError(f"{folder}: expected one .safetensors file of a harmonic Encodec, found {len(files)}")
    from anygpt.tokenizers.codebook_state import fill_codebook_stats

    model = _build(cfg)
    model.load_state_dict(fill_codebook_stats(load_file(str(files[0])), model.state_dict()), strict=True)
    return model.eval()


def _check_config(cfg: Any, bandwidth: float | None) -> float:
    """The bandwidth to encode at, after checking that the model is one this codec can drive."""
    if cfg.chunk_length_s is not None or cfg.audio_channels != 1:
        raise AnyGPTError("the Encodec codecs support unchunked mono Encodec models (like facebook/encodec_32khz), "
                          f"got chunk_length_s={cfg.chunk_length_s}, audio_channels={cfg.audio_channels}")
    choices = [float(b) for b in cfg.target_bandwidths]
    chosen = choices[0] if bandwidth is None else float(bandwidth)
    if chosen not in choices:
        raise AnyGPTError(f"bandwidth {chosen} kbps is not one of the model's target bandwidths {choices}")
    return chosen


def _init_random_codebooks(model: torch.nn.Module) -> None:
    """Random-weight Encodec with usable codebooks (transformers initialises them to zeros)."""
    with torch.no_grad():
        noise = probe_noise(model.config.audio_channels, model.config.sampling_rate)
        residual = model.encoder(noise).transpose(1, 2).reshape(-1, model.config.codebook_dim)
        books = [layer.codebook for layer in model.quantizer.layers]
        fit_random_codebooks([book.embed for book in books], residual)
        for book in books:
            book.embed_avg.copy_(book.embed)
            book.cluster_size.fill_(1.0)
