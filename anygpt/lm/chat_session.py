"""Answering conversations in batches: each round generates the next pending reply of every conversation.

A conversation fails alone (its error names it and the turn); the replies it produced before stay in its
response. When a prompt and its reply budget would overflow the model's context, the oldest exchanges are dropped
(``drop_history``) and the reply says how many.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from anygpt import AnyGPTError
from anygpt.data.chat import ChatTurn, Conversation
from anygpt.lm.chat_stream import stream_state
from anygpt.lm.chat_turns import ReplyState, fail_state, finish_reply, next_job, reply_seed
from anygpt.lm.decoding.loop import generate


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
            states.append(ReplyState(conversation, response))
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

    def send(self, text: str = "", media: list[tuple[str, str]] = (), speak: bool = False,
             stream: bool = False) -> dict | Iterator[dict]:
        """Reply to one user message with attachments ``(modality, path)``; raises ``AnyGPTError`` on failure.
        ``stream``: an iterator of the reply's events (``anygpt.lm.chat_stream``); the history takes the reply once
        the ``done`` event has been read."""
        turn = ChatTurn(role="user", text=text.strip(), media=list(media), speak=speak)
        if not turn.text and not turn.media:
            raise AnyGPTError("an empty message (no text, no attachment)")
        conversation = Conversation(index=0, id="session", turns=[turn], seed=self.seed,
                                    voice_prompt=self.voice_prompt)
        response = {"id": "session", "status": "ok", "replies": []}
        history = list(self.history)
        state = ReplyState(conversation, response, history=history, round=self.replies)
        if stream:
            return self._stream(state)
        _run(self.model, [state], self.max_reply_tokens, self.drop_history)
        if response["status"] != "ok":
            raise AnyGPTError(response["error"])
        self.history, self.replies = history, self.replies + 1
        return response["replies"][-1]

    def _stream(self, state: ReplyState) -> Iterator[dict]:
        for event in stream_state(self.model, state, self.max_reply_tokens, self.drop_history):
            if event["type"] == "done":
                self.history, self.replies = state.history, self.replies + 1
            yield event


def _run(model, states: list[ReplyState], max_reply_tokens: int | None, drop_history: bool) -> None:
    """Generate every pending reply of ``states``, a round (one reply per conversation) at a time."""
    budget = max_reply_tokens or model.presets["chat"].max_new_tokens
    while True:
        jobs = []
        for state in states:
            if state.response["status"] == "ok":
                try:
                    job = next_job(model, state, budget, drop_history)
                except Exception as err:  # noqa: BLE001 - one conversation fails alone
                    fail_state(state, err)
                    continue
                if job is not None:
                    jobs.append(job)
        if not jobs:
            return
        try:
            reply_preset = replace(model.presets["chat"], max_new_tokens=budget)
            outputs = generate(model.backbone, [j.prompt for j in jobs], [reply_preset] * len(jobs),
                               [j.grammar for j in jobs], [reply_seed(j.state) for j in jobs],
                               pad_id=model.tokenizer.pad_id)
        except Exception as err:  # noqa: BLE001
            for job in jobs:
                fail_state(job.state, err)
            return
        for job, generated in zip(jobs, outputs):
            try:
                finish_reply(model, job, generated)
            except Exception as err:  # noqa: BLE001
                fail_state(job.state, err, job.turn)


