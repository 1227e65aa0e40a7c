"""The grammars of decoding: which tokens one request (``SpanGrammar``) or one chat reply (``ReplyGrammar``) may
generate next (text pieces, a media span's legal codes and its end tag, stop tokens), and when it is finished; as a
boolean mask for a batch."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import torch

from anygpt.lm.decoding.presets import GenerationPreset
from anygpt.tokenizers.base import span_can_end
from anygpt.tokenizers.vocab import TokenRange


def span_ranges(rng: TokenRange, codec, position: int, may_close: bool = True) -> list[tuple[int, int]]:
    """Half-open LM-id ranges legal at ``position`` inside a span: the codes the codec allows there (none once
    a fixed-length span is full), and the end tag where the span may end and ``may_close`` (a full span must
    close whatever ``may_close`` says)."""
    spans = []
    full = codec.span_length is not None and position >= codec.span_length
    if not full:
        low, high = codec.allowed(position)
        spans.append((rng.start + low, rng.start + high))
    if span_can_end(codec, position) and (full or may_close):
        spans.append((rng.eos, rng.eos + 1))
    return spans


class SpanGrammar:
    """Which tokens one request may generate next, and when it is finished.

    A text target may use ``text_ranges`` (the text pieces; None: any token) until a stop token. A media target may
    open with lead-in tokens (the whitespace piece that precedes a tag in the training data), must then open its
    span, fill it with codes that the codec allows at each position, and may close it only where the codec says the
    span is complete; the end tag finishes the request. With ``enforce=False`` nothing is masked and any stop token
    or the end tag finishes the request.

    Args:
        target: Range of the target modality, or None for text.
        codec: The target's codec (``allowed`` and ``can_end``), or None for text.
        stop_ids: Ids that end a text reply (``<eos>``, ``</s>``).
        lead_in_ids: Ids allowed before the start tag of a media span.
        enforce: Apply the grammar (False: only watch for stop tokens).
        min_new_tokens: Stop tokens are blocked before this many tokens.
        max_lead_in: Lead-in tokens allowed before the start tag.
        text_ranges: Half-open id ranges a text reply may use besides the stop tokens (None: any token).
    """

    def __init__(self, target: TokenRange | None, codec=None, stop_ids: Sequence[int] = (),
                 lead_in_ids: Sequence[int] = (), enforce: bool = True, min_new_tokens: int = 0, max_lead_in: int = 1,
                 text_ranges: Sequence[tuple[int, int]] | None = None):
        self.target, self.codec, self.enforce = target, codec, enforce
        self.text_ranges = None if text_ranges is None else [*text_ranges, *((i, i + 1) for i in stop_ids)]
        self.stop_ids = set(stop_ids) | ({target.eos} if target else set())
        self.lead_in_ids = list(lead_in_ids)
        self.min_new_tokens, self.max_lead_in = min_new_tokens, max_lead_in
        self.state = "text" if target is None else "lead"
        self.generated = 0
        self.span_codes = 0
        self.lead_in = 0

    @property
    def finished(self) -> bool:
        return self.state == "done"

    def allowed(self) -> list[tuple[int, int]] | None:
        """Half-open LM-id ranges legal next, or None for any token (stop tokens still obey min_new_tokens)."""
        if not self.enforce or self.state == "done":
            return None
        if self.state == "text":
            return self.text_ranges
        rng = self.target
        if self.state == "lead":
            ids = [rng.bos] + (self.lead_in_ids if self.lead_in < self.max_lead_in else [])
            return [(i, i + 1) for i in ids]
        return span_ranges(rng, self.codec, self.span_codes, may_close=self.generated >= self.min_new_tokens)

    def blocked_stops(self) -> list[int]:
        """Stop ids masked on top of ``allowed()`` because min_new_tokens are not out yet.

        Only where ``allowed()`` leaves stops open (free text, or the grammar off); inside an enforced span
        ``allowed()`` applies min_new_tokens itself.
        """
        free = not self.enforce or self.state == "text"
        return sorted(self.stop_ids) if free and self.generated < self.min_new_tokens else []

    def step(self, token: int) -> None:
        """Advance the state with a generated token."""
        self.generated += 1
        if self.state == "text":
            if token in self.stop_ids:
                self.state = "done"
        elif self.state == "lead":
            if token == self.target.bos:
                self.state = "span"
            elif self.enforce or token not in self.stop_ids:
                self.lead_in += 1
            else:
                self.state = "done"
        elif self.state == "span":
            if token in self.stop_ids:
                self.state = "done"
            else:
                self.span_codes += 1


class ReplyGrammar:
    """What a chat reply may generate next: text, media spans in any order, then a stop token.

    In text, the text pieces, every codec's start tag and the stop ids are allowed; a start tag opens a span
    whose codes follow the codec's ``allowed`` and which closes with its end tag once complete. ``preset`` is
    the sampling preset of the current segment. Modalities in ``require`` must have produced a span before a stop
    token is allowed (a spoken reply).

    Args:
        ranges: Token range of each codec modality.
        codecs: The codecs, by modality.
        presets: Sampling presets by modality (``text`` for text segments).
        stop_ids: Ids that end the reply (``<eos>``, ``</s>``).
        text_ranges: Half-open id ranges of text pieces.
        require: Modalities the reply must contain.
        enforce: Apply the grammar; False only watches for stops and tags (to switch presets).
    """

    def __init__(self, ranges: Mapping[str, TokenRange], codecs: Mapping, presets: Mapping[str, GenerationPreset],
                 stop_ids: Sequence[int], text_ranges: Sequence[tuple[int, int]], require: Sequence[str] = (),
                 enforce: bool = True):
        self.ranges, self.codecs, self.presets = dict(ranges), codecs, presets
        self.starts = {rng.bos: modality for modality, rng in self.ranges.items()}
        self.stop_ids, self.enforce = set(stop_ids), enforce
        self.text_ranges = _without(text_ranges, self.stop_ids)  # stops are added back only when allowed
        self.require = set(require)
        self.done: Counter = Counter()
        self.state, self.modality, self.span_codes = "text", None, 0
        self.preset = presets["text"]

    @property
    def finished(self) -> bool:
        return self.state == "done"

    def allowed(self) -> list[tuple[int, int]] | None:
        if not self.enforce or self.finished:
            return None
        if self.state == "text":
            spans = self.text_ranges + [(i, i + 1) for i in self.starts]
            if all(self.done[m] for m in self.require):
                spans += [(i, i + 1) for i in self.stop_ids]
            return spans
        return span_ranges(self.ranges[self.modality], self.codecs[self.modality], self.span_codes)

    def blocked_stops(self) -> list[int]:
        return []

    def step(self, token: int) -> None:
        if self.state == "text":
            if token in self.stop_ids:
                self.state = "done"
            elif token in self.starts:
                self.state, self.modality, self.span_codes = "span", self.starts[token], 0
                self.preset = self.presets.get(self.modality, self.presets["text"])
        elif token == self.ranges[self.modality].eos:
            self.done[self.modality] += 1
            self.state, self.modality, self.preset = "text", None, self.presets["text"]
        elif token in self.stop_ids and not self.enforce:
            self.state = "done"
        else:
            self.span_codes += 1


def _without(ranges: Sequence[tuple[int, int]], ids: set[int]) -> list[tuple[int, int]]:
    """Half-open ranges with the given ids cut out."""
    out = []
    for low, high in ranges:
        for i in sorted(i for i in ids if low <= i < high):
            out.append((low, i))
            low = i + 1
        out.append((low, high))
    return [(low, high) for low, high in out if low < high]


def _grammar_mask(grammars: Sequence[SpanGrammar], vocab: int, device) -> torch.Tensor | None:
    rows = [(i, g.allowed(), g.blocked_stops()) for i, g in enumerate(grammars)]
    if all(spans is None and not blocked for _, spans, blocked in rows):
        return None
    mask = torch.ones(len(grammars), vocab, dtype=torch.bool)
    for i, spans, blocked in rows:
        if spans is not None:
            mask[i] = False
            for low, high in spans:
                mask[i, low:high] = True
        for s in blocked:
            if s < vocab:
                mask[i, s] = False
    return mask.to(device)
