"""Base-model prompts and pretraining sequences, built as ids (pipeline §3.3, §5.2).

Modality content is ids (``<so..>`` codes ``<eo..>``), never strings: the text around a span is encoded on its own
and the span ids are spliced in. Because ``TextTokenizer.encode`` splits at added tokens, this equals encoding the
original's prompt string, e.g. ``[Human]: {I} <soim><👀12>...<eoim><eoh> [MMGPT]:``. Instructions and texts are
user text: a tag written in them stays text (the original would have turned it into the tag's id).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from typing import Literal

from anygpt import AnyGPTError
from anygpt.lm.tokenizer import TextTokenizer

Direction = Literal["to_text", "from_text"]
DIRECTIONS = ("from_text", "to_text")


def _check_input(tokenizer: TextTokenizer | None, text: str | None, span_ids: Sequence[int] | None) -> None:
    if (text is None) == (span_ids is None):
        raise AnyGPTError("a base prompt takes exactly one of text or span_ids")
    if span_ids is not None:
        if tokenizer is None:
            raise AnyGPTError("a tokenizer is needed to turn span ids into text")
        if not span_ids or any(not tokenizer.sp_size <= int(i) < len(tokenizer) for i in span_ids):
            raise AnyGPTError("span_ids must be a non-empty list of added-token ids (<so..> codes <eo..>)")


def base_prompt_text(
    tokenizer: TextTokenizer | None, instruction: str, *, text: str | None = None, span_ids: Sequence[int] | None = None
) -> str:
    """The original's base prompt string (for display and tests).

    Args:
        tokenizer: Renders ``span_ids`` as token strings; may be None with ``text``.
        instruction: The task instruction.
        text: Text input (a text-to-X prompt).
        span_ids: LM ids of a modality span (an X-to-text prompt).
    """
    _check_input(tokenizer, text, span_ids)
    if text is not None:
        return f"[Human]: {instruction} This is input: {text}<eoh> [MMGPT]:"
    span = "".join(tokenizer.id_to_piece(i) for i in span_ids)
    return f"[Human]: {instruction} {span}<eoh> [MMGPT]:"


def base_prompt_ids(
    tokenizer: TextTokenizer, instruction: str, *, text: str | None = None, span_ids: Sequence[int] | None = None,
    voice_ids: Sequence[int] | None = None,
) -> list[int]:
    """Ids of the base prompt, ``<s>`` first: ``tokenizer.encode(base_prompt_text(...))`` without the string detour.

    Args:
        tokenizer: The released model's text tokenizer (it must hold ``[Human]``, ``<eoh>``, ``[MMGPT]``).
        instruction: The task instruction.
        text: Text input: ``[Human]: {I} This is input: {text}<eoh> [MMGPT]:``.
        span_ids: A modality span's LM ids: ``[Human]: {I} {span}<eoh> [MMGPT]:``.
        voice_ids: With ``text``, a voice span's LM ids (a prompt's level-1 codes, tags included):
            ``[Human]: {I} This is input: {text} Voice: {voice}<eoh> [MMGPT]:``. Not in the original, whose LM
            never sees the voice; only a model trained on such prompts (``voice_prompt`` records) uses it.
    """
    _check_input(tokenizer, text, span_ids)
    if voice_ids is not None:
        return _voiced_head(tokenizer, instruction, text, voice_ids) + tokenizer.encode("<eoh> [MMGPT]:", bos=False)
    if text is not None:
        return tokenizer.encode_template("[Human]: {instruction} This is input: {text}<eoh> [MMGPT]:",
                       instruction=instruction, text=text)
    head = tokenizer.encode_template("[Human]: {instruction} ", instruction=instruction)
    return head + [int(i) for i in span_ids] + tokenizer.encode("<eoh> [MMGPT]:", bos=False)


def _voiced_head(tokenizer: TextTokenizer, instruction: str, text: str | None,
                 voice_ids: Sequence[int]) -> list[int]:
    """``[Human]: {I} This is input: {text} Voice: {voice}``, checked: what a voiced prompt has before ``<eoh>``."""
    if text is None:
        raise AnyGPTError("voice_ids go with a text input (a text-to-speech prompt)")
    if not voice_ids or any(not tokenizer.sp_size <= int(i) < len(tokenizer) for i in voice_ids):
        raise AnyGPTError("voice_ids must be a non-empty list of added-token ids (<so..> codes <eo..>)")
    head = tokenizer.encode_template("[Human]: {instruction} This is input: {text} Voice: ",
                                     instruction=instruction, text=text)
    return head + [int(i) for i in voice_ids]


def pretrain_sequence_ids(
    tokenizer: TextTokenizer,
    instruction: str,
    text: str,
    span_ids: Sequence[int],
    direction: Direction,
    eos_id: int | None = None,
    add_eos_token: bool = True,
    voice_ids: Sequence[int] | None = None,
) -> list[int]:
    """One stage-1 pretraining example as ids (pipeline §5.2), ``<s>`` first.

    ``to_text``: ``[Human]: {I} {span}<eoh> [MMGPT]: {text}<eos>``;
    ``from_text``: ``[Human]: {I} This is input: {text}<eoh> [MMGPT]: {span}<eos>``; then ``</s>`` if
    ``add_eos_token``.

    Args:
        tokenizer: The text tokenizer.
        instruction: The task instruction.
        text: The caption or transcript.
        span_ids: LM ids of the modality span, tags included.
        direction: ``to_text`` (X to text) or ``from_text`` (text to X).
        eos_id: LM id of ``<eos>``; None looks it up in the tokenizer.
        add_eos_token: Append ``</s>`` (the original skipped it for some datasets).
        voice_ids: ``from_text`` only: a voice span (another clip of the same speaker, level-1 codes), as
            ``base_prompt_ids`` places it: ``... This is input: {text} Voice: {voice}<eoh> [MMGPT]: {span}<eos>``.
    """
    _check_input(tokenizer, None, span_ids)
    if eos_id is None:
        eos_id = tokenizer.get_vocab().get("<eos>")
        if eos_id is None:
            raise AnyGPTError("the tokenizer has no <eos> token: pass eos_id or add the AnyGPT tokens")
    span = [int(i) for i in span_ids]
    if voice_ids is not None and direction != "from_text":
        raise AnyGPTError("voice_ids go with the from_text direction (text to speech)")
    if direction == "to_text":
        ids = tokenizer.encode_template("[Human]: {instruction} ", instruction=instruction) + span
        ids += tokenizer.encode_template("<eoh> [MMGPT]: {text}", bos=False, text=text)
    elif direction == "from_text" and voice_ids is not None:
        ids = _voiced_head(tokenizer, instruction, text, voice_ids)
        ids += tokenizer.encode("<eoh> [MMGPT]: ", bos=False) + span
    elif direction == "from_text":
        ids = tokenizer.encode_template("[Human]: {instruction} This is input: {text}<eoh> [MMGPT]: ",
                      instruction=instruction, text=text) + span
    else:
        raise AnyGPTError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return ids + [eos_id] + ([tokenizer.eos_id] if add_eos_token else [])


_BUILTIN: dict[str, dict[str, tuple[str, ...]]] = {
    "from_text": {
        "image": (
            "Paint a picture of what this text describes.", "Show me an image that fits these words.",
            "Turn the following description into a picture.", "Draw the scene written below.",
            "Make an illustration for this sentence.", "Picture this and render it as an image.",
            "Create a photo matching the caption below.", "Give me a visual version of this text.",
            "Sketch what the words describe.", "Produce an image that tells the same story as this text.",
            "Imagine this description and show it to me.", "Render this caption as a picture.",
            "Generate artwork inspired by the text below.", "Convert these words into an image.",
        ),
        "speech": (
            "Say this sentence out loud.", "Read the text below aloud.", "Turn this text into spoken words.",
            "Speak the following line clearly.", "Give this sentence a voice.", "Please voice the text below.",
            "Read this passage for me, naturally and clearly.", "Let me hear how this sentence sounds.",
            "Convert the following text to speech.", "Narrate this line.", "Pronounce the text below.",
            "Record yourself reading this sentence.", "Could you read this out for me?",
            "Produce an audio reading of the text.",
        ),
        "music": (
            "Compose a tune that fits this description.", "Write music in the style described below.",
            "Turn this caption into a piece of music.", "Play something that matches these words.",
            "Create a track with the mood described here.", "Make a song inspired by the text below.",
            "Score a short piece for this description.", "Generate music that sounds like this caption.",
            "Let this text guide a new melody.", "Produce an instrumental piece matching the description.",
            "Improvise a piece that captures this mood.", "Write a soundtrack for the scene below.",
            "Give me a clip of music fitting these words.",
        ),
    },
    "to_text": {
        "image": (
            "What is shown in this picture?", "Describe the image.", "Write a caption for this photo.",
            "Tell me what you see here.", "Summarize this picture in a sentence.",
            "Explain what is happening in this image.", "Give a short description of the photo.",
            "What does this picture show?", "Caption this image.", "Describe the scene in detail.",
            "Look at the picture and describe it.", "Put this image into words.",
            "What can be seen in this photograph?", "Name the main things in this image.",
        ),
        "speech": (
            "Write down what is said in this recording.", "Transcribe the audio.", "What does the speaker say?",
            "Turn this speech into text.", "Type out the spoken words.", "Give me a transcript of this clip.",
            "Listen and write what you hear.", "Convert this recording to text.",
            "Put the spoken sentence into writing.", "What words are spoken here?",
            "Transcribe this voice message.", "Write out the speech word for word.",
            "Tell me the exact words of the speaker.",
        ),
        "music": (
            "Describe this piece of music.", "What does this track sound like?", "Write a caption for this music.",
            "Tell me about the mood of this song.", "Which instruments and style do you hear?",
            "Summarize the character of this tune.", "Describe the genre and feel of this clip.",
            "Listen to this and describe it.", "How would you describe this melody?",
            "Give a short review of this music.", "Explain the atmosphere this track creates.",
            "Put this piece of music into words.", "Describe the tempo and mood of the song.",
        ),
    },
}
_GENERIC = {
    "from_text": ("Generate {m} that matches this text.", "Turn the following text into {m}.",
                  "Create {m} from the description below."),
    "to_text": ("Describe this {m} in words.", "What does this {m} contain?", "Write a caption for this {m}."),
}


class InstructionPools:
    """Instruction phrasings per direction (``from_text``: text to X; ``to_text``: X to text) and modality.

    Args:
        pools: ``{"from_text": {"music": [...]}, "to_text": {...}}``; missing keys fall back to the built-in pools.
    """

    def __init__(self, pools: Mapping[str, Mapping[str, Sequence[str]]] | None = None):
        self.pools = {d: {m: list(p) for m, p in _BUILTIN[d].items()} for d in DIRECTIONS}
        for direction, by_modality in (pools or {}).items():
            if direction not in DIRECTIONS:
                raise AnyGPTError(f"instruction pools: unknown direction {direction!r} (expected {DIRECTIONS})")
            for modality, pool in by_modality.items():
                if isinstance(pool, str) or not pool or not all(isinstance(p, str) and p.strip() for p in pool):
                    raise AnyGPTError(f"instruction pool {direction}.{modality} must be a non-empty list of strings")
                self.pools[direction][modality] = list(pool)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> InstructionPools:
        """Read pools from a JSON file; a malformed file is a one-line error naming it."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
                raise AnyGPTError('expected {"from_text": {modality: [...]}, "to_text": {...}}')
            return cls(data)
        except (OSError, ValueError, AnyGPTError) as err:
            reason = (str(err).splitlines() or [repr(err)])[0]
            raise AnyGPTError(f"bad instruction file {os.fspath(path)}: {reason}") from None

    def pool(self, direction: Direction, modality: str) -> list[str]:
        """The phrasings for a direction and modality; an unknown modality gets generic ones naming it."""
        if direction not in DIRECTIONS:
            raise AnyGPTError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if modality in self.pools[direction]:
            return self.pools[direction][modality]
        return [t.format(m=modality) for t in _GENERIC[direction]]

    def choose(self, direction: Direction, modality: str, rng: random.Random) -> str:
        """One phrasing, drawn with the caller's seeded ``rng``."""
        return rng.choice(self.pool(direction, modality))
