"""Chat replies and predict requests as streams of events, while they are generated
(``UnifiedLM.chat(..., stream=True)``, ``UnifiedLM.stream(request)``).

Events are dicts with a ``type``:

- ``text``: ``{"text": delta}``; the deltas of a reply join to its ``text``.
- ``audio``: ``{"audio": waveform [1, L], "sample_rate": ...}``, a chunk of a speech span while it is generated
  (``anygpt.tokenizers.streaming.ChunkedDecoder``); a span's chunks join to about its whole decode.
- ``speech`` / ``image`` / ``music`` (the span's modality): ``{"media": ..., "codes": n}``, a finished span decoded
  as the whole reply decodes it (``sample_rate`` for audio). A plug-in modality named ``audio`` shares its type
  with the speech chunks: tell them apart by ``media``, which only finished spans carry.
- ``done``: ``{"reply": ...}``, the reply exactly as ``chat(..., stream=False)`` returns it (a request's:
  ``{"response": ...}``, as ``predict`` writes it).

Earlier user turns that still lack replies are answered first, without events; the last one streams.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from anygpt import AnyGPTError
from anygpt.data.chat import Conversation
from anygpt.lm.chat_turns import ReplyState, finish_reply, next_job, reply_seed, span_options
from anygpt.lm.decoding.loop import generate, generate_stream
from anygpt.tokenizers.base import complete_length
from anygpt.tokenizers.streaming import ChunkedDecoder


def stream_chat(model, conversation: Conversation, max_reply_tokens: int | None = None, drop_history: bool = True,
                chunk: int = 25, context: int = 50, lookahead: int = 4) -> Iterator[dict]:
    """Events of the reply to the last user turn of ``conversation`` (see the module); raises ``AnyGPTError``
    with one line when it cannot be answered. ``chunk``, ``context``, ``lookahead``: the speech chunking, in
    codes (``ChunkedDecoder``)."""
    state = ReplyState(conversation, {"id": conversation.id, "status": "ok", "replies": []})
    return stream_state(model, state, max_reply_tokens, drop_history, chunk, context, lookahead)


def stream_state(model, state: ReplyState, max_reply_tokens: int | None = None, drop_history: bool = True,
                 chunk: int = 25, context: int = 50, lookahead: int = 4) -> Iterator[dict]:
    """``stream_chat`` on a conversation already in progress (its history and reply count in ``state``)."""
    conversation, response = state.conversation, state.response
    budget = max_reply_tokens or model.presets["chat"].max_new_tokens
    preset = replace(model.presets["chat"], max_new_tokens=budget)
    pad = model.tokenizer.pad_id
    while True:
        job = next_job(model, state, budget, drop_history)
        seed = reply_seed(state)
        if job is None:
            raise AnyGPTError(f"conversation {conversation.id}: no user turn left to answer")
        if state.position < len(conversation.turns):  # an earlier turn: answered whole, no events
            [generated] = generate(model.backbone, [job.prompt], [preset], [job.grammar], [seed], pad_id=pad)
            finish_reply(model, job, generated)
            continue
        events = ReplyEvents(model, seed, state.voice, chunk, context, lookahead)
        generated = yield from events.follow(generate_stream(model.backbone, [job.prompt], [preset], [job.grammar],
                                                             [seed], pad_id=pad))
        finish_reply(model, job, generated, events.decoded)
        yield {"type": "done", "reply": response["replies"][-1]}
        return


class ReplyEvents:
    """Turns the ids of one reply, fed one at a time, into events (the same reading as ``parse_reply``).

    Args:
        model: The ``UnifiedLM``.
        seed: The reply's seed (its spans decode with it).
        voice: Encoded voice prompt of spoken replies, or None.
        chunk, context, lookahead: Speech chunking, in codes.
        options: ``decode`` options of every span (a predict request's); None: each span's from its modality.
    """

    def __init__(self, model, seed: int, voice=None, chunk: int = 25, context: int = 50, lookahead: int = 4,
                 options: dict | None = None):
        self.model, self.seed, self.voice, self.given_options = model, seed, voice, options
        self.chunking = {"chunk": chunk, "context": context, "lookahead": lookahead}
        self.ranges = {m: model.layout.ranges[m] for m in model.codecs}
        self.starts = {rng.bos: m for m, rng in self.ranges.items()}
        self.stops = set(model.stop_ids)
        self.run: list[int] = []
        self.shown, self.spoken = "", False  # this text run's text so far; whether any text was emitted
        self.modality: str | None = None
        self.codes: list[int] = []
        self.chunker: ChunkedDecoder | None = None
        self.decoded: list[tuple] = []  # (modality, codes, media) of each finished span
        self.finished = False

    def feed(self, token: int) -> Iterator[dict]:
        if self.finished:
            return
        if self.modality is None:
            if token in self.stops or token in self.starts:
                yield from self._text(final=True)
                self.run, self.shown = [], ""
                if token in self.stops:
                    self.finished = True
                else:
                    self._open(self.starts[token])
                return
            self.run.append(token)
            yield from self._text(final=False)
        elif token == self.ranges[self.modality].eos:
            yield from self._close_span(len(self.codes))
        elif token in self.stops:  # only without the grammar: the reply ends inside a span
            self.finished = True
            yield from self._close_span(complete_length(self.model.codecs[self.modality], len(self.codes)))
        else:
            self.codes.append(int(self.ranges[self.modality].from_lm([token])[0]))
            for wav in self.chunker.push(self.codes[-1]) if self.chunker else ():
                yield self._audio(wav)

    def follow(self, steps: Iterator[list[list[int]]]) -> Iterator[dict]:
        """The events of a one-row ``generate_stream`` while it runs, then ``close``'s; returns the generated ids."""
        generated: list[int] = []
        for new in steps:
            for token in new[0]:
                generated.append(token)
                yield from self.feed(token)
        yield from self.close()
        return generated

    def close(self) -> Iterator[dict]:
        """Events of what the budget cut: the open text run, or an open span's complete prefix."""
        if self.finished:
            return
        self.finished = True
        if self.modality is None:
            yield from self._text(final=True)
        else:
            yield from self._close_span(complete_length(self.model.codecs[self.modality], len(self.codes)))

    def _text(self, final: bool) -> Iterator[dict]:
        text = self.model.tokenizer.decode(self.run, skip_special_tokens=True).strip()
        if not final:
            text = text.rstrip("\ufffd")  # an unfinished UTF-8 sequence waits for its last bytes
        if not text.startswith(self.shown) or len(text) == len(self.shown):
            return
        delta = text[len(self.shown):]
        if not self.shown and self.spoken:
            delta = " " + delta  # parse_reply joins the text runs around a span with one space
        self.shown, self.spoken = text, True
        yield {"type": "text", "text": delta}

    def _open(self, modality: str) -> None:
        self.modality, self.codes = modality, []
        codec = self.model.codecs[modality]
        self.options = self.given_options
        if self.options is None:
            self.options = span_options(self.model, modality, self.seed, self.voice)
        self.chunker = ChunkedDecoder(codec, self.options, **self.chunking) if modality == "speech" else None

    def _close_span(self, length: int) -> Iterator[dict]:
        import torch

        modality, codec = self.modality, self.model.codecs[self.modality]
        if self.chunker is not None:
            rest = self.chunker.finish(length)
            if rest is not None:
                yield self._audio(rest)
        self.modality, self.chunker = None, None
        if length == 0:
            return
        codes = torch.tensor(self.codes[:length], dtype=torch.long)
        media = codec.decode([codes], **self.options)[0]
        self.decoded.append((modality, codes, media))
        event = {"type": modality, "media": media, "codes": length}
        if hasattr(codec, "sample_rate"):
            event["sample_rate"] = codec.sample_rate
        yield event

    def _audio(self, wav) -> dict:
        return {"type": "audio", "audio": wav, "sample_rate": self.model.codecs["speech"].sample_rate}


def stream_request(model, request, chunk: int = 25, context: int = 50, lookahead: int = 4) -> Iterator[dict]:
    """Events of one predict request (``anygpt.data.requests.Request``) while it is generated; raises
    ``AnyGPTError`` with one line for a request that cannot be answered."""
    if request.error:
        raise AnyGPTError(request.error)
    response = {"index": request.index, "request": request.line, "source": request.source,
                "target": request.target, "content": request.content, "status": "ok"}
    if request.voice_prompt:
        response["voice_prompt"] = request.voice_prompt
    prompt, preset, grammar, options, unconditional = model._prepare(request, response)
    events = ReplyEvents(model, request.seed, None, chunk, context, lookahead, options=options)
    generated = yield from events.follow(generate_stream(model.backbone, [prompt], [preset], [grammar], [request.seed],
                                                         pad_id=model.tokenizer.pad_id, unconditional=[unconditional]))
    model._finish(request, response, generated, options, events.decoded)  # the span decoded once
    yield {"type": "done", "response": response}
