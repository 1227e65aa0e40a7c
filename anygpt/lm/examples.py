"""Training sequences from AnyGPT-format records: the pretraining example of one record, in one direction.

A record is ``{"text": ..., "<modality>": "<so..>...<eo..>"}`` (pipeline §5.1), optionally with ``voice_prompt``: a
span of the same modality by the same speaker, shown to the LM in a from-text example (not in the original). The
functions take the model's parts (its tokenizer, vocabulary layout, codecs and instruction pools) and return ids.
"""

from __future__ import annotations

import random
from typing import Any

from anygpt import AnyGPTError
from anygpt.lm.prompts import pretrain_sequence_ids
from anygpt.tokenizers.base import check_span


def record_span(model: Any, value: Any, modality: str, field: str) -> list[int]:
    """A record's token string of ``modality`` (tags included) as LM ids, checked against its codec.

    Raises:
        AnyGPTError: Not a string, no ``<so..>`` codes ``<eo..>`` of the modality, or codes the codec refuses.
    """
    tokens = model.layout.ranges[modality]
    if not isinstance(value, str):
        raise AnyGPTError(f"{field} must be a token string")
    span = model.layout.ids_from_string(value)
    if len(span) < 3 or span[0] != tokens.bos or span[-1] != tokens.eos:
        raise AnyGPTError(f"{field} token string must be {tokens.start_tag}<codes>{tokens.end_tag}")
    check_span(model.codecs[modality], tokens.from_lm(span[1:-1]))
    return span


def pretrain_example(model: Any, record: dict, rng: random.Random, max_length: int = 4096,
                     to_text_prob: float = 0.5, code_noise: float = 0.0,
                     text_dropout: float = 0.0) -> tuple[list[int], str]:
    """``UnifiedLM.build_example``: the ids of one record's example and its task name (``music_to_text``,
    ``text_to_music``, ``text_to_speech_with_voice``). The direction, instruction, noise and text dropout come from
    ``rng``."""
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise AnyGPTError("record has no text")
    others = [k for k in record if k not in ("text", "voice_prompt")]
    if len(others) != 1:
        raise AnyGPTError(f"record needs exactly one modality key beside 'text', got {others}")
    modality = others[0]
    if modality not in model.codecs:
        raise AnyGPTError(f"unknown modality key {modality!r} (known: {', '.join(model.codecs)})")
    span = record_span(model, record[modality], modality, modality)
    direction = "to_text" if rng.random() < to_text_prob else "from_text"
    instruction = model.instructions.choose(direction, modality, rng)
    if direction == "to_text" and code_noise > 0:
        span = noisy_span(model.codecs[modality], model.layout.ranges[modality], span, code_noise, rng)
    if direction == "from_text" and text_dropout > 0 and rng.random() < text_dropout:
        text = ""
    voice = None
    if direction == "from_text" and record.get("voice_prompt") is not None:
        voice = record_span(model, record["voice_prompt"], modality, "voice_prompt")
    ids = pretrain_sequence_ids(model.tokenizer, instruction, text, span, direction, eos_id=model.reply_end_id,
                                voice_ids=voice)
    task = f"{modality}_to_text" if direction == "to_text" else f"text_to_{modality}"
    return ids[:max_length], task + ("_with_voice" if voice is not None else "")


def noisy_span(codec: Any, tokens: Any, span: list[int], share: float, rng: random.Random) -> list[int]:
    """``span`` with each code replaced, with probability ``share``, by a random code its position allows."""
    codes = tokens.from_lm(span[1:-1]).tolist()
    for position in range(len(codes)):
        if rng.random() < share:
            codes[position] = rng.randrange(*codec.allowed(position))
    return [span[0], *tokens.to_lm(codes).tolist(), span[-1]]
