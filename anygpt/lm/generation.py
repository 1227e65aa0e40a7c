"""Sampling presets, the span grammar, and a batched decode loop with per-request presets and seeds.

The loop runs the HF backbone with its KV cache on left-padded prompts. Each row has its own preset
(temperature, top-k, top-p, repetition penalty, budget), its own ``torch.Generator`` (so a request's output
depends on its seed, not on its neighbours in the batch) and its own grammar, and stops on its own stop tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import torch

from anygpt import AnyGPTError
from anygpt.tokenizers.vocab import TokenRange
from anygpt.tokenizers.base import span_can_end


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
    """

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 100
    min_new_tokens: int = 0
    decoder_steps: int = 3

    def __post_init__(self):
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise AnyGPTError(f"invalid generation preset {asdict(self)}")
        if self.max_new_tokens < 1:
            raise AnyGPTError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.decoder_steps < 1:
            raise AnyGPTError(f"decoder_steps must be at least 1, got {self.decoder_steps}")


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


def span_ranges(rng: TokenRange, codec, position: int, may_close: bool = True) -> list[tuple[int, int]]:
    """Half-open LM-id ranges legal at ``position`` inside a span: the codes the codec allows there (none once
    a fixed-length span is full), and the end tag where the span may end and ``may_close`` (a full span must
    close whatever ``may_close`` says)."""
    spans = []
    full = codec.span_length is not None and position >= codec.span_length
    if not full:
        low, high = codec.allowed(position)
        spans.append((rng.start + low, rng.start + high))
    if span_can_end(codec, position) and (full or may_close):
        spans.append((rng.eos, rng.eos + 1))
    return spans


class SpanGrammar:
    """Which tokens one request may generate next, and when it is finished.

    A text target may use ``text_ranges`` (the text pieces; None: any token) until a stop token. A media target may open with lead-in tokens (the whitespace
    piece that precedes a tag in the training data), must then open its span, fill it with codes that the
    codec allows at each position, and may close it only where the codec says the span is complete; the end
    tag finishes the request. With ``enforce=False`` nothing is masked and any stop token or the end tag
    finishes the request.

    Args:
        target: Range of the target modality, or None for text.
        codec: The target's codec (``allowed`` and ``can_end``), or None for text.
        stop_ids: Ids that end a text reply (``<eos>``, ``</s>``).
        lead_in_ids: Ids allowed before the start tag of a media span.
        enforce: Apply the grammar (False: only watch for stop tokens).
        min_new_tokens: Stop tokens are blocked before this many tokens.
        max_lead_in: Lead-in tokens allowed before the start tag.
        text_ranges: Half-open id ranges a text reply may use besides the stop tokens (None: any token).
    """

    def __init__(self, target: TokenRange | None, codec=None, stop_ids: Sequence[int] = (), lead_in_ids: Sequence[int] = (),
                 enforce: bool = True, min_new_tokens: int = 0, max_lead_in: int = 1,
                 text_ranges: Sequence[tuple[int, int]] | None = None):
        self.target, self.codec, self.enforce = target, codec, enforce
        self.text_ranges = None if text_ranges is None else [*text_ranges, *((i, i + 1) for i in stop_ids)]
        self.stop_ids = set(stop_ids) | ({target.eos} if target else set())
        self.lead_in_ids = list(lead_in_ids)
        self.min_new_tokens, self.max_lead_in = min_new_tokens, max_lead_in
        self.state = "text" if target is None else "lead"
        self.generated = 0
        self.span_codes = 0
        self.lead_in = 0

    @property
    def finished(self) -> bool:
        return self.state == "done"

    def allowed(self) -> list[tuple[int, int]] | None:
        """Half-open LM-id ranges legal next, or None for any token (stop tokens still obey min_new_tokens)."""
        if not self.enforce or self.state == "done":
            return None
        if self.state == "text":
            return self.text_ranges
        rng = self.target
        if self.state == "lead":
            ids = [rng.bos] + (self.lead_in_ids if self.lead_in < self.max_lead_in else [])
            return [(i, i + 1) for i in ids]
        return span_ranges(rng, self.codec, self.span_codes, may_close=self.generated >= self.min_new_tokens)

    def blocked_stops(self) -> list[int]:
        """Stop ids masked on top of ``allowed()`` because min_new_tokens are not out yet.

        Only where ``allowed()`` leaves stops open (free text, or the grammar off); inside an enforced span
        ``allowed()`` applies min_new_tokens itself.
        """
        free = not self.enforce or self.state == "text"
        return sorted(self.stop_ids) if free and self.generated < self.min_new_tokens else []

    def step(self, token: int) -> None:
        """Advance the state with a generated token."""
        self.generated += 1
        if self.state == "text":
            if token in self.stop_ids:
                self.state = "done"
        elif self.state == "lead":
            if token == self.target.bos:
                self.state = "span"
            elif self.enforce or token not in self.stop_ids:
                self.lead_in += 1
            else:
                self.state = "done"
        elif self.state == "span":
            if token in self.stop_ids:
                self.state = "done"
            else:
                self.span_codes += 1


def _grammar_mask(grammars: Sequence[SpanGrammar], vocab: int, device) -> torch.Tensor | None:
    rows = [(i, g.allowed(), g.blocked_stops()) for i, g in enumerate(grammars)]
    if all(spans is None and not blocked for _, spans, blocked in rows):
        return None
    mask = torch.ones(len(grammars), vocab, dtype=torch.bool)
    for i, spans, blocked in rows:
        if spans is not None:
            mask[i] = False
            for low, high in spans:
                mask[i, low:high] = True
        for s in blocked:
            if s < vocab:
                mask[i, s] = False
    return mask.to(device)


def _filter_logits(logits: torch.Tensor, history: torch.Tensor, presets: Sequence[GenerationPreset]) -> torch.Tensor:
    """Repetition penalty, temperature, top-k and top-p, per row (transformers' order and semantics)."""
    dev = logits.device
    penalty = torch.tensor([p.repetition_penalty for p in presets], device=dev, dtype=logits.dtype)[:, None]
    if (penalty != 1).any():
        seen = logits.gather(1, history)
        seen = torch.where(seen < 0, seen * penalty, seen / penalty)
        logits = logits.scatter(1, history, seen)
    temperature = torch.tensor([p.temperature if p.do_sample else 1.0 for p in presets], device=dev)[:, None]
    logits = logits / temperature.to(logits.dtype)
    top_k = torch.tensor([p.top_k if p.top_k > 0 else logits.shape[1] for p in presets], device=dev)
    top_k = top_k.clamp(max=logits.shape[1])
    ordered = logits.sort(dim=1, descending=True).values
    kth = ordered.gather(1, (top_k - 1)[:, None])
    logits = logits.masked_fill(logits < kth, float("-inf"))
    top_p = torch.tensor([p.top_p for p in presets], device=dev)[:, None]
    if (top_p < 1).any():
        ordered, order = logits.sort(dim=1, descending=True)
        probs = ordered.softmax(dim=1)
        drop = ((probs.cumsum(dim=1) - probs) >= top_p) & (top_p < 1)  # rows with top_p 1 keep every token
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


@torch.inference_mode()
def generate(model, prompts: Sequence[Sequence[int]], presets: Sequence[GenerationPreset],
             grammars: Sequence[SpanGrammar], seeds: Sequence[int], pad_id: int = 0,
             fast: bool | None = None) -> list[list[int]]:
    """Generate for a batch of prompts, each row with its own preset, grammar and seed.

    On CUDA a LLaMA backbone with span grammars runs ``anygpt.lm.fast_decode.fast_generate`` (static cache, CUDA
    graphs, sampling on the GPU from counter-based random numbers); elsewhere, and for other grammars, this loop.

    Args:
        model: A HF causal LM (``model(input_ids, attention_mask, position_ids, past_key_values, use_cache)``).
        prompts: Token ids of each prompt (BOS included).
        presets: Preset of each row: its token budget, and its sampling unless the row's grammar has a
            ``preset`` of its own at that step (chat replies switch presets between text and media spans).
        grammars: Grammar of each row (updated in place).
        seeds: Seed of each row's random generator.
        pad_id: Id used for left padding and for rows that have finished.
        fast: Force the fast path on (any device) or off; None: on where it applies on CUDA.

    Returns:
        The generated ids of each row, stop or end token included when one was generated.
    """
    device = next(model.parameters()).device
    if fast or (fast is None and device.type == "cuda"):
        out = _fast(model, prompts, presets, grammars, seeds, pad_id)
        if out is not None:
            return out
    batch = len(prompts)
    width = max(len(p) for p in prompts)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p):] = torch.as_tensor(p)
        mask[i, width - len(p):] = 1
    # Padding positions repeat the row's first token, so the repetition penalty ignores them.
    first = input_ids[torch.arange(batch), width - torch.tensor([len(p) for p in prompts])]
    history = torch.where(mask.bool(), input_ids, first[:, None])
    input_ids, mask, history = input_ids.to(device), mask.to(device), history.to(device)
    generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    budgets = [p.max_new_tokens for p in presets]
    outputs: list[list[int]] = [[] for _ in range(batch)]
    position = (mask.cumsum(1) - 1).clamp(min=0)
    step_ids, cache = input_ids, None
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    for step in range(max(budgets)):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=position, use_cache=True, **{cache_arg: cache})
        cache = getattr(out, cache_arg)
        logits = out.logits[:, -1, :].float()
        allowed = _grammar_mask(grammars, logits.shape[1], device)
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        current = [getattr(g, "preset", None) or p for g, p in zip(grammars, presets)]
        logits = _filter_logits(logits, history, current)
        next_ids = torch.empty(batch, dtype=torch.long, device=device)
        for i, preset in enumerate(current):
            if preset.do_sample:
                next_ids[i] = torch.multinomial(logits[i].softmax(-1), 1, generator=generators[i])[0]
            else:
                next_ids[i] = logits[i].argmax()
        live = [not g.finished and len(outputs[i]) < budgets[i] for i, g in enumerate(grammars)]
        for i, token in enumerate(next_ids.tolist()):
            if live[i]:
                outputs[i].append(token)
                grammars[i].step(token)
        if all(g.finished or len(outputs[i]) >= budgets[i] for i, g in enumerate(grammars)):
            break
        live_t = torch.tensor(live, device=device)
        step_ids = torch.where(live_t, next_ids, torch.full_like(next_ids, pad_id))[:, None]
        history = torch.cat([history, torch.where(live_t, next_ids, history[:, 0])[:, None]], dim=1)
        mask = torch.cat([mask, live_t.long()[:, None]], dim=1)
        position = position[:, -1:] + 1
    return outputs


def _fast(model, prompts, presets, grammars, seeds, pad_id) -> list[list[int]] | None:
    if getattr(model.config, "model_type", None) != "llama" or not all(isinstance(g, SpanGrammar) for g in grammars):
        return None
    if hasattr(model, "peft_config"):  # unmerged LoRA adapters: StaticLlama reads plain LLaMA weights
        return None
    from anygpt.lm.fast_decode import fast_generate

    return fast_generate(model, prompts, presets, grammars, seeds, pad_id=pad_id)
