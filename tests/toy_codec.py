"""A toy modality defined outside the package: proves that any ModalityCodec plugs in through YAML."""

from __future__ import annotations

from pathlib import Path

import torch

from anygpt import AnyGPTError


class ToyCodec:
    """Reads a text file of integers in [0, 16); spans are exactly 4 codes; decodes to a short 'waveform'.

    It is deliberately not a BaseCodec or an nn.Module: only the ModalityCodec members exist.
    """

    modality = "toy"
    token_prefix = "🧪"
    start_tag = "<soty>"
    end_tag = "<eoty>"
    vocab_size = 16
    span_length = 4
    sample_rate = 8000

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def load(self, source):
        path = Path(source)
        if not path.is_file():
            raise AnyGPTError(f"toy file not found: {path}")
        return [int(x) for x in path.read_text().split()]

    def encode(self, media_batch: list) -> list[torch.Tensor]:
        return [torch.tensor(self.load(m) if isinstance(m, (str, Path)) else m, dtype=torch.long) for m in media_batch]

    def decode(self, codes: list[torch.Tensor], **kwargs) -> list[torch.Tensor]:
        return [(c.float()[None].repeat_interleave(100, dim=1) / 16 * self.scale) for c in codes]

    def register(self, vocab):
        return vocab.register(self.modality, self.token_prefix, self.vocab_size, self.start_tag, self.end_tag)

    def allowed(self, position: int) -> tuple[int, int]:
        return (0, 8) if position % 2 == 0 else (8, 16)
