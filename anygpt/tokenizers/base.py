"""The codec interface: what ``UnifiedLM`` needs from a modality, and a base class with the shared parts."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Protocol, runtime_checkable

import torch
from lightning.pytorch import LightningModule

from anygpt.tokenizers.vocab import TokenRange, VocabLayout


@runtime_checkable
class ModalityCodec(Protocol):
    """A modality's tokenizer: media to codec-local ids and back, plus its place in the LM vocabulary.

    Attributes:
        modality: Name used in requests and data files (``music``).
        token_prefix: Prefix of the code token strings (``🎶`` gives ``<🎶12>``).
        start_tag: Token opening a span (``<somu>``).
        end_tag: Token closing a span (``<eomu>``).
        vocab_size: Number of codes the LM sees.
        span_length: Exact number of codes per span, or None when spans vary.
    """

    modality: str
    token_prefix: str
    start_tag: str
    end_tag: str
    vocab_size: int
    span_length: int | None

    def load(self, source: Any) -> Any:
        """Read one item from a path or bytes, prepared as the codec expects it."""

    def encode(self, media_batch: list) -> list[torch.Tensor]:
        """One 1-D LongTensor of codec-local ids in ``[0, vocab_size)`` per item."""

    def decode(self, codes: list[torch.Tensor], **kwargs: Any) -> list:
        """Media for each 1-D tensor of codec-local ids."""

    def register(self, vocab: VocabLayout) -> TokenRange:
        """Add this modality's tokens to ``vocab``."""

    def allowed(self, position: int) -> tuple[int, int]:
        """Half-open range of codec-local ids legal at ``position`` (0-based) inside a span."""


class BaseCodec(LightningModule):
    """Shared parts of the built-in codecs: registration, span grammar defaults and frozen eval mode.

    Codecs are frozen and hook-free: they never train, never log, and stay in eval mode whatever their
    parent does. Subclasses set the class attributes and implement ``load``, ``encode`` and ``decode``.
    """

    modality: str = ""
    token_prefix: str = ""
    start_tag: str = ""
    end_tag: str = ""
    vocab_size: int = 0
    span_length: int | None = None

    def freeze(self) -> None:
        """Turn off gradients and switch to eval mode for good."""
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> BaseCodec:
        """Stays in eval mode: codecs are frozen."""
        return super().train(False)

    def register(self, vocab: VocabLayout) -> TokenRange:
        """Add this modality's code tokens and tags to ``vocab``."""
        return vocab.register(self.modality, self.token_prefix, self.vocab_size, self.start_tag, self.end_tag)

    def allowed(self, position: int) -> tuple[int, int]:
        """Any code is legal anywhere unless a subclass says otherwise."""
        return 0, self.vocab_size

    def can_end(self, length: int) -> bool:
        """Whether a span of ``length`` codes is complete (the end tag may follow)."""
        if self.span_length is not None:
            return length == self.span_length
        return length > 0

    def check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Check a span against the grammar; returns it as a 1-D LongTensor or raises ``ValueError``."""
        return _check_grammar(self, codes)


def span_can_end(codec: ModalityCodec, length: int) -> bool:
    """``codec.can_end(length)`` where the codec defines it, else the rule implied by ``span_length``."""
    if hasattr(codec, "can_end"):
        return bool(codec.can_end(length))
    return length == codec.span_length if codec.span_length is not None else length > 0


def complete_length(codec: ModalityCodec, length: int) -> int:
    """The longest span of at most ``length`` codes that may end (0 if none): what a span cut short keeps."""
    return next((n for n in range(length, 0, -1) if span_can_end(codec, n)), 0)


def decode_options(codec: ModalityCodec, seed: int | None, steps: int, prompt: Any = None) -> dict[str, Any]:
    """Keyword arguments of ``codec.decode`` for one span, limited to those its signature takes: its seed, the
    second-stage decoder's steps and an encoded voice prompt."""
    accepted = inspect.signature(codec.decode).parameters
    options: dict[str, Any] = {}
    if "seeds" in accepted:
        options["seeds"] = [seed]
    if "steps" in accepted:
        options["steps"] = steps
    if prompt is not None and "prompts" in accepted:
        options["prompts"] = [prompt]
    return options


def encode_voice_prompt(codec: ModalityCodec, source: Any) -> Any:
    """A voice prompt as the codec's ``decode`` takes it (``encode_prompt`` where the codec has one).

    Raises:
        AnyGPTError: The prompt cannot be read, as one line starting with "voice prompt:".
    """
    from anygpt import AnyGPTError

    encode = getattr(codec, "encode_prompt", None)
    try:
        return encode(source) if encode else source
    except AnyGPTError as err:
        raise AnyGPTError(f"voice prompt: {err}") from err


def check_span(codec: ModalityCodec, codes: torch.Tensor) -> torch.Tensor:
    """``codec.check_codes(codes)`` where the codec defines it, else the check implied by ``allowed``."""
    if hasattr(codec, "check_codes"):
        return codec.check_codes(codes)
    return _check_grammar(codec, codes)


def _check_grammar(codec: ModalityCodec, codes: torch.Tensor) -> torch.Tensor:
    codes = torch.as_tensor(codes, dtype=torch.long).flatten()
    if codes.numel() == 0:
        raise ValueError(f"the {codec.modality} span is empty")
    if not span_can_end(codec, codes.numel()):
        need = f" (needs exactly {codec.span_length})" if codec.span_length is not None else ""
        raise ValueError(f"the {codec.modality} span of {codes.numel()} codes is incomplete{need}")
    for position, code in enumerate(codes.tolist()):
        low, high = codec.allowed(position)
        if not low <= code < high:
            raise ValueError(
                f"{codec.modality} code {code} at position {position} is outside its allowed range [{low}, {high})"
            )
    return codes


def instantiate(spec: Any) -> Any:
    """A codec from ``{class_path, init_args}`` (left as a spec when the CLI could not build it), or from the name
    it is registered under (``class_path: audio``, or the bare string ``audio``: ``anygpt.tokenizers.registry``),
    else as is.

    Building it here lets the codec's own error (missing weights, say) reach the user unchanged.
    """
    if hasattr(spec, "as_dict"):
        spec = spec.as_dict()
    if isinstance(spec, str):
        spec = {"class_path": spec}
    if isinstance(spec, dict) and "class_path" in spec:
        module, _, name = str(spec["class_path"]).rpartition(".")
        if module:
            cls = getattr(importlib.import_module(module), name)
        else:
            from anygpt.tokenizers.registry import codec_class

            cls = codec_class(name)
        return cls(**dict(spec.get("init_args") or {}))
    return spec
