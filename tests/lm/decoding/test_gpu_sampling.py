"""Tensor sampling: filters against ``_filter_logits``, the counter-based uniforms, Gumbel-max frequencies."""

from __future__ import annotations

import pytest
import torch

from anygpt.lm.decoding.loop import _filter_logits
from anygpt.lm.decoding.presets import GenerationPreset
from anygpt.lm.decoding.gpu_sampling import filter_logits, filter_width, hash_uniform, penalize_repeats, sample, sampling_tensors

PRESETS = [
    GenerationPreset(temperature=t, top_k=k, top_p=p, do_sample=s)
    for t, k, p, s in [(0.7, 0, 1.0, True), (1.3, 1, 0.9, True), (1.0, 50, 1.0, True), (0.5, 50, 0.9, True),
                       (1.0, 0, 0.9, True), (2.0, 1, 1.0, False), (0.9, 50, 0.9, False), (1.7, 0, 1.0, False)]
]


def _logits(batch, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, vocab, generator=g) * 3


def _reference(logits, history, presets):
    """``_filter_logits`` one row at a time: batched, it applies top-p to every row once any row has p < 1, and
    cumsum rounding can then cut the tail of a p = 1 row; a row's result must not depend on its neighbours."""
    return torch.cat([_filter_logits(logits[i:i + 1], history[i:i + 1], [p]) for i, p in enumerate(presets)])


def _assert_same(ours, expected):
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    finite = ~torch.isinf(expected)
    assert torch.equal(ours[finite], expected[finite])


def test_filter_logits_matches_the_reference_on_mixed_presets():
    logits, history = _logits(len(PRESETS), 300), torch.zeros(len(PRESETS), 1, dtype=torch.long)
    t = sampling_tensors(PRESETS, "cpu")
    _assert_same(filter_logits(logits, t["temperature"], t["top_k"], t["top_p"]),
                 _reference(logits, history, PRESETS))


def test_ranking_only_the_top_k_matches_the_full_sort():
    ranked = [p for p in PRESETS if not (p.top_k == 0 and p.top_p < 1)]  # rows a top-k pass serves exactly
    assert filter_width(PRESETS, 300) is None and filter_width(ranked, 300) == 50
    assert filter_width([GenerationPreset(top_k=0)], 300) == 1 and filter_width([GenerationPreset(top_k=900)], 300) == 300
    logits, history = _logits(len(ranked), 300, seed=5), torch.zeros(len(ranked), 1, dtype=torch.long)
    # a grammar-like mask: fewer allowed tokens than top_k in one row, -inf ties in all
    logits[0, 10:] = float("-inf")
    logits[2, ::2] = float("-inf")
    t = sampling_tensors(ranked, "cpu")
    for width in (50, 64, None):
        _assert_same(filter_logits(logits, t["temperature"], t["top_k"], t["top_p"], width=width),
                     _reference(logits, history, ranked))


def test_penalty_matches_the_reference():
    presets = [GenerationPreset(repetition_penalty=r, top_k=0, temperature=1.0) for r in (1.0, 1.15, 0.8, 1.3)]
    logits = _logits(4, 64, seed=1)
    history = torch.randint(0, 64, (4, 20), generator=torch.Generator().manual_seed(2))
    seen = torch.zeros(4, 64, dtype=torch.bool).scatter(1, history, True)
    t = sampling_tensors(presets, "cpu")
    ours = penalize_repeats(logits, seen, t["penalty"])
    _assert_same(ours, _filter_logits(logits, history, presets))
    # the whole chain, penalty then filters, with the mixed presets
    mixed = [GenerationPreset(**{**p.__dict__, "repetition_penalty": 1.2}) for p in PRESETS]
    logits = _logits(len(mixed), 64, seed=3)
    history = torch.randint(0, 64, (len(mixed), 20), generator=torch.Generator().manual_seed(4))
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(1, history, True)
    t = sampling_tensors(mixed, "cpu")
    ours = filter_logits(penalize_repeats(logits, seen, t["penalty"]), t["temperature"], t["top_k"], t["top_p"])
    _assert_same(ours, _reference(logits, history, mixed))


def test_sampling_tensors():
    t = sampling_tensors(PRESETS, "cpu")
    assert set(t) == {"temperature", "top_k", "top_p", "penalty", "do_sample"}
    assert t["top_k"].dtype == torch.long and t["do_sample"].dtype == torch.bool
    assert t["temperature"][5] == 1.0 and t["temperature"][0] == torch.tensor(0.7)  # greedy rows: 1.0
    assert t["do_sample"].tolist() == [p.do_sample for p in PRESETS]


def test_hash_uniform_is_a_pure_function_of_seed_step_and_index():
    seeds = torch.tensor([0, 1, -5, 2**40 + 3, -(2**62), 123456789])
    u = hash_uniform(seeds, torch.tensor(3), 257)
    assert u.shape == (6, 257) and u.dtype == torch.float32
    assert torch.equal(u, hash_uniform(seeds, torch.tensor(3), 257))
    assert (u > 0).all() and (u < 1).all()
    assert torch.equal(hash_uniform(seeds[2:3], torch.tensor(3), 257), u[2:3])  # rows are independent
    assert torch.equal(hash_uniform(seeds, torch.full((6,), 3), 257), u)  # per-row steps
    assert torch.equal(hash_uniform(seeds, 3, 100), u[:, :100])  # a prefix of a longer vocab
    other = hash_uniform(seeds, torch.tensor(4), 257)
    assert (other != u).float().mean() > 0.99
    assert (u[0] != u[1]).float().mean() > 0.99
    big = hash_uniform(torch.arange(1000), torch.tensor(0), 1000)
    assert abs(big.mean().item() - 0.5) < 2e-3 and abs(big.var().item() - 1 / 12) < 1e-3
    lag = (big[:, 1:] - 0.5) * (big[:, :-1] - 0.5)  # neighbouring ids are uncorrelated
    assert abs(lag.mean().item()) < 1e-3


def test_sample_greedy_rows_take_the_argmax():
    logits = _logits(6, 50, seed=5)
    do_sample = torch.tensor([False, True, False, True, False, False])
    out = sample(logits, do_sample, torch.arange(6), torch.tensor(0))
    greedy = ~do_sample
    assert torch.equal(out[greedy], logits.argmax(1)[greedy])
    assert out.dtype == torch.long


def test_sample_follows_the_softmax_and_skips_masked_entries():
    row = torch.tensor([1.0, 0.5, float("-inf"), 2.0, -0.3])
    n = 20000
    logits = row.expand(n, 5)
    out = sample(logits, torch.ones(n, dtype=torch.bool), torch.arange(n), torch.tensor(11))
    counts = torch.bincount(out, minlength=5).double()
    assert counts[2] == 0
    expected = row.double().softmax(0) * n
    finite = expected > 0
    chi2 = ((counts[finite] - expected[finite]) ** 2 / expected[finite]).sum().item()
    assert chi2 < 20, chi2  # 3 degrees of freedom: p < 2e-4
    # per-row steps give other draws; an all -inf row still gets an index
    again = sample(logits, torch.ones(n, dtype=torch.bool), torch.arange(n), torch.full((n,), 12))
    assert (again != out).any()
    dead = torch.full((2, 5), float("-inf"))
    picked = sample(dead, torch.tensor([True, False]), torch.arange(2), torch.tensor(0))
    assert ((picked >= 0) & (picked < 5)).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_and_filters_match_cpu():
    seeds, step = torch.tensor([0, -7, 2**50 + 1]), torch.tensor([0, 5, 9])
    assert torch.equal(hash_uniform(seeds.cuda(), step.cuda(), 4096).cpu(), hash_uniform(seeds, step, 4096))
    logits = _logits(3, 4096)
    do_sample = torch.tensor([True, True, False])
    assert torch.equal(sample(logits.cuda(), do_sample.cuda(), seeds.cuda(), step.cuda()).cpu(),
                       sample(logits, do_sample, seeds, step))
