"""Chat conversations for ``anygpt predict --config configs/chat.yaml``: one JSON conversation per line.

A line is ``{"id": ..., "seed": ..., "voice_prompt": ..., "turns": [...]}`` or just the list of turns. A turn is
``{"role": "user" | "assistant", "text": "...", "image": "a.jpg", "speech": ["q.wav"], "music": [...],
"speak": true}``: media are file paths (one or a list) under the modality's name; ``speak`` asks for a spoken
reply. Every user turn that no assistant turn follows gets a generated reply, and that reply joins the history of
the next turn; an assistant turn given in the file is history as it stands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from anygpt import AnyGPTError
from anygpt.data.requests import OrderedItems

TURN_FIELDS = {"role", "text", "speak"}


@dataclass
class ChatTurn:
    """One turn: its text and attached media ``(modality, path)`` in the order given."""

    role: str
    text: str = ""
    media: list[tuple[str, str]] = field(default_factory=list)
    speak: bool = False


@dataclass
class Conversation:
    """A conversation to answer. One that could not be parsed carries its ``error`` and fails alone.

    Args:
        index: Position in the input.
        line: The conversation as given.
        id: Its name in outputs.
        turns: The turns, checked.
        seed: Sampling seed; reply ``k`` samples with ``seed + k``.
        voice_prompt: A voice sample for spoken replies.
        error: Why it is invalid, or None.
    """

    index: int
    line: str = ""
    id: str = ""
    turns: list[ChatTurn] = field(default_factory=list)
    seed: int | None = None
    voice_prompt: str | None = None
    error: str | None = None


def parse_turn(raw: object, number: int, modalities: set[str] | None = None) -> ChatTurn:
    """A turn from its JSON form; ``modalities`` (when given) are the attachment keys allowed."""
    if not isinstance(raw, dict):
        raise AnyGPTError(f"turn {number} is not a JSON object")
    role = raw.get("role", "user")
    if role not in ("user", "assistant"):
        raise AnyGPTError(f"turn {number} has role {role!r} (user or assistant)")
    text = raw.get("text", "")
    if not isinstance(text, str):
        raise AnyGPTError(f"turn {number}: text must be a string")
    turn = ChatTurn(role=role, text=text.strip(), speak=bool(raw.get("speak", False)))
    for key, value in raw.items():
        if key in TURN_FIELDS:
            continue
        if modalities is not None and key not in modalities:
            known = ", ".join(sorted(modalities)) or "none"
            raise AnyGPTError(f"turn {number}: unknown attachment type {key!r} (this model takes {known})")
        paths = value if isinstance(value, list) else [value]
        if not paths or not all(isinstance(p, str) and p.strip() for p in paths):
            raise AnyGPTError(f"turn {number}: {key} must be a file path or a list of them")
        turn.media += [(key, p) for p in paths]
    if not turn.text and not turn.media:
        raise AnyGPTError(f"turn {number} has neither text nor media")
    return turn


def parse_conversation(record: object, index: int, modalities: set[str] | None = None) -> Conversation:
    """A conversation from a JSON line (or its parsed value); errors name the conversation and fail it alone."""
    line = record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)
    conversation = Conversation(index=index, line=line, id=f"chat{index}")
    try:
        if isinstance(record, str):
            try:
                record = json.loads(record)
            except ValueError as err:
                raise AnyGPTError(f"bad JSON ({err})") from None
        if isinstance(record, list):
            record = {"turns": record}
        if not isinstance(record, dict):
            raise AnyGPTError("a conversation is a JSON object with turns, or a list of turns")
        unknown = set(record) - {"id", "seed", "voice_prompt", "turns"}
        if unknown:
            raise AnyGPTError(f"unknown fields {sorted(unknown)} (id, seed, voice_prompt, turns)")
        conversation.id = str(record.get("id", conversation.id))
        seed = record.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise AnyGPTError(f"seed must be an integer, got {seed!r}")
        conversation.seed, conversation.voice_prompt = seed, record.get("voice_prompt")
        turns = record.get("turns")
        if not isinstance(turns, list) or not turns:
            raise AnyGPTError("no turns")
        conversation.turns = [parse_turn(t, n, modalities) for n, t in enumerate(turns)]
        if not any(t.role == "user" for t in conversation.turns):
            raise AnyGPTError("the conversation has no user turn")
        if conversation.turns[-1].role != "user":
            raise AnyGPTError("the last turn is the assistant's: nothing to answer")
    except AnyGPTError as err:
        conversation.error = f"conversation {conversation.id}: {err}"
    return conversation


class ChatDataModule(OrderedItems):
    """Serves conversations in input order, a batch at a time (their replies are generated together).

    Args:
        conversations: Conversations (JSON strings, objects or lists of turns).
        conversations_file: A ``.jsonl`` file of conversations, one per line; when given, it replaces
            ``conversations``.
        batch_size: Conversations answered together.
        seed: Base seed: a conversation without its own seed uses ``seed + index``.
    """

    def __init__(self, conversations: list = [], conversations_file: str | None = None, batch_size: int = 4,
                 seed: int = 0):
        super().__init__(batch_size, seed)
        self.conversations, self.conversations_file = list(conversations), conversations_file

    def setup(self, stage: str) -> None:
        records = list(self.conversations)
        if self.conversations_file:
            path = Path(self.conversations_file)
            if not path.is_file():
                raise AnyGPTError(f"conversations file not found: {path}")
            records = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        model = self.trainer.lightning_module if self.trainer is not None else None
        modalities = set(model.codecs) if model is not None else None
        self.serve([parse_conversation(record, i, modalities) for i, record in enumerate(records)], "conversations")
