"""The span grammar as batched tensors, for a decode loop that stays on the device.

``GrammarTensors`` holds the state of one ``SpanGrammar`` per row as tensors and reproduces its
``allowed()``/``blocked_stops()`` mask and its ``step()`` without host syncs or data-dependent Python, so a
decode step can be captured in a CUDA graph. Codecs whose rule is not a fixed table of layer ranges (slot p
holds codes ``[low, high)`` of layer ``p % layers``) cannot be expressed: ``from_grammars`` then returns None
and the caller keeps the Python grammar.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from anygpt.lm.decoding.grammar import SpanGrammar
from anygpt.tokenizers.base import span_can_end

TEXT, LEAD, SPAN, DONE = 0, 1, 2, 3
_PHASES = {"text": TEXT, "lead": LEAD, "span": SPAN, "done": DONE}
_PROBE_POSITIONS = 32  # positions of ``allowed`` probed; a period must repeat at least twice in them
_PROBE_LENGTHS = 65  # span lengths 0..64 probed for ``can_end``


def _layer_table(codec) -> list[tuple[int, int]] | None:
    """The ``(low, high)`` of each layer when ``codec.allowed`` is periodic over the probed positions."""
    length = codec.span_length
    n = _PROBE_POSITIONS if length is None else min(_PROBE_POSITIONS, length)  # past a full span: never asked
    probed = [tuple(int(v) for v in codec.allowed(p)) for p in range(n)]
    limit = n if n < _PROBE_POSITIONS else n // 2  # every position seen, or two whole periods
    for period in range(1, max(limit, 1) + 1):
        if all(probed[p] == probed[p % period] for p in range(n)):
            return probed[:period] or [(0, 0)]
    return None


def _end_rule(codec) -> int | None:
    """0 where spans end exactly at ``span_length``, m > 0 where they end after any positive multiple of m."""
    length = codec.span_length
    lengths = range(_PROBE_LENGTHS) if length is None else sorted({*range(_PROBE_LENGTHS), length, length + 1})
    ends = [bool(span_can_end(codec, n)) for n in lengths]
    if length is not None and ends == [n == length for n in lengths]:
        return 0
    for every in range(1, _PROBE_LENGTHS):
        if ends == [n > 0 and n % every == 0 for n in lengths]:
            return every
    return None


def layer_ranges(tables: Sequence[Sequence[tuple[int, int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``lows``, ``highs`` ``[N, W]`` long of N layer tables (``(low, high)`` per layer), zero-padded to the widest."""
    width = max((len(t) for t in tables), default=1)
    lows = torch.zeros(len(tables), width, dtype=torch.long)
    highs = torch.zeros(len(tables), width, dtype=torch.long)
    for i, table in enumerate(tables):
        lows[i, :len(table)] = torch.tensor([low for low, _ in table])
        highs[i, :len(table)] = torch.tensor([high for _, high in table])
    return lows, highs


def span_rule(ids: torch.Tensor, codes: torch.Tensor, start: torch.Tensor, lows: torch.Tensor, highs: torch.Tensor,
              layers: torch.Tensor, span_length: torch.Tensor,
              end_every: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inside a span that holds ``codes [B]`` codes: the code ids legal next ``[B, V]``, whether the span may end
    here ``[B]`` and whether it is full ``[B]``, from each row's codec rule (``start`` of its code block, layer
    table ``lows``/``highs [B, W]`` of ``layers`` entries, ``span_length`` or -1, ``end_every``: 0 ends exactly at
    ``span_length``, m > 0 after any positive multiple of m)."""
    full = (span_length >= 0) & (codes >= span_length)
    layer = (codes % layers)[:, None]
    low, high = start[:, None] + lows.gather(1, layer), start[:, None] + highs.gather(1, layer)
    legal = (ids >= low) & (ids < high) & ~full[:, None]
    can_end = torch.where(end_every > 0, (codes > 0) & (codes % end_every.clamp(min=1) == 0), codes == span_length)
    return legal, can_end, full


def token_in(ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: is each row's token among the ids marked in ``ids`` (``[B, V]`` or ``[1, V]`` bool)? A token
    outside the vocabulary is not."""
    vocab = ids.shape[1]
    inside = (tokens >= 0) & (tokens < vocab)
    return ids.expand(len(tokens), -1).gather(1, tokens.clamp(0, vocab - 1)[:, None])[:, 0] & inside


class GrammarTensors:
    """The state and rules of one ``SpanGrammar`` per row, as tensors on one device.

    Build it with ``from_grammars``. ``mask()`` gives the tokens each row may generate next, ``advance()``
    applies a step in place (tensors keep their storage), ``finished()`` says which rows are done.

    Attributes:
        phase: ``[B]`` long, 0 text, 1 lead-in, 2 inside the span, 3 done.
        generated, span_codes, lead_in: ``[B]`` long counters of ``SpanGrammar``.
    """

    def __init__(self, **tensors: torch.Tensor):
        for name, value in tensors.items():
            setattr(self, name, value)

    @classmethod
    def from_grammars(cls, grammars: Sequence[SpanGrammar], vocab_size: int, device=None) -> GrammarTensors | None:
        """Tensors for ``grammars`` (one per row, in their current state), or None where a row cannot be expressed.

        A row cannot be expressed when it is not a plain ``SpanGrammar``, or when its enforced codec's
        ``allowed`` is not a periodic table of layer ranges or its ``can_end`` is neither ``== span_length`` nor
        "a positive multiple of m".
        """
        rows = []
        for g in grammars:
            if type(g) is not SpanGrammar:
                return None
            table, end_every = [(0, 0)], 1
            if g.enforce and g.target is not None:
                if g.codec is None:
                    return None
                table, end_every = _layer_table(g.codec), _end_rule(g.codec)
                if table is None or end_every is None:
                    return None
            rows.append((g, table, end_every))
        batch = len(rows)

        def ids_mask(id_lists):
            out = torch.zeros(batch, vocab_size, dtype=torch.bool)
            for i, ids in enumerate(id_lists):
                ids = [j for j in ids if 0 <= j < vocab_size]
                out[i, ids] = True
            return out

        text = torch.ones(batch, vocab_size, dtype=torch.bool)
        for i, (g, _, _) in enumerate(rows):
            if g.text_ranges is not None:
                text[i] = False
                for low, high in g.text_ranges:
                    text[i, max(low, 0):max(high, 0)] = True
        lows, highs = layer_ranges([table for _, table, _ in rows])

        def column(values, dtype=torch.long):
            return torch.tensor(list(values), dtype=dtype)

        grammars = [g for g, _, _ in rows]
        none = -1  # no token id: never matches a sampled token
        span_length = [g.codec.span_length if g.codec is not None and g.codec.span_length is not None else -1
                       for g in grammars]
        tensors = dict(
            phase=column(_PHASES[g.state] for g in grammars),
            generated=column(g.generated for g in grammars),
            span_codes=column(g.span_codes for g in grammars),
            lead_in=column(g.lead_in for g in grammars),
            enforce=column((g.enforce for g in grammars), torch.bool),
            start=column(g.target.start if g.target is not None else none for g in grammars),
            bos=column(g.target.bos if g.target is not None else none for g in grammars),
            eos=column(g.target.eos if g.target is not None else none for g in grammars),
            lows=lows, highs=highs,
            layers=column(len(table) for _, table, _ in rows),
            span_length=column(span_length),
            end_every=column(every for _, _, every in rows),
            max_lead_in=column(g.max_lead_in for g in grammars),
            min_new_tokens=column(g.min_new_tokens for g in grammars),
            stops=ids_mask(g.stop_ids for g in grammars),
            lead_ids=ids_mask(g.lead_in_ids for g in grammars),
            text=text,
            vocab_ids=torch.arange(vocab_size, dtype=torch.long)[None, :],
        )
        return cls(**{name: t.to(device) for name, t in tensors.items()})

    def mask(self) -> torch.Tensor:
        """``[B, V]`` bool, True where a token is legal next: ``SpanGrammar.allowed()`` less ``blocked_stops()``."""
        ids, phase = self.vocab_ids, self.phase[:, None]
        lead = (ids == self.bos[:, None]) | (self.lead_ids & (self.lead_in < self.max_lead_in)[:, None])
        codes, can_end, full = span_rule(ids, self.span_codes, self.start, self.lows, self.highs, self.layers,
                                         self.span_length, self.end_every)
        close = can_end & (full | (self.generated >= self.min_new_tokens))
        span = codes | ((ids == self.eos[:, None]) & close[:, None])
        rule = torch.where(phase == TEXT, self.text, torch.where(phase == LEAD, lead, span))
        free = ~self.enforce[:, None] | (phase == DONE)
        blocked = (~self.enforce | (self.phase == TEXT)) & (self.generated < self.min_new_tokens)
        return (free | rule) & ~(self.stops & blocked[:, None])

    def advance(self, tokens: torch.Tensor, live: torch.Tensor) -> None:
        """``SpanGrammar.step(token)`` for the rows where ``live`` is True, in place; other rows are unchanged.

        Args:
            tokens: ``[B]`` long, the generated token of each row.
            live: ``[B]`` bool, the rows that generated a token this step.
        """
        tokens = tokens.long()
        stop = token_in(self.stops, tokens)
        phase = self.phase
        opens = (phase == LEAD) & (tokens == self.bos)
        lead_stop = (phase == LEAD) & ~opens & ~self.enforce & stop
        new_phase = torch.where(((phase == TEXT) | (phase == SPAN)) & stop, DONE, phase)
        new_phase = torch.where(opens, SPAN, torch.where(lead_stop, DONE, new_phase))
        lead_in = self.lead_in + ((phase == LEAD) & ~opens & ~lead_stop).long()
        span_codes = self.span_codes + ((phase == SPAN) & ~stop).long()
        self.generated.copy_(self.generated + live.long())
        self.phase.copy_(torch.where(live, new_phase, phase))
        self.lead_in.copy_(torch.where(live, lead_in, self.lead_in))
        self.span_codes.copy_(torch.where(live, span_codes, self.span_codes))

    def finished(self) -> torch.Tensor:
        """``[B]`` bool, True for the rows that are done."""
        return self.phase == DONE

    def row_params(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The sampling tensors of this step: one preset per row, so ``params`` as they are."""
        return params
