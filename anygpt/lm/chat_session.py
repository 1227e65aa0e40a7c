"""Answering conversations in batches: each round generates the next pending reply of every conversation.

A conversation fails alone (its error names it and the turn); the replies it produced before stay in its
response. When a prompt and its reply budget would overflow the model's context, the oldest exchanges are dropped
(``drop_history``) and the reply says how many.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from anygpt import AnyGPTError
from anygpt.data.chat import ChatTurn, Conversation
from anygpt.lm.chat import ReplyGrammar, chat_prompt_ids, parse_reply, user_message
from anygpt.lm.decoding.loop import generate
from anygpt.messages import one_line
from anygpt.tokenizers.base import decode_options, encode_voice_prompt

log = logging.getLogger(__name__)


@dataclass
class _State:
    conversation: Conversation
    response: dict
    history: list = field(default_factory=list)
    position: int = 0
    round: int = 0
    voice: Any = None


@dataclass
class _Job:
    state: _State
    turn: int
    message: str
    prompt: list[int]
    grammar: ReplyGrammar
    dropped: int


def answer(model, conversations: list[Conversation], max_reply_tokens: int | None = None,
           drop_history: bool = True) -> list[dict]:
    """One response per conversation: ``status``, ``replies`` (one per answered user turn) or ``error``.

    Args:
        model: A ``UnifiedLM``.
        conversations: Parsed conversations (``anygpt.data.chat.parse_conversation``).
        max_reply_tokens: Token budget of each reply; None: the ``chat`` preset's ``max_new_tokens``.
        drop_history: Drop the oldest exchanges when the context would overflow (False: fail the conversation).
    """
    responses, states = [], []
    for conversation in conversations:
        response = {"index": conversation.index, "id": conversation.id, "conversation": conversation.line,
                    "seed": conversation.seed, "status": "ok", "replies": []}
        responses.append(response)
        if conversation.error:
            response.update(status="error", error=conversation.error)
        else:
            states.append(_State(conversation, response))
    _run(model, states, max_reply_tokens, drop_history)
    return responses


class ChatSession:
    """A conversation held in memory: send a message, get the reply; the history keeps the generated ids.

    Args:
        model: A ``UnifiedLM``.
        seed: Seed of the first reply (reply ``k`` samples with ``seed + k``).
        voice_prompt: A voice sample for spoken replies.
        max_reply_tokens: Token budget of each reply; None: the ``chat`` preset's.
        drop_history: Drop the oldest exchanges when the context would overflow (False: refuse the message).
    """

    def __init__(self, model, seed: int = 0, voice_prompt: str | None = None, max_reply_tokens: int | None = None,
                 drop_history: bool = True):
        self.model, self.seed, self.voice_prompt = model, seed, voice_prompt
        self.max_reply_tokens, self.drop_history = max_reply_tokens, drop_history
        self.clear()

    def clear(self) -> None:
        """Forget the conversation."""
        self.history: list = []
        self.replies = 0

    def send(self, text: str = "", media: list[tuple[str, str]] = (), speak: bool = False) -> dict:
        """Reply to one user message with attachments ``(modality, path)``; raises ``AnyGPTError`` on failure."""
        turn = ChatTurn(role="user", text=text.strip(), media=list(media), speak=speak)
        if not turn.text and not turn.media:
            raise AnyGPTError("an empty message (no text, no attachment)")
        conversation = Conversation(index=0, id="session", turns=[turn], seed=self.seed,
                                    voice_prompt=self.voice_prompt)
        response = {"id": "session", "status": "ok", "replies": []}
        history = list(self.history)
        state = _State(conversation, response, history=history, round=self.replies)
        _run(self.model, [state], self.max_reply_tokens, self.drop_history)
        if response["status"] != "ok":
            raise AnyGPTError(response["error"])
        self.history, self.replies = history, self.replies + 1
        return response["replies"][-1]


def _run(model, states: list[_State], max_reply_tokens: int | None, drop_history: bool) -> None:
    """Generate every pending reply of ``states``, a round (one reply per conversation) at a time."""
    budget = max_reply_tokens or model.presets["chat"].max_new_tokens
    while True:
        jobs = []
        for state in states:
            if state.response["status"] == "ok":
                try:
                    job = _next_job(model, state, budget, drop_history)
                except Exception as err:  # noqa: BLE001 - one conversation fails alone
                    _fail(state, err)
                    continue
                if job is not None:
                    jobs.append(job)
        if not jobs:
            return
        try:
            reply_preset = replace(model.presets["chat"], max_new_tokens=budget)
            outputs = generate(model.backbone, [j.prompt for j in jobs], [reply_preset] * len(jobs),
                               [j.grammar for j in jobs], [_seed(j.state) for j in jobs], pad_id=model.tokenizer.pad_id)
        except Exception as err:  # noqa: BLE001
            for job in jobs:
                _fail(job.state, err)
            return
        for job, generated in zip(jobs, outputs):
            try:
                _finish(model, job, generated)
            except Exception as err:  # noqa: BLE001
                _fail(job.state, err, job.turn)


def _seed(state: _State) -> int:
    return int(state.conversation.seed or 0) + state.round


def _next_job(model, state: _State, budget: int, drop_history: bool) -> _Job | None:
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
        message = user_message(turn.text, [(m, _span_string(model, m, p, number)) for m, p in turn.media])
        state.position += 1
        following = turns[state.position] if state.position < len(turns) else None
        if following is not None and following.role == "assistant":
            state.history.append((message, _assistant_text(model, following, state.position)))
            state.position += 1
            continue
        return _job(model, state, number, message, turn, budget, drop_history)
    return None


def _job(model, state: _State, number: int, message: str, turn: ChatTurn, budget: int, drop_history: bool) -> _Job:
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
    return _Job(state, number, message, prompt, grammar, dropped)


def _span_string(model, modality: str, path: str, number: int) -> str:
    if modality not in model.codecs:
        known = ", ".join(model.codecs) or "none"
        raise AnyGPTError(f"turn {number}: unknown attachment type {modality!r} (this model takes {known})")
    try:
        codes = model.codecs[modality].encode([path])[0]
    except AnyGPTError as err:
        raise AnyGPTError(f"turn {number}: {modality} {err}") from err
    rng = model.layout.ranges[modality]
    return model.layout.string_from_ids([rng.bos, *rng.to_lm(codes).tolist(), rng.eos])


def _assistant_text(model, turn: ChatTurn, number: int) -> str:
    """A given assistant turn as reply text: its text, then its media as token strings, space-separated."""
    spans = [_span_string(model, m, p, number) for m, p in turn.media]
    return " ".join(part for part in [turn.text, *spans] if part)


def _finish(model, job: _Job, generated: list[int], decoded: list[tuple[str, Any, Any]] = ()) -> None:
    """Parse a generated reply into the response and the history; ``decoded`` holds ``(modality, codes, media)``
    of spans already decoded while streaming, reused where the parsed span is the same."""
    state = job.state
    ranges = {m: model.layout.ranges[m] for m in model.codecs}
    parsed = parse_reply(generated, model.tokenizer, ranges, model.codecs, model.stop_ids)
    seed = _seed(state)
    media = []
    for i, (modality, codes) in enumerate(parsed.spans):
        codec = model.codecs[modality]
        done = decoded[i] if i < len(decoded) else None
        if done is not None and done[0] == modality and torch.equal(done[1], codes):
            decoded_media = done[2]
        else:
            decoded_media = codec.decode([codes], **span_options(model, modality, seed, state.voice))[0]
        item = {"modality": modality, "media": decoded_media, "codes": len(codes)}
        if hasattr(codec, "sample_rate"):
            item["sample_rate"] = codec.sample_rate
        media.append(item)
    state.response["replies"].append({
        "turn": job.turn, "seed": seed, "text": parsed.text, "media": media, "truncated": parsed.truncated,
        "prompt_tokens": len(job.prompt), "generated_tokens": len(generated), "dropped_turns": job.dropped})
    state.history.append((job.message, parsed.ids))
    state.round += 1


def span_options(model, modality: str, seed: int, voice: Any) -> dict:
    """``decode`` options of one reply span: the reply's seed, the modality preset's decoder steps, the voice."""
    steps = model.presets.get(modality, model.presets["text"]).decoder_steps
    return decode_options(model.codecs[modality], seed, steps, voice)


def _fail(state: _State, err: Exception, turn: int | None = None) -> None:
    where = f"conversation {state.conversation.id}" + ("" if turn is None else f", turn {turn}")
    state.response.update(status="error", error=f"{where}: {one_line(err, with_type=True)}")
