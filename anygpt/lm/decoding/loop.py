"""The plain decode loop: the HF backbone with its KV cache on left-padded prompts, each row with its own preset
(temperature, top-k, top-p, repetition penalty, budget), ``torch.Generator`` (a request's output depends on its
seed, not on its neighbours in the batch), grammar and stop tokens. On a GPU, LLaMA backbones go to the fast path
(``anygpt.lm.decoding.fast``); this loop stays the reference.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence

import torch

from anygpt import AnyGPTError
from anygpt.lm.decoding.batching import left_padded
from anygpt.lm.decoding.grammar import SpanGrammar, _grammar_mask
from anygpt.lm.decoding.presets import GenerationPreset


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


def generate(model, prompts: Sequence[Sequence[int]], presets: Sequence[GenerationPreset],
             grammars: Sequence[SpanGrammar], seeds: Sequence[int], pad_id: int = 0,
             fast: bool | None = None, unconditional: Sequence[Sequence[int] | None] | None = None) -> list[list[int]]:
    """Generate for a batch of prompts, each row with its own preset, grammar and seed.

    On CUDA a LLaMA backbone with span or chat reply grammars runs ``anygpt.lm.decoding.fast.fast_generate``
    (static cache, CUDA graphs, sampling on the GPU from counter-based random numbers); elsewhere, and for other
    grammars, this loop.

    Args:
        model: A HF causal LM (``model(input_ids, attention_mask, position_ids, past_key_values, use_cache)``).
        prompts: Token ids of each prompt (BOS included).
        presets: Preset of each row: its token budget, and its sampling unless the row's grammar has a
            ``preset`` of its own at that step (chat replies switch presets between text and media spans).
        grammars: Grammar of each row (updated in place).
        seeds: Seed of each row's random generator.
        pad_id: Id used for left padding and for rows that have finished.
        fast: Force the fast path on (any device) or off; None: on where it applies on CUDA.
        unconditional: Per row, the prompt without its text that classifier-free guidance contrasts it with (a
            row whose preset has ``guidance_scale`` 1, or None here, is not guided). Guided rows run the plain loop.

    Returns:
        The generated ids of each row, stop or end token included when one was generated.
    """
    outputs: list[list[int]] = [[] for _ in prompts]
    for new in generate_stream(model, prompts, presets, grammars, seeds, pad_id, fast, stream=False,
                               unconditional=unconditional):
        for row, ids in zip(outputs, new):
            row.extend(ids)
    return outputs


def generate_stream(model, prompts: Sequence[Sequence[int]], presets: Sequence[GenerationPreset],
                    grammars: Sequence[SpanGrammar], seeds: Sequence[int], pad_id: int = 0,
                    fast: bool | None = None, stream: bool = True,
                    unconditional: Sequence[Sequence[int] | None] | None = None) -> Iterator[list[list[int]]]:
    """``generate`` as it goes: yields, per row, the ids generated since the last yield (every step on the plain
    loop, every 8 steps on the fast path); joined, they are exactly ``generate``'s result for the same arguments.
    ``stream=False`` yields once, at the end; so do rows that search with beams (``num_beams`` > 1)."""
    guided = _guided_rows(presets, unconditional)
    if any(p.num_beams > 1 for p in presets):
        return iter([_with_beams(model, prompts, presets, grammars, seeds, pad_id, fast, unconditional)])
    if guided:
        return _plain(model, prompts, presets, grammars, seeds, pad_id, stream, guided)
    device = next(model.parameters()).device
    if fast or (fast is None and device.type == "cuda"):
        steps = _fast(model, prompts, presets, grammars, seeds, pad_id, stream)
        if steps is not None:
            return steps
    return _plain(model, prompts, presets, grammars, seeds, pad_id, stream)


def _guided_rows(presets: Sequence[GenerationPreset],
                 unconditional: Sequence[Sequence[int] | None] | None) -> dict[int, list[int]]:
    """``{row: unconditional prompt}`` of the rows that classifier-free guidance steers."""
    if unconditional is None:
        return {}
    if len(unconditional) != len(presets):
        raise AnyGPTError(f"unconditional holds {len(unconditional)} prompts for {len(presets)} rows")
    return {i: list(u) for i, (p, u) in enumerate(zip(presets, unconditional))
            if u is not None and p.guidance_scale != 1}


def _guide(logits: torch.Tensor, guided: dict[int, list[int]], presets: Sequence[GenerationPreset]) -> torch.Tensor:
    """The first rows' log-probabilities, each guided row moved away from its unconditional twin (the rows after
    the first ``len(presets)``, in ``guided``'s order): ``u + scale * (c - u)``."""
    rows = len(presets)
    if not guided:
        return logits
    steered = torch.tensor(list(guided), device=logits.device)
    scale = torch.tensor([presets[i].guidance_scale for i in guided], device=logits.device)[:, None]
    c, u = logits[steered].log_softmax(dim=-1), logits[rows:].log_softmax(dim=-1)
    return logits[:rows].index_copy(0, steered, u + scale * (c - u))


@torch.inference_mode()
def _plain(model, prompts, presets, grammars, seeds, pad_id, stream, guided=None) -> Iterator[list[list[int]]]:
    device = next(model.parameters()).device
    guided = guided or {}
    rows = len(prompts)
    twins = list(guided)  # the unconditional prompts ride as extra rows that repeat their row's tokens
    prompts = [*prompts, *guided.values()]
    batch = len(prompts)
    input_ids, mask = left_padded(prompts, pad_id)
    width = input_ids.shape[1]
    # Padding positions repeat the row's first token, so the repetition penalty ignores them.
    first = input_ids[torch.arange(batch), width - torch.tensor([len(p) for p in prompts])]
    history = torch.where(mask.bool(), input_ids, first[:, None])
    input_ids, mask, history = input_ids.to(device), mask.to(device), history.to(device)
    generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    budgets = [p.max_new_tokens for p in presets]
    outputs: list[list[int]] = [[] for _ in range(rows)]
    sent = [0] * rows
    position = (mask.cumsum(1) - 1).clamp(min=0)
    step_ids, cache = input_ids, None
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    for step in range(max(budgets)):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=position, use_cache=True,
                    **{cache_arg: cache})
        cache = getattr(out, cache_arg)
        logits = _guide(out.logits[:, -1, :].float(), guided, presets)
        allowed = _grammar_mask(grammars, logits.shape[1], device)
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        current = [getattr(g, "preset", None) or p for g, p in zip(grammars, presets)]
        logits = _filter_logits(logits, history[:rows], current)
        next_ids = torch.empty(rows, dtype=torch.long, device=device)
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
        if stream:
            yield [row[n:] for row, n in zip(outputs, sent)]
            sent = [len(row) for row in outputs]
        live_t = torch.tensor(live + [live[i] for i in twins], device=device)
        next_ids = torch.cat([next_ids, next_ids[twins]])
        step_ids = torch.where(live_t, next_ids, torch.full_like(next_ids, pad_id))[:, None]
        history = torch.cat([history, torch.where(live_t, next_ids, history[:, 0])[:, None]], dim=1)
        mask = torch.cat([mask, live_t.long()[:, None]], dim=1)
        position = position[:, -1:] + 1
    yield [row[n:] for row, n in zip(outputs, sent)]


def _with_beams(model, prompts, presets, grammars, seeds, pad_id, fast, unconditional=None) -> list[list[int]]:
    """Rows with ``num_beams`` > 1 by beam search (one search per beam count, length and repetition penalty), the
    rest as ``generate`` decodes them (guided where their preset and ``unconditional`` say so)."""
    from anygpt.lm.decoding.beam import beam_search

    if any(p.num_beams > 1 and not isinstance(g, SpanGrammar) for p, g in zip(presets, grammars)):
        raise AnyGPTError("num_beams > 1: beam search decodes request targets, not chat replies")
    outputs: list[list[int]] = [[] for _ in prompts]
    groups: dict[tuple[int, float, float], list[int]] = {}
    for i, p in enumerate(presets):
        key = (p.num_beams, p.length_penalty, p.repetition_penalty) if p.num_beams > 1 else (1, 0.0, 1.0)
        groups.setdefault(key, []).append(i)
    for (beams, penalty, repetition), rows in groups.items():
        pick = lambda items: [items[i] for i in rows]  # noqa: E731
        if beams == 1:
            found = generate(model, pick(prompts), pick(presets), pick(grammars), pick(seeds), pad_id, fast,
                             unconditional=None if unconditional is None else pick(unconditional))
        else:
            found = beam_search(model, pick(prompts), pick(grammars), beams,
                                [presets[i].max_new_tokens for i in rows], penalty, pad_id=pad_id,
                                repetition_penalty=repetition,
                                min_new_tokens=[presets[i].min_new_tokens for i in rows])
            for i, ids in zip(rows, found):  # the caller's grammars end as the best hypothesis left them
                for token in ids:
                    grammars[i].step(token)
        for i, ids in zip(rows, found):
            outputs[i] = ids
    return outputs


def _fast(model, prompts, presets, grammars, seeds, pad_id, stream) -> Iterator[list[list[int]]] | None:
    if getattr(model.config, "model_type", None) != "llama":
        return None
    if hasattr(model, "peft_config"):  # unmerged LoRA adapters: StaticLlama reads plain LLaMA weights
        return None
    from anygpt.lm.decoding.fast import fast_generate_stream  # None where the grammars cannot run as tensors

    return fast_generate_stream(model, prompts, presets, grammars, seeds, pad_id=pad_id, stream=stream)
