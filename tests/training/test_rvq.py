"""Straight-through RVQ training over transformers' Encodec codebooks, checked against Encodec's own encode."""

from __future__ import annotations

import torch

from anygpt.training.rvq import StraightThroughRVQ, kmeans


def encodec(levels: int = 4, size: int = 64, dim: int = 8):
    from transformers import EncodecConfig, EncodecModel

    config = EncodecConfig(codebook_size=size, codebook_dim=dim, hidden_size=dim, num_filters=4,
                           target_bandwidths=[1.5], sampling_rate=24000, upsampling_ratios=[8, 5, 4, 2])
    torch.manual_seed(0)
    model = EncodecModel(config)
    for layer in model.quantizer.layers[:levels]:
        layer.codebook.embed.copy_(torch.randn(size, dim))
    return model


def test_eval_codes_equal_encodec_encode_and_gradients_pass_straight_through():
    model = encodec()
    levels = model.quantizer.get_num_quantizers_for_bandwidth(1.5)
    rvq = StraightThroughRVQ([layer.codebook for layer in model.quantizer.layers]).eval()
    x = torch.randn(2, 8, 13, requires_grad=True)
    quantized, codes, commit = rvq(x, levels)
    reference = model.quantizer.encode(x.detach(), bandwidth=1.5)  # [levels, B, T]
    assert torch.equal(codes, reference)
    assert torch.allclose(quantized, model.quantizer.decode(reference), atol=1e-5)
    (quantized * torch.arange(13.0)).sum().backward()
    assert torch.allclose(x.grad, torch.arange(13.0).expand(2, 8, 13))  # identity through the quantizer
    x.grad = None
    rvq(x, levels)[2].backward()
    assert x.grad.abs().sum() > 0  # the commitment pulls the encoder output toward its codes


def test_training_initialises_by_kmeans_and_keeps_codes_alive():
    torch.manual_seed(1)
    centres = torch.randn(32, 8) * 3
    model = encodec(levels=1, size=32)
    book = model.quantizer.layers[0].codebook
    rvq = StraightThroughRVQ([book], decay=0.8).train()  # fast EMA: dead codes restart within the test
    rvq.reset()
    assert not bool(book.inited)
    commits = []
    for _ in range(60):
        points = centres[torch.randint(32, (512,))] + 0.05 * torch.randn(512, 8)
        _, codes, commit = rvq(points.T.unsqueeze(0), 1)
        commits.append(float(commit))
    assert bool(book.inited)
    assert len(codes.unique()) >= 28  # dead codes restarted: nearly every code wins vectors
    assert commits[-1] < 0.7 * commits[0]  # the codes moved onto the data
    covered = torch.cdist(centres, book.embed).min(dim=1).values < 0.3
    assert covered.sum() >= 20  # most centres have a code on them (EMA VQ need not find all 32)


def test_kmeans_finds_separated_clusters():
    torch.manual_seed(2)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = centres[torch.arange(300) % 3] + 0.1 * torch.randn(300, 2)
    found = kmeans(points, 3, 20, torch.Generator().manual_seed(0))
    assert torch.cdist(found, centres).min(dim=1).values.max() < 0.1
