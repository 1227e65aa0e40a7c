"""Beam search with the decoding grammars: what the paper's text targets were decoded with (its Table 9: 5 beams).

The search is transformers' (``GenerationMixin._beam_search``, v4.50 onwards), so that ``num_beams`` means here
what it means there: each step keeps the best ``max(2, 1 + stop tokens) * num_beams`` continuations of the
running beams by summed log-probability; those of the first ``num_beams`` that end (a stop token, or the budget
reached) join the finished hypotheses with their score divided by ``generated length ** length_penalty``; the
best ``num_beams`` unfinished ones run on. A row is done when its finished hypotheses are full and the best running
beam, at its current length, cannot beat the worst of them (``early_stopping=False``), or as soon as they are full
(``early_stopping=True``). What differs: each beam carries its own grammar (masked tokens get no probability) and
each row its own budget; the result is the best hypothesis's tokens, stop token included.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

import torch

from anygpt.lm.decoding.batching import left_padded
from anygpt.lm.decoding.grammar import SpanGrammar, _grammar_mask

NEG = -1.0e9


@torch.inference_mode()
def beam_search(model, prompts: Sequence[Sequence[int]], grammars: Sequence[SpanGrammar], num_beams: int,
                budgets: Sequence[int], length_penalty: float = 1.0, early_stopping: bool = False,
                pad_id: int = 0, repetition_penalty: float = 1.0,
                min_new_tokens: Sequence[int] | None = None) -> list[list[int]]:
    """The best hypothesis of a beam search for each prompt.

    Args:
        model: A HF causal LM with a reorderable KV cache.
        prompts: Token ids of each prompt (BOS included).
        grammars: Grammar of each prompt, copied into each of its beams (the originals are left as they are).
        num_beams: Beams per prompt (1: greedy search).
        budgets: Most tokens each prompt may generate.
        length_penalty: Exponent of the length that divides a finished hypothesis's log-probability.
        early_stopping: Stop a row as soon as it has ``num_beams`` finished hypotheses.
        pad_id: Left padding of the prompts.
        repetition_penalty: Each token already in a beam (its prompt, not the padding, and what it generated)
            has its log-probability multiplied by this, as transformers' ``RepetitionPenaltyLogitsProcessor``
            does in its beam search (1.0: off).
        min_new_tokens: Per prompt, the stop tokens are blocked before this many tokens (None: never).

    Returns:
        The generated ids of each prompt's best hypothesis.
    """
    if num_beams < 1:
        raise ValueError(f"num_beams must be at least 1, got {num_beams}")
    device = next(model.parameters()).device
    batch, beams = len(prompts), num_beams
    input_ids, mask = left_padded(prompts, pad_id)
    input_ids = input_ids.repeat_interleave(beams, 0).to(device)
    mask = mask.repeat_interleave(beams, 0).to(device)
    position = (mask.cumsum(1) - 1).clamp(min=0)
    stops = max(len(g.stop_ids) for g in grammars)
    keep = max(2, 1 + stops) * beams
    budget = torch.tensor(list(budgets), device=device)
    states = [[copy.deepcopy(g) for _ in range(beams)] for g in grammars]
    tokens = [[[] for _ in range(beams)] for _ in range(batch)]
    running = torch.full((batch, beams), NEG, device=device)
    running[:, 0] = 0.0
    finished_scores = torch.full((batch, beams), NEG, device=device)
    finished_full = torch.zeros((batch, beams), dtype=torch.bool, device=device)
    finished: list[list[list[int]]] = [[[] for _ in range(beams)] for _ in range(batch)]
    improvable = torch.ones(batch, dtype=torch.bool, device=device)
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    step_ids, cache, length, sequences = input_ids, None, 0, input_ids
    least = torch.tensor(list(min_new_tokens or [0] * batch), device=device).repeat_interleave(beams)
    stop_ids = torch.tensor(sorted({t for g in grammars for t in g.stop_ids}), dtype=torch.long, device=device)
    is_stop = None  # the vocabulary's stop tokens as a mask, built at the first step that blocks them
    while True:
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=position, use_cache=True,
                    **{cache_arg: cache})
        cache = getattr(out, cache_arg)
        log_probs = out.logits[:, -1, :].float().log_softmax(-1)
        vocab = log_probs.shape[-1]
        if repetition_penalty != 1.0:  # padding points at an extra column, which is dropped
            ids = sequences.masked_fill(mask == 0, vocab)
            scores = torch.cat([log_probs, log_probs.new_zeros(len(log_probs), 1)], dim=1)
            seen = scores.gather(1, ids)
            seen = torch.where(seen < 0, seen * repetition_penalty, seen / repetition_penalty)
            log_probs = scores.scatter(1, ids, seen)[:, :vocab]
        if len(stop_ids) and bool((length < least).any()):
            if is_stop is None:
                is_stop = torch.zeros(vocab, dtype=torch.bool, device=device).index_fill_(0, stop_ids, True)
            log_probs = log_probs.masked_fill((length < least)[:, None] & is_stop, float("-inf"))
        allowed = _grammar_mask([g for row in states for g in row], vocab, device)
        if allowed is not None:
            log_probs = log_probs.masked_fill(~allowed, float("-inf"))
        scores = (log_probs.view(batch, beams, vocab) + running[:, :, None]).view(batch, -1)
        top_scores, top_index = scores.topk(keep, dim=1)
        source, token = top_index // vocab, top_index % vocab
        candidates = [[_stepped(states[b][s], t) for s, t in zip(source[b].tolist(), token[b].tolist())]
                      for b in range(batch)]
        ends = torch.tensor([[g.finished for g in row] for row in candidates], device=device)
        ends |= (length + 1 >= budget)[:, None]
        # the first num_beams candidates that end become finished hypotheses, if they beat the worst kept
        ended = top_scores / float(length + 1) ** length_penalty
        ended = ended + NEG * (~(ends & (torch.arange(keep, device=device) < beams)[None])).float()
        ended = ended + NEG * (~improvable)[:, None].float()
        if early_stopping:
            ended = ended + NEG * finished_full.all(1, keepdim=True).float()
        merged = torch.cat([finished_scores, ended], dim=1).topk(beams, dim=1).indices
        merged_full = torch.cat([finished_full, ends & (torch.arange(keep, device=device) < beams)[None]], dim=1)
        for b in range(batch):
            pool = finished[b] + [tokens[b][s] + [t] for s, t in zip(source[b].tolist(), token[b].tolist())]
            finished[b] = [pool[j] for j in merged[b].tolist()]
        finished_scores = torch.cat([finished_scores, ended], dim=1).gather(1, merged)
        finished_full = merged_full.gather(1, merged)
        # the best num_beams candidates that go on are the next running beams
        going = (top_scores + NEG * ends.float()).topk(beams, dim=1).indices
        running = (top_scores + NEG * ends.float()).gather(1, going)
        chosen_source, chosen_token = source.gather(1, going), token.gather(1, going)
        tokens = [[tokens[b][s] + [t] for s, t in zip(chosen_source[b].tolist(), chosen_token[b].tolist())]
                  for b in range(batch)]
        states = [[candidates[b][j] for j in going[b].tolist()] for b in range(batch)]
        length += 1
        best_running = running[:, :1] / float(length) ** length_penalty
        worst = torch.where(finished_full, finished_scores.min(1, keepdim=True).values, torch.full_like(running, NEG))
        improvable &= (best_running > worst).any(1)
        stop = ~improvable.any() or (early_stopping and bool(finished_full.all())) or bool(ends.all())
        if stop:
            break
        rows = (torch.arange(batch, device=device)[:, None] * beams + chosen_source).reshape(-1)
        cache.reorder_cache(rows)
        step_ids = chosen_token.reshape(-1, 1)
        sequences = torch.cat([sequences[rows], step_ids], dim=1)
        mask = torch.cat([mask[rows], torch.ones_like(step_ids)], dim=1)
        position = position[rows, -1:] + 1
    return [finished[b][0] for b in range(batch)]


def _stepped(grammar: SpanGrammar, token: int) -> SpanGrammar:
    state = copy.deepcopy(grammar)
    state.step(token)
    return state
