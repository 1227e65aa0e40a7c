"""Chat in the MMGPT conversation format of the released AnyGPT-chat model (pipeline §3.5).

The prompt is a system line, then ``[Human]: {message}<eoh>\\n`` and ``[MMGPT]: {reply}<eos>\\n`` per exchange,
ending with ``[MMGPT]:``. A user message is the original's interleaved form: image, music, then speech token
strings, each followed by a space, then the text; with speech in it, the spoken-command instruction follows.
Replies are generated under :class:`ReplyGrammar` (text, then any media span filled by its codec's grammar,
sampled with that modality's preset) and parsed by ids (:func:`parse_reply`); the history keeps each reply's ids as
generated, not re-parsed text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from anygpt import AnyGPTError
from anygpt.lm.decoding.grammar import ReplyGrammar  # noqa: F401  (its home before the decoding room)
from anygpt.tokenizers.vocab import TokenRange
from anygpt.tokenizers.base import check_span, complete_length

SYSTEM = ("You are an AI assistant named MMGPT who can understand and generate multimodal content, including text, "
          "speech, images and audio.")
VOICE_COMMAND = "Please recognize the voice command and give reply and voice"
_FIRST, _LAST = ("image", "music"), ("speech",)


class Message(str):
    """A user turn's string; ``plain`` holds the character range of the user's own text in it, which the prompt
    encodes as plain text (the media strings around it stay spans)."""

    plain: tuple[tuple[int, int], ...] = ()


def user_message(text: str, spans: Sequence[tuple[str, str]]) -> Message:
    """The user turn as the original builds it from its text and ``(modality, token string)`` attachments.

    Images, then music, then other modalities, then speech, each string followed by one space, then the text; with
    speech present, `` Please recognize the voice command and give reply and voice`` is appended. Stripped.
    """
    def rank(modality: str) -> int:
        return _FIRST.index(modality) if modality in _FIRST else 3 if modality in _LAST else 2

    ordered = sorted(spans, key=lambda item: rank(item[0]))  # stable: the given order within a modality
    prefix = "".join(string + " " for _, string in ordered)
    message = prefix + text
    if any(modality == "speech" for modality, _ in spans):
        message = f"{message} {VOICE_COMMAND}"
    lead = len(message) - len(message.lstrip())
    out = Message(message.strip())
    start = min(max(0, len(prefix) - lead), len(out))
    out.plain = ((start, min(len(out), max(start, len(prefix) + len(text) - lead))),)
    return out


def _message(tokenizer, value: str) -> Message:
    """A message or reply as prompt text: a ``Message`` keeps its own plain range; other strings (history given as
    data) are plain all but their complete media spans."""
    if isinstance(value, Message):
        return value
    out = Message(value)
    out.plain = tuple(tokenizer.outside_media(value))
    return out


def chat_prompt_text(history: Sequence[tuple[str, str]], message: str, system: str = SYSTEM) -> str:
    """The prompt string for ``message`` after ``history`` of ``(user message, reply text)`` exchanges."""
    past = "".join(f"[Human]: {u}<eoh>\n[MMGPT]: {a}<eos>\n" for u, a in history)
    return f"{system}\n{past}[Human]: {message}<eoh>\n[MMGPT]:"


def chat_prompt_ids(tokenizer, history: Sequence[tuple[str, str | Sequence[int]]], message: str,
                    system: str = SYSTEM) -> list[int]:
    """Prompt ids (``<s>`` first). A reply in ``history`` is text, or the ids the model generated for it.

    Segments meet only at added tokens, where the tokenizer splits anyway, so text-only histories give exactly
    the ids of :func:`chat_prompt_text`. What users wrote is plain text: a tag typed in a message or a text reply
    stays text (only complete media spans in data-given history, and a ``Message``'s own attachments, are spans).
    """
    ids = tokenizer.encode(f"{system}\n", bos=True)
    for user, reply in history:
        if isinstance(reply, str):
            ids += tokenizer.encode_template("[Human]: {user}<eoh>\n[MMGPT]: {reply}<eos>\n", bos=False,
                                             user=_message(tokenizer, user), reply=_message(tokenizer, reply))
        else:
            ids += tokenizer.encode_template("[Human]: {user}<eoh>\n[MMGPT]:", bos=False,
                                             user=_message(tokenizer, user)) + list(reply)
            ids += tokenizer.encode("<eos>\n", bos=False)
    return ids + tokenizer.encode_template("[Human]: {user}<eoh>\n[MMGPT]:", bos=False,
                                           user=_message(tokenizer, message))


@dataclass
class ParsedReply:
    """A reply read from its ids: the text (its runs joined by a space), its media spans in order, the ids
    before the stop token (what the history keeps), and whether the token budget cut it."""

    text: str
    spans: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    truncated: bool = False


def parse_reply(ids: Sequence[int], tokenizer, ranges: Mapping[str, TokenRange], codecs: Mapping,
                stop_ids: Sequence[int]) -> ParsedReply:
    """Split generated ids into text and media spans, up to the first stop token.

    A span cut by the budget keeps its longest complete prefix (dropped if there is none); a span whose codes
    break its codec's grammar raises ``ValueError`` (possible only with the grammar off).
    """
    stop = next((i for i, t in enumerate(ids) if t in set(stop_ids)), None)
    body = list(ids if stop is None else ids[:stop])
    starts = {rng.bos: modality for modality, rng in ranges.items()}
    texts, spans, run, i, kept = [], [], [], 0, len(body)
    while i < len(body):
        token = body[i]
        if token not in starts:
            run.append(token)
            i += 1
            continue
        texts.append(run)
        run, modality = [], starts[token]
        rng, codec = ranges[modality], codecs[modality]
        end = next((j for j in range(i + 1, len(body)) if body[j] == rng.eos), None)
        inner = body[i + 1: len(body) if end is None else end]
        foreign = [t for t in inner if not rng.start <= t < rng.stop]
        if foreign:
            raise AnyGPTError(f"the {rng.start_tag} span holds a foreign token id {foreign[0]}")
        codes = rng.from_lm(inner)
        if end is None:
            kept = i  # the history leaves out a span that never closed
            codes = codes[:complete_length(codec, len(codes))]
        if len(codes):
            spans.append((modality, check_span(codec, codes)))
        i = len(body) if end is None else end + 1
    texts.append(run)
    text = " ".join(t for t in (tokenizer.decode(r, skip_special_tokens=True).strip() for r in texts) if t)
    return ParsedReply(text=text, spans=spans, ids=body[:kept], truncated=stop is None)
