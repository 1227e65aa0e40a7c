"""The metrics of each task, from maintained libraries (jiwer), over normalised text."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

from anygpt.messages import one_line


def basic_normalize(text: str) -> str:
    """Lowercase, punctuation and symbols dropped (apostrophes inside words kept), spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"(?<![\w])'|'(?![\w])", " ", text)
    text = "".join(c if c.isalnum() or c == "'" or c.isspace() else " " for c in text)
    return " ".join(text.split())


def whisper_normalizer(mapping: str) -> Callable[[str], str]:
    """Whisper's English normaliser (transformers' copy of ``openai/whisper``'s ``EnglishTextNormalizer``:
    contractions, titles, numbers to digits, symbols), with the British-to-American spelling map of
    ``normalizer.json`` from ``mapping``: a Whisper tokenizer repo id or folder, or the file itself."""
    import json

    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    from anygpt import AnyGPTError
    from anygpt.hub import resolve

    try:
        path = Path(mapping) if Path(mapping).is_file() else resolve(mapping, "normalizer.json")
        spelling = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, AnyGPTError) as err:
        raise AnyGPTError(f"normalizer_mapping: no normalizer.json from {mapping} ({one_line(err)})") from None
    return EnglishTextNormalizer(spelling)


NORMALIZERS: dict[str, Callable[[str], str]] = {"basic": basic_normalize, "none": lambda text: text}


def normalizer(name: str, mapping: str | None = None) -> Callable[[str], str]:
    """The named normaliser (``whisper`` reads its spelling map from ``mapping``)."""
    return whisper_normalizer(mapping or "openai/whisper-medium") if name == "whisper" else NORMALIZERS[name]


def _jiwer(name: str) -> Callable[[Sequence[str], Sequence[str]], float]:
    def score(references: Sequence[str], hypotheses: Sequence[str]) -> float:
        import jiwer

        references, hypotheses = list(references), list(hypotheses)
        if not references:
            return float("nan")
        return float(getattr(jiwer, name)(references, hypotheses))  # empty references are refused when read
    return score


#: Corpus-level metrics per task: ``metric(references, hypotheses)`` over normalised text.
METRICS: dict[str, dict[str, Callable[[Sequence[str], Sequence[str]], float]]] = {
    "asr": {"wer": _jiwer("wer"), "cer": _jiwer("cer")},
    "tts": {"wer": _jiwer("wer"), "cer": _jiwer("cer"), "sim": None},  # None: the mean of the samples' scores
    "t2i": {"clip_t": None, "clip_i": None, "judged": None},
    "caption": {"cider": None, "bleu4": None, "named": None},  # corpus-level over every image's references
    "t2m": {"clap": None, "judged": None, "tempo": None, "key": None},
    "m2t": {"clap": None, "clap_reference": None, "cider": None, "bleu4": None, "named": None},
    "chat": {"named": None, "spoken_as_asked": None},
}

#: Metrics judged by the demo world's analysers (``anygpt.demo.verdicts``): shares of the samples judged right,
#: which need the ``attributes`` (or ``must_name``) of the world's held-out lines.
WORLD_METRICS = {"judged", "tempo", "key", "named", "spoken_as_asked"}


def per_sample(task: str, metrics: Sequence[str], reference: str, hypothesis: str) -> dict[str, float]:
    """Each text metric of one sample alone (the corpus-level figure is not their mean)."""
    return {name: METRICS[task][name]([reference], [hypothesis]) for name in metrics if METRICS[task][name]}
