"""The turns of a chat reply: what one pending reply needs (prompt, grammar, voice), and how its generated ids
become the reply and the history. Shared by batch answering (``anygpt.lm.chat_session``) and streaming
(``anygpt.lm.chat_stream``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from anygpt import AnyGPTError
from anygpt.data.chat import ChatTurn, Conversation
from anygpt.lm.chat import chat_prompt_ids, parse_reply, user_message
from anygpt.lm.decoding.grammar import ReplyGrammar
from anygpt.messages import one_line
from anygpt.tokenizers.base import decode_options, encode_voice_prompt

log = logging.getLogger(__name__)


@dataclass
class ReplyState:
    """A conversation being answered: its response, history (prompt text or generated ids), next turn, reply
    count and encoded voice."""

    conversation: Conversation
    response: dict
    history: list = field(default_factory=list)
    position: int = 0
    round: int = 0
    voice: Any = None


@dataclass
class ReplyJob:
    """One reply to generate: its turn, user message, prompt ids, grammar and the exchanges dropped to fit."""

    state: ReplyState
    turn: int
    message: str
    prompt: list[int]
    grammar: ReplyGrammar
    dropped: int


def reply_seed(state: ReplyState) -> int:
    return int(state.conversation.seed or 0) + state.round


def next_job(model, state: ReplyState, budget: int, drop_history: bool) -> ReplyJob | None:
    """Take history turns up to the next user turn that needs a reply; None when none is left."""
    conversation, turns = state.conversation, state.conversation.turns
    if state.voice is None and conversation.voice_prompt:
        codec = model.codecs.get("speech")
        if codec is None or not hasattr(codec, "encode_prompt"):
            raise AnyGPTError("a voice prompt needs a speech codec that reads prompts")
        state.voice = encode_voice_prompt(codec, conversation.voice_prompt)
    while state.position < len(turns):
        number, turn = state.position, turns[state.position]
        if turn.role != "user":
            raise AnyGPTError(f"turn {number} is the assistant's but follows no user turn")
        message = user_message(turn.text, [(m, span_string(model, m, p, number)) for m, p in turn.media])
        state.position += 1
        following = turns[state.position] if state.position < len(turns) else None
        if following is not None and following.role == "assistant":
            state.history.append((message, assistant_text(model, following, state.position)))
            state.position += 1
            continue
        return make_job(model, state, number, message, turn, budget, drop_history)
    return None


def make_job(model, state: ReplyState, number: int, message: str, turn: ChatTurn, budget: int,
             drop_history: bool) -> ReplyJob:
    limit = getattr(model.backbone.config, "max_position_embeddings", None) or float("inf")
    dropped = 0
    prompt = chat_prompt_ids(model.tokenizer, state.history, message)
    while len(prompt) + budget > limit and state.history and drop_history:
        state.history.pop(0)
        dropped += 1
        prompt = chat_prompt_ids(model.tokenizer, state.history, message)
    if len(prompt) + budget > limit:
        what = "the history" if state.history else "the message"
        raise AnyGPTError(f"turn {number}: a prompt of {len(prompt)} tokens ({what}) + {budget} reply tokens "
                          f"exceeds the model's context of {limit}")
    if dropped:
        log.warning("conversation %s, turn %d: dropped the %d oldest exchanges to fit the context of %d tokens",
                    state.conversation.id, number, dropped, limit)
    ranges = {m: model.layout.ranges[m] for m in model.codecs}
    presets = {"text": model.presets["chat"], **{m: model.presets.get(m, model.presets["text"]) for m in ranges}}
    if turn.speak and "speech" not in ranges:
        raise AnyGPTError(f"turn {number}: a spoken reply needs a speech codec")
    grammar = ReplyGrammar(ranges, model.codecs, presets, model.stop_ids, [(0, model.layout.base_size)],
                           require=["speech"] if turn.speak else [], enforce=model.grammar)
    return ReplyJob(state, number, message, prompt, grammar, dropped)


def span_string(model, modality: str, path: str, number: int) -> str:
    if modality not in model.codecs:
        known = ", ".join(model.codecs) or "none"
        raise AnyGPTError(f"turn {number}: unknown attachment type {modality!r} (this model takes {known})")
    try:
        codes = model.codecs[modality].encode([path])[0]
    except AnyGPTError as err:
        raise AnyGPTError(f"turn {number}: {modality} {err}") from err
    return model.layout.string_from_ids(model.layout.ranges[modality].span(codes))


def assistant_text(model, turn: ChatTurn, number: int) -> str:
    """A given assistant turn as reply text: its text, then its media as token strings, space-separated."""
    spans = [span_string(model, m, p, number) for m, p in turn.media]
    return " ".join(part for part in [turn.text, *spans] if part)


def finish_reply(model, job: ReplyJob, generated: list[int], decoded: list[tuple[str, Any, Any]] = ()) -> None:
    """Parse a generated reply into the response and the history; ``decoded`` holds ``(modality, codes, media)``
    of spans already decoded while streaming, reused where the parsed span is the same."""
    state = job.state
    ranges = {m: model.layout.ranges[m] for m in model.codecs}
    parsed = parse_reply(generated, model.tokenizer, ranges, model.codecs, model.stop_ids)
    seed = reply_seed(state)
    media = []
    for i, (modality, codes) in enumerate(parsed.spans):
        codec = model.codecs[modality]
        done = decoded[i] if i < len(decoded) else None
        item = {"modality": modality, "codes": len(codes),
                "media": decode_span(codec, modality, codes, span_options(model, modality, seed, state.voice), done)}
        if hasattr(codec, "sample_rate"):
            item["sample_rate"] = codec.sample_rate
        media.append(item)
    state.response["replies"].append({
        "turn": job.turn, "seed": seed, "text": parsed.text, "media": media, "truncated": parsed.truncated,
        "prompt_tokens": len(job.prompt), "generated_tokens": len(generated), "dropped_turns": job.dropped})
    state.history.append((job.message, parsed.ids))
    state.round += 1


def decode_span(codec, modality: str, codes: torch.Tensor, options: dict, done: tuple | None = None):
    """A span's media: ``done`` (``(modality, codes, media)``, decoded while streaming) where it is this span,
    else ``codec.decode`` now."""
    if done is not None and done[0] == modality and torch.equal(done[1], codes):
        return done[2]
    return codec.decode([codes], **options)[0]


def span_options(model, modality: str, seed: int, voice: Any) -> dict:
    """``decode`` options of one reply span: the reply's seed, the modality preset's decoder steps, the voice."""
    steps = model.presets.get(modality, model.presets["text"]).decoder_steps
    return decode_options(model.codecs[modality], seed, steps, voice)


def fail_state(state: ReplyState, err: Exception, turn: int | None = None) -> None:
    where = f"conversation {state.conversation.id}" + ("" if turn is None else f", turn {turn}")
    state.response.update(status="error", error=f"{where}: {one_line(err, with_type=True)}")
