"""The LM vocabulary: base text pieces, role tokens, then one contiguous block per modality.

The layout reproduces the released AnyGPT ids (pipeline §1): with a 32000-piece LLaMA-2 base and the codecs
registered image, speech, music, ``[Human]`` is 32000 and ``<eomu>`` 49417.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from anygpt import AnyGPTError

SPECIALS = ("[Human]", "[MMGPT]", "<eoh>", "<eos>")
ANYGPT_PREFIXES = {"👀": "image", "🗣️": "speech", "🎶": "music"}  # modality of each released token block
_CODE = re.compile(r"<(\D+?)(\d+)>")


@dataclass(frozen=True)
class TokenRange:
    """The LM ids of one modality: ``size`` code tokens from ``start``, then the ``bos``/``eos`` tag ids.

    Args:
        modality: Name of the modality (``music``).
        start: LM id of code 0.
        size: Number of codes.
        bos: LM id of the start tag (``<somu>``).
        eos: LM id of the end tag (``<eomu>``).
        prefix: Token prefix of the code strings (``🎶`` gives ``<🎶12>``).
        start_tag: String of the start tag.
        end_tag: String of the end tag.
    """

    modality: str
    start: int
    size: int
    bos: int
    eos: int
    prefix: str = ""
    start_tag: str = ""
    end_tag: str = ""

    @property
    def stop(self) -> int:
        """One past the last code id."""
        return self.start + self.size

    def contains(self, ids: torch.Tensor | int) -> torch.Tensor | bool:
        """Whether LM ids are code tokens of this modality (tags excluded)."""
        return (ids >= self.start) & (ids < self.stop) if isinstance(ids, torch.Tensor) else self.start <= ids < self.stop

    def to_lm(self, codes: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Codec-local codes in ``[0, size)`` to LM ids."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.size):
            raise AnyGPTError(f"{self.modality} codes must lie in [0, {self.size}), got {codes.min()}..{codes.max()}")
        return codes + self.start

    def span(self, codes: torch.Tensor | Sequence[int]) -> list[int]:
        """Codec-local codes as a whole LM span: the start tag, the code ids, the end tag."""
        return [self.bos, *self.to_lm(codes).tolist(), self.eos]

    def from_lm(self, ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """LM ids to codec-local codes; any id outside this modality's code block is an error."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        bad = ~self.contains(ids)
        if bad.any():
            pos = int(bad.nonzero()[0, 0])
            raise AnyGPTError(
                f"id {int(ids.flatten()[pos])} at position {pos} is not a {self.modality} code "
                f"(expected {self.start}..{self.stop - 1})"
            )
        return ids - self.start


class VocabLayout:
    """Where every added token sits in the LM vocabulary.

    Specials follow the ``base_size`` text pieces; each registered modality then gets ``size`` code tokens
    ``<{prefix}{i}>``, its start tag and its end tag, in registration order.

    Args:
        base_size: Number of pieces of the base text tokenizer (32000 for LLaMA-2).
        specials: Role and turn tokens added right after the base pieces.
    """

    def __init__(self, base_size: int, specials: Sequence[str] = SPECIALS):
        self.base_size = base_size
        self.ranges: dict[str, TokenRange] = {}
        self._tokens: list[str] = []  # added tokens, id = base_size + index
        self._ids: dict[str, int] = {}
        for token in specials:
            self.add_token(token)

    def __len__(self) -> int:
        return self.base_size + len(self._tokens)

    def add_token(self, token: str) -> int:
        """Append one plain added token (a role tag or ``<-Res->``); returns its id, or the existing one."""
        if token in self._ids:
            return self._ids[token]
        self._ids[token] = len(self)
        self._tokens.append(token)
        self._pattern = None
        return self._ids[token]

    def register(self, modality: str, prefix: str, size: int, start_tag: str, end_tag: str) -> TokenRange:
        """Append a modality's code tokens and tags; returns its range."""
        if modality in self.ranges:
            raise AnyGPTError(f"modality {modality!r} is registered twice")
        if size <= 0:
            raise AnyGPTError(f"modality {modality!r} needs a positive vocab size, got {size}")
        clash = [t for t in (start_tag, end_tag, f"<{prefix}0>") if t in self._ids]
        if clash:
            raise AnyGPTError(f"modality {modality!r}: tokens {clash} are already in the vocabulary")
        start = len(self)
        for i in range(size):
            self.add_token(f"<{prefix}{i}>")
        bos, eos = self.add_token(start_tag), self.add_token(end_tag)
        rng = TokenRange(modality, start, size, bos, eos, prefix, start_tag, end_tag)
        self.ranges[modality] = rng
        return rng

    def token_strings(self) -> list[str]:
        """Every added token string in id order (to add to a text tokenizer)."""
        return list(self._tokens)

    def token_id(self, token: str) -> int:
        """Id of an added token string."""
        try:
            return self._ids[token]
        except KeyError:
            raise AnyGPTError(f"{token!r} is not an added token of this vocabulary") from None

    def modality_of(self, lm_id: int) -> str | None:
        """The modality whose code block or tags hold ``lm_id``, else None."""
        for name, rng in self.ranges.items():
            if rng.start <= lm_id <= rng.eos:
                return name
        return None

    @classmethod
    def from_tokenizer(cls, tokenizer: Mapping[str, int] | object, codecs: Mapping[str, object] | Iterable) -> VocabLayout:
        """Rebuild the layout held by a released tokenizer and check it against the codecs.

        The added tokens are read in id order: a run ``<{prefix}0>``, ``<{prefix}1>``, ... followed by two tags
        is a modality block (named after the codec with that prefix, or after AnyGPT's modality for a block
        whose codec is not configured); every other token is a plain added token.

        Args:
            tokenizer: A ``TextTokenizer``, anything with ``get_vocab()``, or a token-to-id mapping.
            codecs: Codecs (``ModalityCodec``) whose blocks must be present with their size and tags.

        Raises:
            AnyGPTError: A role token or codec block is missing, or a block is not contiguous or has the wrong
                size or tags.
        """
        vocab = tokenizer if isinstance(tokenizer, Mapping) else tokenizer.get_vocab()
        codecs = list(codecs.values()) if isinstance(codecs, Mapping) else list(codecs)
        missing = [t for t in SPECIALS if t not in vocab]
        if missing:
            raise AnyGPTError(f"tokenizer lacks the AnyGPT tokens {missing}: it is not a released AnyGPT tokenizer")
        base = min(vocab[t] for t in SPECIALS)
        added = sorted((i, t) for t, i in vocab.items() if i >= base)
        if [i for i, _ in added] != list(range(base, base + len(added))):
            raise AnyGPTError(f"tokenizer's added tokens are not contiguous from id {base}")
        by_prefix = {c.token_prefix: c for c in codecs}
        layout = cls(base_size=base, specials=())
        tokens = [t for _, t in added]
        k = 0
        while k < len(tokens):
            match = _CODE.fullmatch(tokens[k])
            if not (match and match.group(2) == "0"):
                layout.add_token(tokens[k])
                k += 1
                continue
            prefix, size = match.group(1), 0
            while k + size < len(tokens) and tokens[k + size] == f"<{prefix}{size}>":
                size += 1
            if k + size + 2 > len(tokens):
                raise AnyGPTError(f"tokenizer's <{prefix}*> block has no start and end tags after it")
            codec = by_prefix.get(prefix)
            name = codec.modality if codec else ANYGPT_PREFIXES.get(prefix, f"unconfigured:{prefix}")
            layout.register(name, prefix, size, tokens[k + size], tokens[k + size + 1])
            k += size + 2
        for codec in codecs:
            found = layout.ranges.get(codec.modality)
            expected = (codec.token_prefix, codec.vocab_size, codec.start_tag, codec.end_tag)
            if found is None:
                raise AnyGPTError(f"tokenizer has no {codec.modality} tokens (<{codec.token_prefix}0> is missing)")
            if (found.prefix, found.size, found.start_tag, found.end_tag) != expected:
                raise AnyGPTError(
                    f"tokenizer's {codec.modality} block is {found.size} x <{found.prefix}i> with tags "
                    f"{found.start_tag}/{found.end_tag}; the codec needs {codec.vocab_size} x <{codec.token_prefix}i> "
                    f"with {codec.start_tag}/{codec.end_tag}"
                )
        return layout

    # --- the string form, used only to read and write AnyGPT-format data files ---

    def _regex(self) -> re.Pattern:
        if getattr(self, "_pattern", None) is None:
            plain = [t for t, i in self._ids.items() if not any(r.contains(i) for r in self.ranges.values())]
            parts = [re.escape(t) for t in sorted(plain, key=len, reverse=True)]
            prefixes = sorted((re.escape(r.prefix) for r in self.ranges.values()), key=len, reverse=True)
            if prefixes:
                parts.append(f"<(?:{'|'.join(prefixes)})\\d+>")
            self._pattern = re.compile("|".join(parts))
        return self._pattern

    def ids_from_string(self, s: str) -> list[int]:
        """Ids of a string made only of added tokens (``<somu><🎶12>...<eomu>``); anything else is an error."""
        ids, pos = [], 0
        for match in self._regex().finditer(s):
            token = match.group()
            if match.start() != pos or token not in self._ids:
                break
            ids.append(self._ids[token])
            pos = match.end()
        if pos != len(s):
            token = re.match(r"<[^<>]*>|\[[^\[\]]*\]", s[pos:])
            what = f"unknown token {token.group()!r}" if token else f"unexpected text {s[pos:pos + 20]!r}"
            raise AnyGPTError(f"{what} at character {pos} of a token string")
        return ids

    def string_from_ids(self, ids: Iterable[int]) -> str:
        """Inverse of ``ids_from_string`` (added-token ids only)."""
        out = []
        for i in ids:
            i = int(i)
            if not self.base_size <= i < len(self):
                raise AnyGPTError(f"id {i} is not an added token (added ids are {self.base_size}..{len(self) - 1})")
            out.append(self._tokens[i - self.base_size])
        return "".join(out)
