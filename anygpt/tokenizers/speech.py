"""Speech codec: SpeechTokenizer (RVQ-1 ids in the LM) with SoundStorm filling RVQ 2-8 on the way back."""

from __future__ import annotations

import contextlib
import json
import warnings
from typing import Any, Literal

import torch

from anygpt import AnyGPTError
from anygpt.decoders.soundstorm import SoundStormDecoder
from anygpt.tokenizers.audio import as_waveform, fit_random_codebooks, probe_noise, resample
from anygpt.tokenizers.base import BaseCodec

RELEASED = "fnlp/AnyGPT-speech-modules"

#: The fields ``speechtokenizer.SpeechTokenizer`` reads, at the released checkpoint's values (audio §1.3).
REAL_CONFIG: dict[str, Any] = {
    "n_filters": 64,
    "strides": [8, 5, 4, 2],
    "dimension": 1024,
    "semantic_dimension": 768,
    "bidirectional": True,
    "dilation_base": 2,
    "residual_kernel_size": 3,
    "n_residual_layers": 1,
    "lstm_layers": 2,
    "activation": "Snake",
    "codebook_size": 1024,
    "n_q": 8,
    "sample_rate": 16000,
}

#: The real layout (16 kHz, hop 320, 8 x 1024 codes, Snake) with narrow layers: random weights, fast on CPU.
TINY_CONFIG: dict[str, Any] = {**REAL_CONFIG, "n_filters": 4, "dimension": 32, "semantic_dimension": 16}


def _speechtokenizer_class():
    """``speechtokenizer.SpeechTokenizer``, built without the package's torch deprecation warnings.

    The package scripts one function with ``torch.jit.script`` and uses the old ``weight_norm`` (whose
    ``weight_g`` / ``weight_v`` names the released checkpoint has): both warn on recent torch, harmlessly.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from speechtokenizer import SpeechTokenizer

    def build(config: dict) -> torch.nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = SpeechTokenizer(config)
        width = config.get("decoder_filters")
        if width is not None and width != config["n_filters"]:  # a decoder wider or narrower than the encoder
            from speechtokenizer.modules.seanet import SEANetDecoder

            model.decoder = SEANetDecoder(
                n_filters=width, dimension=config["dimension"], ratios=config["strides"], lstm=config["lstm_layers"],
                bidirectional=False, dilation_base=config["dilation_base"],
                residual_kernel_size=config["residual_kernel_size"], n_residual_layers=config["n_residual_layers"],
                activation=config.get("activation"))
        if config.get("harmonics"):  # the demo codec's harmonic branch (anygpt.tokenizers.harmonic)
            from anygpt.tokenizers.harmonic import HarmonicDecoder

            model.decoder = HarmonicDecoder(model.decoder, config["sample_rate"], int(config["harmonics"]))
        return model

    build.load_from_checkpoint = SpeechTokenizer.load_from_checkpoint
    return build


class SpeechTokenizerCodec(BaseCodec):
    """Speech as SpeechTokenizer codes: the LM sees RVQ layer 1 (50 ids/s, 1024 codes).

    Encoding keeps channel 0 and resamples to 16 kHz with torchaudio's sinc resampler, as AnyGPT does, and runs
    only the first quantizer. Decoding asks SoundStorm for RVQ layers 2-8 (conditioned on a voice prompt for
    zero-shot TTS) and decodes all 8 layers to a 16 kHz waveform of exactly 320 samples per id. Without a
    decoder, layer 1 alone is decoded: the words without the speaker's timbre.

    Args:
        config: The SpeechTokenizer ``config.json`` (a path, URL or ``<owner>/<repo>/<file>``), or a dict of its
            fields; a dict with ``checkpoint: null`` builds random weights (the tiny variant overrides
            ``{n_filters: 4, dimension: 32, semantic_dimension: 16}``). An optional ``decoder_filters`` (not in
            the released config) gives the waveform decoder its own width, and ``harmonics: K`` adds the
            harmonic branch of ``anygpt.tokenizers.harmonic`` (pitch, voicing and K harmonic amplitudes per frame).
        checkpoint: The SpeechTokenizer weights, loaded strictly: ``ckpt.dev`` (a plain state dict), a
            ``.safetensors`` file of the same keys, or an ``anygpt fit`` checkpoint; None gives random weights drawn
            with ``seed``.
        decoder: SoundStorm for RVQ 2-8: a ``SoundStormDecoder``, the reference of its checkpoint, or None.
        steps: SoundStorm's MaskGIT steps on RVQ layer 2 when ``decode`` is not told (AnyGPT ran 3).
        decoder_dtype: SoundStorm's weight dtype: ``float32`` as the original; ``bfloat16`` is about 3.5x faster
            on a GPU (10 s of speech in 0.04 s on an H100) but picks other codes wherever the model hesitates.
        prompt_seconds: Seconds of a voice prompt to use, from its start; None uses all of it (as AnyGPT).
        seed: Seed of the random weights when ``checkpoint`` is None (the global RNG is left untouched).
    """

    modality = "speech"
    token_prefix = "🗣️"
    start_tag = "<sosp>"
    end_tag = "<eosp>"
    vocab_size = 1024
    span_length = None

    def __init__(
        self,
        config: str | dict = f"{RELEASED}/speechtokenizer/config.json",
        checkpoint: str | None = f"{RELEASED}/speechtokenizer/ckpt.dev",
        decoder: SoundStormDecoder | str | None = f"{RELEASED}/soundstorm/speechtokenizer_soundstorm_mls.pt",
        steps: int = 3,
        decoder_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        prompt_seconds: float | None = None,
        seed: int = 0,
    ):
        super().__init__()
        from anygpt.hub import resolve_file

        if isinstance(config, dict):
            cfg = {**REAL_CONFIG, **config}
        else:
            path = resolve_file(config)
            try:
                cfg = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise AnyGPTError(f"cannot read the SpeechTokenizer config {path}: {err}") from err
        missing = sorted(set(REAL_CONFIG) - set(cfg))
        if missing:
            raise AnyGPTError(f"SpeechTokenizer config lacks {', '.join(missing)}")
        if steps < 1:
            raise AnyGPTError(f"steps must be at least 1, got {steps}")
        if prompt_seconds is not None and prompt_seconds <= 0:
            raise AnyGPTError(f"prompt_seconds must be > 0 or None, got {prompt_seconds}")
        model_class = _speechtokenizer_class()
        if checkpoint is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model = model_class(cfg)
                _init_random_codebooks(self.model, cfg)
        else:
            self.model = model_class(cfg)
            load_speechtokenizer_state(self.model, resolve_file(checkpoint))
        if isinstance(decoder, str):
            decoder = SoundStormDecoder.from_pretrained(decoder)
        if decoder is not None and (decoder.codebook_size != cfg["codebook_size"] or decoder.num_quantizers != cfg["n_q"] - 1):
            raise AnyGPTError(
                f"SoundStorm predicts {decoder.num_quantizers} layers of {decoder.codebook_size} codes, but the "
                f"SpeechTokenizer has {cfg['n_q']} layers of {cfg['codebook_size']}"
            )
        if decoder_dtype not in ("float32", "bfloat16", "float16"):
            raise AnyGPTError(f"decoder_dtype must be float32, bfloat16 or float16, got {decoder_dtype!r}")
        self.decoder = None if decoder is None else decoder.to(getattr(torch, decoder_dtype))
        self.vocab_size = int(cfg["codebook_size"])
        self.sample_rate = int(cfg["sample_rate"])
        self.hop_length = int(torch.tensor(cfg["strides"]).prod())
        self.num_layers = int(cfg["n_q"])
        self.steps, self.prompt_seconds = steps, prompt_seconds
        self.freeze()

    @classmethod
    def tiny(cls, decoder: SoundStormDecoder | None = None, seed: int = 0, **kw: Any) -> SpeechTokenizerCodec:
        """Random weights with the real layout and narrow layers, with a tiny random SoundStorm: CPU-fast."""
        return cls(config=dict(TINY_CONFIG), checkpoint=None, seed=seed,
                   decoder=decoder if decoder is not None else SoundStormDecoder.tiny(seed=seed), **kw)

    @classmethod
    def from_pretrained(cls, config: str = f"{RELEASED}/speechtokenizer/config.json",
                        checkpoint: str = f"{RELEASED}/speechtokenizer/ckpt.dev",
                        decoder: SoundStormDecoder | str | None = None, **kw: Any) -> SpeechTokenizerCodec:
        """Released (or local) SpeechTokenizer files; ``decoder`` None decodes RVQ-1 alone (no SoundStorm)."""
        return cls(config=config, checkpoint=checkpoint, decoder=decoder, **kw)

    @property
    def frame_rate(self) -> int:
        """Ids per second (50)."""
        return self.sample_rate // self.hop_length

    def phase_pinned(self, anchor: int, cycles: float | None, probe: int) -> contextlib.AbstractContextManager:
        """Around one ``decode``: the harmonic branch's ``HarmonicDecoder.phase_pinned`` (its oscillator's phase
        at frame ``anchor`` set to ``cycles``, the phase at frame ``probe`` kept), so that streamed windows of an
        utterance stay in phase; without a harmonic branch, a state whose ``"cycles"`` stays None."""
        pinned = getattr(self.model.decoder, "phase_pinned", None)
        return contextlib.nullcontext({"cycles": None}) if pinned is None else pinned(anchor, cycles, probe)

    # --- media ---

    def load(self, source: Any) -> tuple[torch.Tensor, int]:
        """Read speech to encode: channel 0 (as AnyGPT), resampled to 16 kHz, ``[1, L]``."""
        wav, rate = as_waveform(source)
        return resample(wav[:1], rate, self.sample_rate), self.sample_rate

    def load_prompt(self, source: Any) -> tuple[torch.Tensor, int]:
        """Read a voice prompt: all channels mixed to mono, resampled to 16 kHz, cut to ``prompt_seconds``."""
        wav, rate = as_waveform(source, 0.0, self.prompt_seconds)
        return resample(wav.mean(dim=0, keepdim=True), rate, self.sample_rate), self.sample_rate

    def encode(self, media_batch: list) -> list[torch.Tensor]:
        """RVQ-1 ids of each item (paths, bytes, or ``(waveform [C, L], rate)``): LongTensor ``[ceil(L / 320)]``."""
        return [codes[0] for codes in self._encode([self.load(item)[0] for item in media_batch], layers=1)]

    def encode_prompt(self, source: Any) -> torch.Tensor:
        """All-layer codes of a voice prompt for SoundStorm: LongTensor ``[T, 8]``."""
        return self._encode([self.load_prompt(source)[0]], layers=self.num_layers)[0].t()

    def _encode(self, waves: list[torch.Tensor], layers: int) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(waves)
        groups: dict[int, list[int]] = {}
        for i, wav in enumerate(waves):  # equal lengths only: padding would change the codes near the end
            groups.setdefault(wav.shape[-1], []).append(i)
        with torch.inference_mode():
            for indices in groups.values():
                batch = torch.stack([waves[i] for i in indices]).to(self.device)
                codes = self.model.encode(batch, n_q=layers)  # [layers, B, T]
                for j, i in enumerate(indices):
                    out[i] = codes[:, j].cpu()
        return out

    def decode(self, codes: list[torch.Tensor], prompts: list | None = None, seeds: list[int | None] | None = None,
               steps: int | None = None) -> list[torch.Tensor]:
        """16 kHz waveforms ``[1, 320 * T]`` (not clipped) for RVQ-1 ids ``[T]``.

        Args:
            codes: RVQ-1 ids per item.
            prompts: Per item, a voice prompt (path, bytes, ``(waveform, rate)`` or codes ``[P, 8]`` from
                ``encode_prompt``) or None.
            seeds: Per item, the seed of SoundStorm's sampling (None: the global RNG, as the original).
            steps: SoundStorm's MaskGIT steps on RVQ layer 2; None uses the codec's ``steps``.

        Raises:
            ValueError: An empty span, ids out of range, or lists of the wrong length.
            AnyGPTError: An unreadable voice prompt, or a prompt without a SoundStorm decoder.
        """
        n = len(codes)
        prompts = [None] * n if prompts is None else list(prompts)
        seeds = [None] * n if seeds is None else list(seeds)
        if len(prompts) != n or len(seeds) != n:
            raise ValueError(f"got {len(prompts)} prompts and {len(seeds)} seeds for {n} code sequences")
        steps = self.steps if steps is None else steps
        out = []
        for ids, prompt, seed in zip(codes, prompts, seeds):
            ids = self.check_codes(ids).to(self.device)
            if self.decoder is None:
                if prompt is not None:
                    raise AnyGPTError("a voice prompt needs a SoundStorm decoder (the codec has none)")
                layers = ids.view(1, 1, -1)
            else:
                if prompt is not None and not (isinstance(prompt, torch.Tensor) and prompt.dim() == 2
                                               and not prompt.is_floating_point()):
                    prompt = self.encode_prompt(prompt)
                prompt = None if prompt is None else prompt.to(self.device).unsqueeze(0)
                generator = None
                if seed is not None:
                    generator = torch.Generator(device=self.device).manual_seed(int(seed))
                full = self.decoder.generate(ids.unsqueeze(0), prompt_tokens=prompt, steps=steps, generator=generator)
                layers = full.permute(2, 0, 1)  # [8, 1, T]
            with torch.inference_mode():
                wav = self.model.decode(layers)[0]
            out.append(wav[..., : self.hop_length * ids.numel()].float().cpu())
        return out


def load_speechtokenizer_state(model: torch.nn.Module, path, skip: str | None = None) -> None:
    """Load a SpeechTokenizer checkpoint strictly; keys under the prefix ``skip`` (e.g. ``decoder.``) are neither
    read nor expected."""
    from anygpt.hub import read_state
    from anygpt.tokenizers.codebook_state import fill_codebook_stats

    try:
        state = read_state(path)
    except Exception as err:
        raise AnyGPTError(f"cannot read the SpeechTokenizer checkpoint {path}: {type(err).__name__}: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # `anygpt fit` of SpeechTokenizerTrainer
        prefix = "codec.model."
        state = {k[len(prefix):]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
        if not state:
            raise AnyGPTError(f"{path} is a fit checkpoint without SpeechTokenizer weights (no '{prefix}' keys)")
    state = fill_codebook_stats(state, model.state_dict())  # shipped demo weights leave them out
    expected = None
    if skip is not None:
        state = {k: v for k, v in state.items() if not k.startswith(skip)}
        expected = {k for k in model.state_dict() if k.startswith(skip)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        reason = " ".join(str(err).split("\n\t")[1:2]) or str(err).splitlines()[0]
        raise AnyGPTError(f"{path} does not fit the SpeechTokenizer config: {reason.strip()}") from err
    missing = [k for k in result.missing_keys if expected is None or k not in expected]
    if missing or result.unexpected_keys:
        raise AnyGPTError(
            f"{path} does not fit the SpeechTokenizer config: missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )


def _init_random_codebooks(model: torch.nn.Module, cfg: dict) -> None:
    """Random-weight SpeechTokenizer with usable codebooks (the package starts them at zero, for k-means)."""
    with torch.no_grad():
        residual = model.encoder(probe_noise(1, cfg["sample_rate"]))  # [4, D, T]
        residual = residual.transpose(1, 2).reshape(-1, cfg["dimension"])
        books = [layer._codebook for layer in model.quantizer.vq.layers]
        fit_random_codebooks([book.embed for book in books], residual)
        for book in books:
            book.embed_avg.copy_(book.embed)
            book.cluster_size.fill_(1.0)
            book.inited.fill_(1.0)
