"""The chat reply grammar as batched tensors: ``ReplyGrammar``'s mask, state and segment presets on the device.

A reply is text, media spans in any order (each opened by its start tag, filled by its codec's grammar, closed by its
end tag) and a stop token, which modalities in ``require`` must precede. ``ReplyTensors`` holds one such state per
row and reproduces ``ReplyGrammar.allowed()`` and ``step()`` with tensor ops only (no host syncs, no data-dependent
Python), so the step of a fast decode loop can be captured in a CUDA graph. ``segment()`` says which sampling preset
each row is in (0 text, ``1 + k`` inside a span of modality ``k``), for samplers that keep one parameter row per
preset. Codecs whose rule is not a fixed table of layer ranges cannot be expressed: ``from_grammars`` returns None.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from anygpt.lm.decoding.gpu_grammar import _end_rule, _layer_table, layer_ranges, span_rule, token_in
from anygpt.lm.decoding.grammar import ReplyGrammar

TEXT, SPAN, DONE = 0, 2, 3  # the phases of gpu_grammar (a reply has no lead-in)


class ReplyTensors:
    """The state and rules of one ``ReplyGrammar`` per row, as tensors on one device.

    Build it with ``from_grammars``: the rows share their modalities, codecs and stop ids (one model) and may differ
    in ``require``, ``enforce`` and state. ``mask()`` gives the tokens each row may generate next, ``advance()``
    applies a step in place (tensors keep their storage), ``finished()`` and ``segment()`` read the state.

    Attributes:
        modalities: The modalities in the order of ``segment()`` (``1 + k`` is ``modalities[k]``).
        presets: Sampling preset of each segment: the text preset, then one per modality.
        phase: ``[B]`` long, 0 text, 2 inside a span, 3 done.
        modality: ``[B]`` long, the open span's modality index, -1 in text.
        span_codes: ``[B]`` long, codes of the open span so far.
        spans: ``[B, M]`` long, spans each row has closed, per modality.
    """

    def __init__(self, modalities: list[str], presets: list, **tensors: torch.Tensor):
        self.modalities, self.presets = modalities, presets
        for name, value in tensors.items():
            setattr(self, name, value)

    @classmethod
    def from_grammars(cls, grammars: Sequence[ReplyGrammar], vocab_size: int, device=None) -> ReplyTensors | None:
        """Tensors for ``grammars`` (one per row, in their current state), or None where they cannot be expressed:
        a row that is not a ``ReplyGrammar``, rows of other modalities, codecs or stop ids than the first row's, or an
        enforced codec whose ``allowed`` is not a periodic table of layer ranges or whose ``can_end`` is neither
        ``== span_length`` nor "a positive multiple of m"."""
        if not grammars or any(type(g) is not ReplyGrammar for g in grammars):
            return None
        first = grammars[0]
        modalities = list(first.ranges)
        for g in grammars:
            if (list(g.ranges) != modalities or g.stop_ids != first.stop_ids or g.text_ranges != first.text_ranges
                    or any(g.codecs[m] is not first.codecs[m] or g.ranges[m] != first.ranges[m] for m in modalities)):
                return None
        rules = []
        for m in modalities:
            codec = first.codecs[m]
            table, every = _layer_table(codec), _end_rule(codec)
            if table is None or every is None:
                if any(g.enforce for g in grammars):
                    return None
                table, every = [(0, 0)], 1
            rules.append((table, every))
        ranges = [first.ranges[m] for m in modalities]

        def ids_mask(ids) -> torch.Tensor:
            out = torch.zeros(vocab_size, dtype=torch.bool)
            out[[i for i in ids if 0 <= i < vocab_size]] = True
            return out

        text = torch.zeros(vocab_size, dtype=torch.bool)
        for low, high in first.text_ranges:
            text[max(low, 0):max(high, 0)] = True
        lows, highs = layer_ranges([table for table, _ in rules])
        index = {m: k for k, m in enumerate(modalities)}
        span_length = [first.codecs[m].span_length for m in modalities]
        tensors = dict(
            phase=torch.tensor([{"text": TEXT, "span": SPAN, "done": DONE}[g.state] for g in grammars]),
            modality=torch.tensor([index[g.modality] if g.state == "span" else -1 for g in grammars]),
            span_codes=torch.tensor([g.span_codes for g in grammars]),
            spans=torch.tensor([[g.done[m] for m in modalities] for g in grammars], dtype=torch.long),
            require=torch.tensor([[m in g.require for m in modalities] for g in grammars], dtype=torch.bool),
            enforce=torch.tensor([g.enforce for g in grammars], dtype=torch.bool),
            bos=torch.tensor([r.bos for r in ranges]), eos=torch.tensor([r.eos for r in ranges]),
            start=torch.tensor([r.start for r in ranges]), lows=lows, highs=highs,
            layers=torch.tensor([len(t) for t, _ in rules]),
            span_length=torch.tensor([-1 if n is None else n for n in span_length]),
            end_every=torch.tensor([every for _, every in rules]),
            text=text[None, :], opens=ids_mask(r.bos for r in ranges)[None, :],
            stops=ids_mask(first.stop_ids)[None, :], vocab_ids=torch.arange(vocab_size)[None, :],
        )
        presets = [first.presets["text"], *(first.presets.get(m, first.presets["text"]) for m in modalities)]
        return cls(modalities, presets, **{name: t.to(device) for name, t in tensors.items()})

    def _of_open(self, table: torch.Tensor) -> torch.Tensor:
        """``[B]`` values of a per-modality ``[M]`` table for each row's open span (row 0's in text: unused)."""
        return table[self.modality.clamp(min=0)]

    def mask(self) -> torch.Tensor:
        """``[B, V]`` bool, True where a token is legal next: ``ReplyGrammar.allowed()``."""
        ids, k = self.vocab_ids, self.modality.clamp(min=0)
        complete = ((self.spans > 0) | ~self.require).all(dim=1)
        text = self.text | self.opens | (self.stops & complete[:, None])
        codes, can_end, _ = span_rule(ids, self.span_codes, self._of_open(self.start), self.lows[k], self.highs[k],
                                      self._of_open(self.layers), self._of_open(self.span_length),
                                      self._of_open(self.end_every))
        span = codes | ((ids == self._of_open(self.eos)[:, None]) & can_end[:, None])
        rule = torch.where((self.phase == TEXT)[:, None], text, span)
        return rule | (~self.enforce | (self.phase == DONE))[:, None]

    def advance(self, tokens: torch.Tensor, live: torch.Tensor) -> None:
        """``ReplyGrammar.step(token)`` for the rows where ``live`` is True, in place; other rows are unchanged.

        Args:
            tokens: ``[B]`` long, the generated token of each row.
            live: ``[B]`` bool, the rows that generated a token this step.
        """
        tokens = tokens.long()
        stop = token_in(self.stops, tokens)
        opened = (tokens[:, None] == self.bos[None, :])  # [B, M]
        opens = opened.any(dim=1) & ~stop
        closes = (self.phase == SPAN) & (tokens == self._of_open(self.eos))
        in_text, in_span = live & (self.phase == TEXT), live & (self.phase == SPAN)
        ends = (in_text & stop) | (in_span & ~closes & stop & ~self.enforce)
        starts = in_text & ~stop & opens
        counted = in_span & ~closes & ~ends
        closed = torch.nn.functional.one_hot(self.modality.clamp(min=0), len(self.modalities)).bool()
        self.spans.copy_(self.spans + ((in_span & closes)[:, None] & closed).long())
        self.span_codes.copy_(torch.where(starts, 0, self.span_codes + counted.long()))
        self.modality.copy_(torch.where(starts, opened.long().argmax(dim=1),
                                        torch.where(in_span & closes, -1, self.modality)))
        phase = torch.where(ends, DONE, torch.where(starts, SPAN, self.phase))
        self.phase.copy_(torch.where(in_span & closes, TEXT, phase))

    def finished(self) -> torch.Tensor:
        """``[B]`` bool, True for the rows that are done."""
        return self.phase == DONE

    def segment(self) -> torch.Tensor:
        """``[B]`` long: the preset each row samples with next, 0 (text) or ``1 + k`` (a span of ``modalities[k]``)."""
        return self.modality + 1

    def row_params(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The sampling tensors of this step: ``params`` holds ``[B, S]`` tensors, a column per segment preset
        (``segment_params``); each row takes its current segment's."""
        segment = self.segment()[:, None]
        return {name: value.gather(1, segment)[:, 0] for name, value in params.items()}

    def segment_params(self, batch: int, device=None) -> dict[str, torch.Tensor]:
        """``[B, S]`` sampling tensors of the segment presets (the same for every row), for ``row_params``."""
        from anygpt.lm.decoding.gpu_sampling import sampling_tensors

        columns = [sampling_tensors([preset] * batch, device) for preset in self.presets]
        return {name: torch.stack([c[name] for c in columns], dim=1) for name in columns[0]}
