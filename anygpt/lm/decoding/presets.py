"""Sampling presets: one ``GenerationPreset`` per target modality, the original's defaults, YAML overrides."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from anygpt import AnyGPTError


@dataclass
class GenerationPreset:
    """Sampling settings for one target modality (transformers' meaning for each field).

    Args:
        do_sample: Sample; False picks the most likely token.
        temperature: Softmax temperature.
        top_k: Keep the k most likely tokens (0 keeps all).
        top_p: Nucleus sampling mass (1.0 keeps all).
        repetition_penalty: Penalty on every token already in the sequence (1.0 is off).
        max_new_tokens: Budget of generated tokens.
        min_new_tokens: Stop tokens are blocked before this many tokens.
        decoder_steps: Passes of the target codec's second-stage decoder where it has one (SoundStorm's MaskGIT
            steps on RVQ layer 2; AnyGPT ran 3).
        num_beams: Beams of a beam search (``anygpt.lm.decoding.beam``, transformers' semantics; the paper decoded
            text targets with 5); needs ``do_sample: false``. 1: no search. The search honours
            ``repetition_penalty`` and ``min_new_tokens`` as transformers' does; temperature, top-k and top-p shape
            sampling only, so greedy and beam search leave them aside.
        length_penalty: Exponent of the length that divides a finished beam's log-probability.
        guidance_scale: Classifier-free guidance of a text-to-X request (1.0 is off): each step's log-probabilities
            are ``u + guidance_scale * (c - u)``, ``c`` from the prompt and ``u`` from the same prompt with its text
            left out (transformers' ``guidance_scale``; MusicGen used 3). Only a model trained with
            ``text_dropout`` knows the unconditional prompt. Runs the plain loop, which decodes the two prompts
            side by side; not with beams, not in chat replies.
    """

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 100
    min_new_tokens: int = 0
    decoder_steps: int = 3
    num_beams: int = 1
    length_penalty: float = 1.0
    guidance_scale: float = 1.0

    def __post_init__(self):
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise AnyGPTError(f"invalid generation preset {asdict(self)}")
        if self.max_new_tokens < 1:
            raise AnyGPTError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.decoder_steps < 1:
            raise AnyGPTError(f"decoder_steps must be at least 1, got {self.decoder_steps}")
        if self.num_beams < 1:
            raise AnyGPTError(f"num_beams must be at least 1, got {self.num_beams}")
        if self.guidance_scale <= 0:
            raise AnyGPTError(f"guidance_scale must be > 0 (1.0 is off), got {self.guidance_scale}")
        if self.num_beams > 1 and self.guidance_scale != 1:
            raise AnyGPTError("guidance_scale goes with num_beams 1 (a beam search is not guided)")
        if self.num_beams > 1 and self.do_sample:
            raise AnyGPTError(f"num_beams {self.num_beams} searches: set do_sample: false (beam sampling is not "
                              f"supported)")


# The original's config/*_generate_config.json (pipeline §4). top_k 50 is transformers' default, which applied
# where the file sets none; min_new_tokens 10 was a no-op there (no eos id was set), so it is 0 here. SoundStorm's
# steps: the CLIs read vc_steps 3 from generate_config.json (speech_generate_config.json's 4 was never read).
DEFAULT_PRESETS: dict[str, GenerationPreset] = {
    "text": GenerationPreset(max_new_tokens=100),
    "image": GenerationPreset(max_new_tokens=200),
    "speech": GenerationPreset(max_new_tokens=1500, repetition_penalty=1.05),
    "music": GenerationPreset(top_k=200, max_new_tokens=2000, repetition_penalty=1.15),
    # Chat: the text segments of a reply, and its whole budget (a reply may carry a 30-s spoken answer). The
    # original's generate_config.json beam-sampled with 5 beams over 500 tokens; here it is plain sampling.
    "chat": GenerationPreset(max_new_tokens=2048),
}


def build_presets(overrides: dict[str, dict] | None = None) -> dict[str, GenerationPreset]:
    """The default presets updated field by field from ``{target: {field: value}}``."""
    presets = {name: GenerationPreset(**asdict(p)) for name, p in DEFAULT_PRESETS.items()}
    known = {f.name for f in fields(GenerationPreset)}
    for target, values in (overrides or {}).items():
        unknown = set(values) - known
        if unknown:
            raise AnyGPTError(f"generation.{target}: unknown fields {sorted(unknown)} (known: {sorted(known)})")
        base = asdict(presets.get(target, presets["text"]))
        presets[target] = GenerationPreset(**{**base, **values})
    return presets
